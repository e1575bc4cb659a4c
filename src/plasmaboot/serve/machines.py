"""The inventory as `serve` holds it: loaded at start, reloaded when the file changes (a
broken edit keeps the previous inventory and says why), and each machine's answer: its own
boot script, or the refusal an unknown machine gets (logged with its MAC and address)."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.errors import PlasmabootError
from plasmaboot.inventory.load import (
    Inventory,
    load_inventory,
    normalize_mac,
    parse_inventory,
    read_inventory,
)
from plasmaboot.inventory.model import Machine
from plasmaboot.profiles.store import ProfileStore

# A stamp this recent may not change with the next edit: timestamps are only as fine as the
# file system's (a kernel tick, or 1-2 s on some), so an edit of the same size within that
# time keeps inode, size and mtime. Until its mtime is older, the content itself is compared.
RACY_WINDOW_NS = 2_000_000_000


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is edited or replaced: inode, size, mtime."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def is_racy(stamp: tuple[int, int, int] | None) -> bool:
    return stamp is not None and time.time_ns() - stamp[2] < RACY_WINDOW_NS


class InventoryWatch:
    """The current inventory; `current()` reloads it first if the file changed since. A
    reload that fails, whatever the reason, keeps the previous inventory and logs why once."""

    def __init__(self, path: Path, store: ProfileStore) -> None:
        self.path = path
        self.store = store
        self.log = logging.getLogger("plasmaboot.serve.events")  # the app sets its own
        self._lock = threading.Lock()
        self._stamp = file_stamp(path)
        self._inventory = load_inventory(path, store)  # a bad file at start: exit 2
        self._seen = self._inventory.digest  # the last content tried, loaded or not
        self.last_error: str | None = None

    def unchanged(self) -> bool:
        """True when the file's stamp says `current()` has nothing to read (cheap)."""
        stamp = file_stamp(self.path)
        return stamp == self._stamp and not is_racy(stamp)

    def current(self) -> Inventory:
        if self.unchanged():
            return self._inventory
        with self._lock:
            stamp = file_stamp(self.path)
            if stamp != self._stamp or is_racy(stamp):
                self._stamp = stamp
                self._reload()
        return self._inventory

    def _reload(self) -> None:
        try:
            raw = read_inventory(self.path)
            digest = hashlib.sha256(raw).hexdigest()
            if digest == self._seen:  # nothing new: loaded (or refused) before
                if digest == self._inventory.digest:
                    self.last_error = None
                return
            self._seen = digest
            fresh = parse_inventory(raw, self.path, self.store)
        except PlasmabootError as exc:
            self.refuse(exc.message)
            return
        except Exception as exc:  # a server keeps serving: a bug here must not stop it
            self.refuse(f"unexpected {type(exc).__name__}: {exc}")
            return
        self.log.info("inventory reloaded: %s (%d machines)", self.path, len(fresh.machines))
        self._inventory = fresh
        self.last_error = None

    def refuse(self, message: str) -> None:
        if message != self.last_error:
            self.log.warning("inventory not reloaded, keeping the previous one: %s", message)
        self.last_error = message


@dataclass(frozen=True)
class Lookup:
    """What the inventory says about one request's MAC."""

    mac: str | None  # normalized, or None if the request's MAC is not a MAC address
    machine: Machine | None


def look_up(inventory: Inventory, raw_mac: str | None) -> Lookup:
    mac = normalize_mac(raw_mac) if raw_mac else None
    return Lookup(mac, inventory.by_mac.get(mac) if mac else None)


def machine_params(machine: Machine) -> list[str]:
    """Kernel parameters a machine gets from the inventory: its host name, its static
    address (the kernel's and systemd-network-generator's `ip=` syntax), then its own."""
    params = [f"systemd.hostname={machine.hostname}"]
    if machine.ipv4 is not None:
        interface = ipaddress.IPv4Interface(machine.ipv4)
        params.append(f"ip={interface.ip}:::{interface.netmask}:{machine.hostname}::off")
    return [*params, *machine.kernel_params]


def safe_text(text: str) -> str:
    """Text for an iPXE `echo`: no variable expansion, no second command."""
    return "".join(c if c.isalnum() or c in " .,:/()-_'" else "?" for c in text)[:200]


def refusal_script(reason: str) -> str:
    """What an unknown machine gets: it prints why and stops; no kernel."""
    return (
        "#!ipxe\n"
        f"echo plasmaboot: {safe_text(reason)}\n"
        "echo plasmaboot: not booting this machine (ask the operator to add it to the inventory)\n"
        "exit 1\n"
    )


def ask_with_mac_script(base_url: str) -> str:
    """The loader's first script: ask again, naming the MAC of the NIC that booted."""
    return f"#!ipxe\nchain {base_url}/boot.ipxe?mac=${{net0/mac}}\n"
