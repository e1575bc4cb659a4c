"""boot-test's `--network netns`: the provisioning server's own path, end to end, on this
machine. A namespace of its own (boot.netns) with a bridge at the server's address and one
tap; a one-machine inventory (a fixed MAC, a static address, a host name) in the run's
directory; `plasmaboot pxe-server` (dnsmasq's DHCP and TFTP, serve's HTTP) running inside;
QEMU on the tap. Nothing leaves the namespace, and pxe-server, dnsmasq, QEMU and the
namespace are stopped and removed on every exit path."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.boot.netns import Netns, namespace, namespace_name, require_netns
from plasmaboot.boot.qemu import TapNetwork
from plasmaboot.errors import UserError, WorkError
from plasmaboot.inventory.load import check_hostname
from plasmaboot.inventory.model import HOSTNAME_PATTERN, Machine
from plasmaboot.inventory.state import HostKeys, read_host_keys
from plasmaboot.log import Log
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.pxe.server import DNSMASQ, find_loaders
from plasmaboot.run import Background, require_tool, start

DEFAULT_SUBNET = "10.77.0.0/24"
# The bridge's IPv6 address (a unique local one, inside the namespace only). dnsmasq sends
# its router advertisement only from an interface with a global IPv6 address; without one
# it stays silent, and iPXE waits ~16 s for IPv6 before it fetches its script (measured
# here: the script came at 18.7 s instead of 3.2 s). A provisioning VLAN needs the same.
SERVER_IPV6 = ipaddress.IPv6Interface("fd77::1/64")
MIN_PREFIX = 29  # 8 addresses: the network, the server, the machine, a range, the broadcast
DHCP_RANGE_SIZE = 50
MACHINE_MAC = "52:54:00:77:00:02"  # QEMU's prefix (52:54:00), fixed: the inventory knows it
TAP = "tap0"
HTTP_PORT = 8080
INVENTORY = "machines.toml"
SERVER_LOG = "pxe-server.log"
SERVER_READY = "pxe-server on "  # the line pxe-server prints once dnsmasq and HTTP run
SERVER_START_TIMEOUT = 60.0
POLL = 0.1
# How long after SSH answers boot-test waits for the node's host-key report (the reporter
# starts with sshd; a report takes a second). An image whose stage-1 stacks no per-node
# layer never reports: then it connects as before, without StrictHostKeyChecking.
REPORT_WAIT = 60.0


@dataclass(frozen=True)
class Addresses:
    """The namespace's network: the server on the bridge, the machine's static address, and
    the DHCP range pxe-server needs (the machine never takes from it)."""

    server: ipaddress.IPv4Interface
    machine: ipaddress.IPv4Interface
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]


@dataclass(frozen=True)
class ProvisioningPlan:
    """What --network netns sets up, every value checked."""

    netns: str
    addresses: Addresses
    machine: Machine
    profiles_dirs: tuple[Path, ...]

    @property
    def address(self) -> str:
        return str(self.addresses.machine.ip)


def parse_subnet(value: str) -> ipaddress.IPv4Network:
    """--netns-subnet: an IPv4 network with room for the server, the machine and a range."""
    try:
        subnet = ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise UserError(
            f"--netns-subnet {value!r}: expected an IPv4 network like {DEFAULT_SUBNET} "
            "(the network's own address, host bits zero)",
            hint="it lives only inside boot-test's namespace; any private network will do",
        ) from exc
    if subnet.prefixlen > MIN_PREFIX:
        raise UserError(
            f"--netns-subnet {value}: too small; expected /{MIN_PREFIX} or larger (room for "
            "the server, the machine and a DHCP range)"
        )
    return subnet


def plan_addresses(subnet: ipaddress.IPv4Network) -> Addresses:
    """The server at the first address, the machine at the second, then the range."""
    prefix = subnet.prefixlen
    last = min(3 + DHCP_RANGE_SIZE - 1, subnet.num_addresses - 2)
    return Addresses(
        server=ipaddress.IPv4Interface(f"{subnet[1]}/{prefix}"),
        machine=ipaddress.IPv4Interface(f"{subnet[2]}/{prefix}"),
        dhcp_range=(subnet[3], subnet[last]),
    )


def machine_hostname(label: str, hostname: str | None) -> str:
    """--hostname, else the set's label; either must be a host name."""
    value = hostname if hostname is not None else label
    if len(value) <= 253 and re.fullmatch(HOSTNAME_PATTERN, value):
        # the inventory's own rule for what dnsmasq would misread (600, ignore, 10.0.0.5)
        where = f"--hostname {hostname!r}" if hostname is not None else f"{label} (the label)"
        check_hostname(value, where, given=hostname is not None)
        return value
    if hostname is not None:
        raise UserError(
            f"--hostname {hostname!r}: expected a lowercase host name (letters, digits and "
            "'-', dot-separated labels)"
        )
    raise UserError(
        f"{label}: the label is not a host name, and the machine is named after it",
        hint="give the machine a name: --hostname node1",
    )


