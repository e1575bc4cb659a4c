"""Installed machines, in the inventory's state directory (inventory/state.py):

    installed/<machine>.json  {"machine", "installed_at", "set", "report": <path>}
    hostkeys/<machine>.json   the installed system's own public host keys, "installed": true

`plasmaboot install` writes both; serve then answers the machine's next PXE boot with "boot
from the local disk" until `plasmaboot machines reinstall MACHINE` removes the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plasmaboot.inventory.state import (
    is_machine_name,
    now_stamp,
    read_json,
    record_host_keys,
    state_dir,
    write_json_atomic,
)

INSTALLED = "installed"


def record_path(inventory_path: Path, machine: str) -> Path:
    if not is_machine_name(machine):
        raise ValueError(f"not a machine name: {machine!r}")
    return state_dir(inventory_path) / INSTALLED / f"{machine}.json"


def mark_installed(inventory_path: Path, machine: str, set_id: str, report: Path) -> dict[str, Any]:
    record = {
        "machine": machine,
        "installed_at": now_stamp(),
        "set": set_id,
        "report": str(report),
    }
    write_json_atomic(record_path(inventory_path, machine), record)
    return record


def read_installed(inventory_path: Path, machine: str) -> dict[str, Any] | None:
    """The machine's installed record, or None (missing, or not one plasmaboot wrote)."""
    data = read_json(record_path(inventory_path, machine))
    if not isinstance(data, dict) or data.get("machine") != machine:
        return None
    return data


def is_installed(inventory_path: Path, machine: str) -> bool:
    return read_installed(inventory_path, machine) is not None


def clear_installed(inventory_path: Path, machine: str) -> bool:
    """Mark the machine for reinstall: True if it was installed."""
    path = record_path(inventory_path, machine)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def record_installed_host_keys(
    inventory_path: Path, machine: str, address: str, keys: list[str]
) -> None:
    """The installed system's public host keys, made on the node during the install and read
    back over the already-trusted RAM session (the format of a host-key report)."""
    record_host_keys(inventory_path, machine, address, "install", keys, installed=True)
