"""Loading `machines.toml`: structure first (the pydantic tables), then every value that will
end up in a DHCP answer, a boot script or a path, checked where it enters, each error one
line naming the file and the key: MAC syntax, host names, addresses, kernel parameters,
key files, profiles, and duplicates across machines."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plasmaboot.catalog import load_catalog
from plasmaboot.errors import UserError
from plasmaboot.formats import FormatError
from plasmaboot.formats.cmdline import check_param
from plasmaboot.formats.sshkeys import read_public_keys
from plasmaboot.install.layout import load_layout
from plasmaboot.inventory.model import (
    PATTERN_EXPECTATIONS,
    InventoryFile,
    Machine,
    MachineTable,
    SharedSettings,
)
from plasmaboot.paths import NotASmallFile, read_small_file
from plasmaboot.profiles.located_errors import (
    describe_validation_error,
    display_path,
    parse_toml,
    render_value,
    suggestion,
)
from plasmaboot.profiles.model import NAME_PATTERN
from plasmaboot.profiles.model import PATTERN_EXPECTATIONS as PROFILE_PATTERNS
from plasmaboot.profiles.store import ProfileStore

MAX_INVENTORY_SIZE = 16 << 20  # 16 MiB: tens of thousands of machines
# Parameters plasmaboot writes itself: a machine setting them would break the boot.
RESERVED_PARAMS = ("initrd=", "systemd.hostname=", "ip=")

EXPECTATIONS = {**PROFILE_PATTERNS, **PATTERN_EXPECTATIONS}  # what each pattern means


@dataclass(frozen=True)
class Inventory:
    """The machines of one inventory file, by name and by MAC."""

    path: Path
    digest: str  # sha256 of the file's bytes: what a reload compares
    machines: dict[str, Machine] = field(default_factory=dict)
    by_mac: dict[str, Machine] = field(default_factory=dict)

    def find(self, mac: str) -> Machine | None:
        """The machine owning `mac` (any spelling: colons or dashes, any case)."""
        normal = normalize_mac(mac)
        return self.by_mac.get(normal) if normal else None


def normalize_mac(mac: str) -> str | None:
    """`52-54-00-AB-cd-01` -> `52:54:00:ab:cd:01`; None if it is not a MAC address."""
    parts = mac.strip().replace("-", ":").lower().split(":")
    hexdigits = set("0123456789abcdef")
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= hexdigits for p in parts):
        return None
    return ":".join(parts)


def load_inventory(path: Path, store: ProfileStore) -> Inventory:
    """Read, validate and resolve an inventory file; UserError (exit 2) on any problem."""
    return parse_inventory(read_inventory(path), path, store)


def read_inventory(path: Path) -> bytes:
    """The bytes of an inventory file: a regular file of at most MAX_INVENTORY_SIZE, read
    once (what is checked is what was read), never a FIFO or a device that would block or
    never end."""
    display = display_path(path)
    try:
        return read_small_file(path, MAX_INVENTORY_SIZE)
    except OSError as exc:
        raise UserError(
            f"--inventory {display}: cannot read ({exc.strerror})",
            hint="pass a machines.toml (see docs/pxe-server.md for its format)",
        ) from exc
    except NotASmallFile as exc:
        raise UserError(
            f"--inventory {display}: {exc}",
            hint="pass a machines.toml (a FIFO, device, directory or a file of that size "
            "is never one)",
        ) from exc


def parse_inventory(raw: bytes, path: Path, store: ProfileStore) -> Inventory:
    """Validate and resolve the bytes of the inventory file `path`."""
    display = display_path(path)
    data = parse_toml(raw, path)
    try:
        parsed = InventoryFile.model_validate(data)
    except ValidationError as exc:
        error = describe_validation_error(exc, data, InventoryFile, EXPECTATIONS)
        raise UserError(f"{display}: {error.message}", hint=error.hint) from exc
    if "defaults" in data:
        forbidden = [key for key in ("mac", "hostname", "ipv4") if key in data["defaults"]]
        if forbidden:
            raise UserError(
                f"{display}: defaults.{forbidden[0]}: expected it in a machine's own table",
                hint="mac, hostname and ipv4 belong to one machine each",
            )
    machines = {
        name: resolve_machine(name, table, parsed.defaults, path, store)
        for name, table in parsed.machines.items()
    }
    check_unique(machines, display)
    by_mac = {mac: machine for machine in machines.values() for mac in machine.macs}
    return Inventory(path, hashlib.sha256(raw).hexdigest(), machines, by_mac)


def resolve_machine(
    name: str,
    table: MachineTable,
    defaults: SharedSettings | None,
    path: Path,
    store: ProfileStore,
) -> Machine:
    where = f"{display_path(path)}: machines.{name}"
    shared = defaults or SharedSettings()
    profile = table.profile or shared.profile
    if profile is None:
        raise UserError(
            f"{where}.profile: expected a profile for this machine",
            hint="set profile in its table or in [defaults]",
        )
    variant = table.variant if table.variant is not None else shared.variant
    source = where if table.profile else f"{display_path(path)}: defaults"
    variant_source = where if table.variant is not None else f"{display_path(path)}: defaults"
    check_profile(profile, f"{source}.profile", store)
    check_variant(variant, f"{variant_source}.variant", store)
    kernel_params = [*(shared.kernel_params or []), *(table.kernel_params or [])]
    for index, param in enumerate(kernel_params):
        check_kernel_param(param, f"{where}.kernel_params[{index}]")
    ssh_keys = [
        check_key_file(ref, path, f"{where}.ssh_keys[{index}]")
        for index, ref in enumerate([*(shared.ssh_keys or []), *(table.ssh_keys or [])])
    ]
    macs = [table.mac] if isinstance(table.mac, str) else list(table.mac)
    if not macs:
        raise UserError(f"{where}.mac: expected at least one MAC address, got []")
    normal = [check_mac(mac, f"{where}.mac") for mac in macs]
    hostname = table.hostname or name
    check_hostname(hostname, f"{where}.hostname", given=table.hostname is not None)
    labels = {**(shared.labels or {}), **(table.labels or {})}
    for key, value in labels.items():
        check_label(value, f"{where}.labels.{key}")
    layout = table.layout if table.layout is not None else shared.layout
    layout_where = where if table.layout is not None else f"{display_path(path)}: defaults"
    services = table.services if table.services is not None else shared.services
    services_where = where if table.services is not None else f"{display_path(path)}: defaults"
    return Machine(
        name=name,
        macs=tuple(dict.fromkeys(normal)),
        profile=profile,
        variant=variant,
        hostname=hostname,
        ipv4=check_ipv4(table.ipv4, f"{where}.ipv4") if table.ipv4 is not None else None,
        kernel_params=tuple(kernel_params),
        ssh_keys=tuple(dict.fromkeys(ssh_keys)),
        labels=labels,
        layout=check_layout_file(layout, path, f"{layout_where}.layout") if layout else None,
        services=check_services(services, f"{services_where}.services"),
    )


def check_profile(profile: str, where: str, store: ProfileStore) -> None:
    # the name rule first: a name like "../x" must never reach the file system as a path
    if not re.fullmatch(NAME_PATTERN, profile) or store.locate(profile) is None:
        known = store.profile_names()
        raise UserError(
            f"{where}: unknown profile {render_value(profile)}{suggestion(profile, known)}",
            hint=f"known profiles: {', '.join(known)}",
        )


def check_variant(variant: str | None, where: str, store: ProfileStore) -> None:
    if variant is None:
        return
    if not re.fullmatch(NAME_PATTERN, variant) or store.locate(variant, "variant") is None:
        known = store.variant_names()
        raise UserError(
            f"{where}: unknown variant {render_value(variant)}{suggestion(variant, known)}",
            hint=f"known variants: {', '.join(known)}",
        )


def check_mac(mac: str, where: str) -> str:
    normal = normalize_mac(mac)
    if normal is None:  # the model's pattern already refused it; kept for direct callers
        raise UserError(
            f"{where}: expected a MAC address like 52:54:00:12:34:01, got {render_value(mac)}"
        )
    if int(normal[:2], 16) & 1:
        raise UserError(
            f"{where}: expected a NIC's own (unicast) MAC address, got {render_value(mac)}",
            hint="a multicast or broadcast address is never a machine's NIC",
        )
    if normal == "00:00:00:00:00:00":
        raise UserError(f"{where}: expected a NIC's MAC address, got {render_value(mac)}")
    return normal


def check_ipv4(value: str, where: str) -> str:
    try:
        interface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise UserError(
            f"{where}: expected an IPv4 address with its prefix like 10.20.0.11/24, "
            f"got {render_value(value)}"
        ) from exc
    if "/" not in value:
        raise UserError(
            f"{where}: expected an address with its prefix like 10.20.0.11/24, "
            f"got {render_value(value)}",
            hint="add the prefix length of the provisioning network",
        )
    address, network = interface.ip, interface.network
    broadcast = address == ipaddress.IPv4Address("255.255.255.255")  # limited broadcast
    special = (address.is_loopback, address.is_multicast, address.is_unspecified, broadcast)
    if any(special) or address.is_link_local:
        raise UserError(f"{where}: expected a host address, got {render_value(value)}")
    if network.prefixlen < 31 and address in (network.network_address, network.broadcast_address):
        raise UserError(
            f"{where}: expected a host address, got {render_value(value)} "
            f"(the {'network' if address == network.network_address else 'broadcast'} address)"
        )
    return str(interface)


# What dnsmasq's dhcp-host line reads as something other than a name: a lease time
# (`600`, `1h`, `infinite`), `ignore` (never answer that machine) or an address.
DNSMASQ_WORD = re.compile(r"[0-9]+[smhdw]?|infinite|ignore")


def check_hostname(hostname: str, where: str, given: bool) -> None:
    """A host name that reaches dnsmasq's hosts file as a name: dnsmasq takes `ignore` for
    "never answer", `600` or `1h` for a lease time and `10.0.0.5` for an address, and has no
    quoting. RFC 1123 rules out an all-numeric last label anyway."""
    last = hostname.rsplit(".", 1)[-1]
    if DNSMASQ_WORD.fullmatch(hostname) or last.isdigit():
        raise UserError(
            f"{where}: {render_value(hostname)} is not usable as a host name (DHCP would read "
            "it as a lease time, an address or `ignore`)",
            hint="set hostname to a name with a letter in its last label"
            if given
            else "the machine's name is its host name: set hostname in its table",
        )


def check_label(value: str, where: str) -> None:
    """Labels are printed (machines list/show): no control, line-breaking or bidirectional
    formatting character can rewrite what the operator sees."""
    if not value.isprintable():
        raise UserError(
            f"{where}: expected printable text (no control or formatting characters), "
            f"got {render_value(value)}"
        )


def check_kernel_param(param: str, where: str) -> None:
    try:
        check_param(param)
    except FormatError as exc:
        raise UserError(f"{where}: {exc}, got {render_value(param)}") from exc
    for reserved in RESERVED_PARAMS:
        if param.startswith(reserved):
            raise UserError(
                f"{where}: {reserved.rstrip('=')} is set by plasmaboot, got {render_value(param)}",
                hint="plasmaboot writes initrd=, the host name and the static address itself",
            )


def inside_inventory_dir(ref: str, inventory: Path, where: str) -> Path:
    """A file the inventory names: relative to it and inside its directory, as profiles
    name their files."""
    directory = inventory.parent.resolve()
    if not ref or not ref.isprintable() or Path(ref).is_absolute():
        raise UserError(
            f"{where}: expected a path relative to the inventory file, got {render_value(ref)}"
        )
    try:
        path = (directory / ref).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise UserError(f"{where}: cannot resolve {render_value(ref)} ({exc})") from exc
    if not path.is_relative_to(directory):
        raise UserError(
            f"{where}: expected a path inside {display_path(directory)}, got "
            f"{render_value(ref)} (it is {display_path(path)})",
            hint="copy the file beside the inventory and name it relatively",
        )
    return path


def check_layout_file(ref: str, inventory: Path, where: str) -> str:
    """A disk layout the inventory names, checked now (`machines check` finds its errors)."""
    path = inside_inventory_dir(ref, inventory, where)
    try:
        load_layout(path)
    except UserError as exc:
        raise UserError(f"{where}: {exc.message}", hint=exc.hint) from exc
    return str(path)


def check_services(services: list[str] | None, where: str) -> tuple[str, ...] | None:
    if services is None:
        return None
    known = list(load_catalog())
    for index, name in enumerate(services):
        if name not in known:
            raise UserError(
                f"{where}[{index}]: unknown service {render_value(name)}{suggestion(name, known)}",
                hint=f"known services: {', '.join(known)}",
            )
    return tuple(dict.fromkeys(services))


def check_key_file(ref: str, inventory: Path, where: str) -> str:
    """A public key file inside the inventory's directory, valid by the one key rule."""
    path = inside_inventory_dir(ref, inventory, where)
    try:
        read_public_keys(path)
    except OSError as exc:
        raise UserError(f"{where}: cannot read {display_path(path)} ({exc.strerror})") from exc
    except FormatError as exc:
        raise UserError(
            f"{where}: {display_path(path)}: {exc}",
            hint="name the public half of a key (a .pub file)",
        ) from exc
    return str(path)


def check_unique(machines: dict[str, Machine], display: str) -> None:
    """No MAC, host name or address belongs to two machines."""
    seen: dict[tuple[str, str], str] = {}
    for machine in machines.values():
        facts: list[tuple[str, Any]] = [("mac", mac) for mac in machine.macs]
        facts.append(("hostname", machine.hostname))
        if machine.address:
            facts.append(("ipv4", machine.address))
        for key, value in facts:
            other = seen.setdefault((key, value), machine.name)
            if other != machine.name:
                raise UserError(
                    f"{display}: machines.{machine.name}.{key}: {render_value(value)} is "
                    f"already machines.{other}'s",
                    hint=f"each {key} belongs to one machine",
                )