def make_machine(profile: str, variant: str | None, hostname: str, address: str) -> Machine:
    """The inventory's one machine; its table is named after the host name's first label."""
    return Machine(
        name=hostname.split(".", 1)[0],
        macs=(MACHINE_MAC,),
        profile=profile,
        variant=variant,
        hostname=hostname,
        ipv4=address,
        kernel_params=(),
        ssh_keys=(),
        labels={},
    )


def require_known_profile(machine: Machine, store: ProfileStore) -> None:
    """pxe-server loads the inventory, which must name a profile its profile store has."""
    missing = [
        f"{kind} {name!r}"
        for name, kind in ((machine.profile, "profile"), (machine.variant, "variant"))
        if name is not None and store.locate(name, kind) is None
    ]
    if missing:
        raise UserError(
            f"--network netns: pxe-server's inventory names the set's {missing[0]}, which "
            "is in no profiles directory",
            hint="pass the directory the image was built with: "
            "plasmaboot --profiles-dir DIR boot-test ...",
        )


def plan_provisioning(
    label: str,
    profile: str,
    variant: str | None,
    hostname: str | None,
    subnet: str,
    profiles_dirs: tuple[Path, ...],
) -> ProvisioningPlan:
    """Check everything --network netns needs on this machine, before anything starts."""
    addresses = plan_addresses(parse_subnet(subnet))
    name = machine_hostname(label, hostname)
    machine = make_machine(profile, variant, name, str(addresses.machine))
    if machine.label != label:
        raise UserError(
            f"{label}: pxe-server boots a machine of profile {profile!r} from the set "
            f"{machine.label!r}, not {label!r}",
            hint=f"boot-test the set named after its profile: {machine.label}",
        )
    require_known_profile(machine, ProfileStore(profiles_dirs))
    require_netns()
    require_tool(DNSMASQ)
    find_loaders()  # pxe-server serves them (a BIOS machine's iPXE ROM never asks)
    return ProvisioningPlan(namespace_name(), addresses, machine, profiles_dirs)


def inventory_text(machine: Machine) -> str:
    """machines.toml with the one machine (every value checked: JSON strings are TOML's)."""
    lines = [
        "# written by plasmaboot boot-test --network netns",
        f"[machines.{machine.name}]",
        f"mac = {json.dumps(machine.macs[0])}",
        f"profile = {json.dumps(machine.profile)}",
        *([f"variant = {json.dumps(machine.variant)}"] if machine.variant else []),
        f"hostname = {json.dumps(machine.hostname)}",
        f"ipv4 = {json.dumps(machine.ipv4)}",
    ]
    return "\n".join(lines) + "\n"


