"""What the system learns at run time, kept beside the inventory and never inside the
artifacts: `<inventory dir>/<inventory stem>.state/` (e.g. `machines.state/` beside
`machines.toml`), created 0700 on first write, one JSON file per fact per machine, each
written atomically (a temp file, then one rename).

    hostkeys/<machine>.json   the public host keys a machine reported at its last boot
                              {"machine", "address", "reported_at", "boot", "keys": [...]}

A record is a hint, not proof: the report came with a one-time token from the address the
token was bound to, but a MAC or an address can be claimed by another machine on the same
network (TPM attestation comes later).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plasmaboot.formats.sshkeys import public_key_type
from plasmaboot.inventory.load import Inventory
from plasmaboot.inventory.model import MACHINE_NAME_PATTERN
from plasmaboot.paths import NotASmallFile, read_small_file

HOSTKEYS = "hostkeys"
MAX_RECORD_SIZE = 64 << 10  # a record holds a few public keys
STAMP = "%Y-%m-%dT%H:%M:%SZ"


def state_dir(inventory_path: Path) -> Path:
    """`machines.state/` beside `machines.toml` (not created here)."""
    return inventory_path.parent / f"{inventory_path.stem}.state"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` at once: a reader sees the old file or the new one.
    The state directory and its subdirectories are created 0700."""
    make_private_dirs(path.parent)
    descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and missing parents up to the state directory, each 0700."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


def read_json(path: Path, limit: int = MAX_RECORD_SIZE) -> Any | None:
    """A state file's JSON; None when it is missing, not a regular file, larger than `limit`
    or not JSON (state is what plasmaboot wrote; anything else is ignored, never trusted)."""
    try:
        raw = read_small_file(path, limit)
    except (OSError, NotASmallFile):
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------
# host keys


@dataclass(frozen=True)
class HostKeys:
    """One machine's reported public host keys (`type base64` each, no comment)."""

    machine: str
    address: str
    reported_at: str
    boot: str  # the id of the token the report came with (not the token)
    keys: tuple[str, ...]
    installed: bool = False  # written by `install` for the installed system's keys

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "machine": self.machine,
            "address": self.address,
            "reported_at": self.reported_at,
            "boot": self.boot,
            "keys": list(self.keys),
        }
        if self.installed:
            data["installed"] = True
        return data


def hostkeys_path(inventory_path: Path, machine: str) -> Path:
    if not is_machine_name(machine):
        raise ValueError(f"not a machine name: {machine!r}")
    return state_dir(inventory_path) / HOSTKEYS / f"{machine}.json"


def is_machine_name(name: str) -> bool:
    return re.fullmatch(MACHINE_NAME_PATTERN, name) is not None


def now_stamp() -> str:
    return datetime.now(UTC).strftime(STAMP)


def record_host_keys(
    inventory_path: Path,
    machine: str,
    address: str,
    boot: str,
    keys: list[str],
    installed: bool = False,
) -> HostKeys:
    """Record a machine's reported keys (replacing its previous boot's); `installed` for
    the installed system's own keys, which `install` reads back over the trusted session."""
    record = HostKeys(machine, address, now_stamp(), boot, tuple(keys), installed)
    write_json_atomic(hostkeys_path(inventory_path, machine), record.as_json())
    return record


def parse_host_keys(data: Any, machine: str) -> HostKeys | None:
    """A record as written by `record_host_keys`, every value checked again; None if it is
    not one (a key that fails the key rule, an address that is not one)."""
    if not isinstance(data, dict) or data.get("machine") != machine:
        return None
    address, keys = data.get("address"), data.get("keys")
    reported_at, boot = data.get("reported_at", ""), data.get("boot", "")
    if not isinstance(address, str) or not isinstance(keys, list) or not keys:
        return None
    if not isinstance(reported_at, str) or not isinstance(boot, str):
        return None
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None
    if not all(isinstance(key, str) and is_bare_key(key) for key in keys):
        return None
    return HostKeys(machine, address, reported_at, boot, tuple(keys), data.get("installed") is True)


def is_bare_key(line: str) -> bool:
    """`type base64` and nothing else, valid by the one key rule."""
    parts = line.split(" ")
    return len(parts) == 2 and public_key_type(line) == parts[0]


def read_host_keys(inventory_path: Path, machine: str) -> HostKeys | None:
    return parse_host_keys(read_json(hostkeys_path(inventory_path, machine)), machine)


def known_hosts(inventory: Inventory) -> list[tuple[str, HostKeys]]:
    """(host name, record) of every machine of the inventory that has reported keys."""
    found: list[tuple[str, HostKeys]] = []
    for machine in inventory.machines.values():
        record = read_host_keys(inventory.path, machine.name)
        if record is not None:
            found.append((machine.hostname, record))
    return found


def known_hosts_lines(inventory: Inventory) -> list[str]:
    """`<hostname>,<address> <type> <key>` lines, as ssh's known_hosts reads them."""
    return [
        f"{hostname},{record.address} {key}"
        for hostname, record in known_hosts(inventory)
        for key in record.keys
    ]