def pxe_server_argv(
    plan: ProvisioningPlan, space: Netns, artifacts: Path, inventory: Path
) -> list[str]:
    """`plasmaboot pxe-server` on the namespace's bridge, run by this same Python."""
    first, last = plan.addresses.dhcp_range
    dirs = [arg for d in plan.profiles_dirs for arg in ("--profiles-dir", str(d.absolute()))]
    return [
        sys.executable, "-m", "plasmaboot", *dirs, "pxe-server",
        "--interface", space.bridge,
        "--root", str(artifacts.absolute()),
        "--inventory", str(inventory.absolute()),
        "--dhcp-range", f"{first},{last}",
        "--http-port", str(HTTP_PORT),
    ]  # fmt: skip


@dataclass(frozen=True)
class Provisioned:
    """A running provisioning network: where the guest plugs in and how it is reached."""

    netns: Netns
    server_log: Path  # pxe-server's output: dnsmasq's lines and serve's access log
    guest: TapNetwork
    address: str  # the machine's static address
    hostname: str
    inventory: Path  # its machines.toml: the node's host-key report is recorded beside it
    machine: str = ""  # the machine's name in it


@contextmanager
def provisioning_network(
    plan: ProvisioningPlan, artifacts: Path, workdir: Path, log: Log
) -> Iterator[Provisioned]:
    """The namespace, its tap and pxe-server, ready for a guest; all gone on exit."""
    inventory = workdir / INVENTORY
    inventory.write_text(inventory_text(plan.machine), encoding="utf-8")
    server_log = workdir / SERVER_LOG
    with namespace(plan.netns, plan.addresses.server, log, ipv6=SERVER_IPV6) as space:
        space.add_tap(TAP, log)
        argv = space.argv(pxe_server_argv(plan, space, artifacts, inventory))
        # a source checkout run with PYTHONPATH=src finds plasmaboot the same way
        env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else None
        with start(argv, log=log, stdout=server_log, env=env) as server:
            wait_until_serving(server, server_log)
            log.info(f"pxe-server runs in {space.name}: {server_log}")
            yield Provisioned(
                netns=space,
                server_log=server_log,
                guest=TapNetwork(TAP, plan.machine.macs[0]),
                address=plan.address,
                hostname=plan.machine.hostname,
                inventory=inventory,
                machine=plan.machine.name,
            )


def wait_until_serving(
    server: Background, output: Path, timeout: float = SERVER_START_TIMEOUT
) -> None:
    """Until pxe-server says it runs; its own error (exit 2) as a UserError, anything else
    as a WorkError with its last lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace") if output.exists() else ""
        if SERVER_READY in text:
            return
        if server.poll() is not None:
            raise server_failure(server.returncode, text, output)
        time.sleep(POLL)
    raise WorkError(
        f"pxe-server did not start within {timeout:.0f}s",
        hint=f"its output: {output}",
    )


def server_failure(code: int | None, text: str, output: Path) -> UserError | WorkError:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    error = next((line for line in lines if line.startswith("error: ")), None)
    hint = next((line for line in lines if line.startswith("hint: ")), None)
    if code == 2 and error is not None:
        return UserError(
            f"pxe-server refused to start: {error.removeprefix('error: ')}",
            hint=hint.removeprefix("hint: ") if hint else f"its output: {output}",
        )
    tail = "\n".join(lines[-10:])
    return WorkError(
        f"pxe-server exited with code {code} before serving\n{tail}",
        hint=f"its output: {output}",
    )


def wait_for_report(
    provisioned: Provisioned, after: str | None, timeout: float = REPORT_WAIT
) -> HostKeys | None:
    """The host keys the node reported at this boot (a record whose boot is not `after`,
    the previous boot's), or None if none came within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        record = read_host_keys(provisioned.inventory, provisioned.machine)
        if record is not None and record.boot != after:
            return record
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def write_known_hosts(path: Path, provisioned: Provisioned, record: HostKeys) -> Path:
    """known_hosts for the node: its reported keys under its host name and address."""
    names = f"{provisioned.hostname},{provisioned.address}"
    path.write_text("".join(f"{names} {key}\n" for key in record.keys), encoding="utf-8")
    return path
