"""`plasmaboot pxe-server`: dnsmasq (DHCP or proxyDHCP, and TFTP with Debian's iPXE loaders)
as a supervised child, and `serve` with the inventory, both bound to one interface's address.

Everything is checked before anything starts (exit 2, one line): the interface and its IPv4
address, the DHCP range, the iPXE loaders, the ports. While it runs, an edit of the
inventory rewrites dnsmasq's hosts file and tells dnsmasq (SIGHUP); a broken edit keeps the
previous machines. SIGTERM or Ctrl-C stops dnsmasq and the HTTP server; nothing is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats.ipxe import BOOT_SCRIPT
from plasmaboot.inventory.load import Inventory
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.pxe.dnsmasq import (
    BIOS_LOADER,
    UEFI_LOADER,
    DnsmasqConfig,
    render,
    render_hosts,
)
from plasmaboot.run import Background, require_tool, run, start
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.machines import InventoryWatch
from plasmaboot.serve.tokens import DEFAULT_TTL

LOADER_DIR = Path("/usr/lib/ipxe")
DNSMASQ = "dnsmasq"
DHCP_PORT, TFTP_PORT, PROXY_PORT = 67, 69, 4011
WATCH_INTERVAL = 1.0
INTERFACE_NAME = r"[A-Za-z0-9_.:@-]{1,15}"


@dataclass(frozen=True)
class PxeOptions:
    interface: str
    root: Path
    inventory: Path
    dhcp_range: str | None = None  # "START,END"; None with proxy
    proxy: bool = False
    http_port: int = 8080
    token_ttl: float = DEFAULT_TTL  # seconds a machine's host-key token stays valid


@dataclass(frozen=True)
class PxePlan:
    """The options checked and turned into what runs."""

    options: PxeOptions
    address: ipaddress.IPv4Interface
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None
    loaders: dict[str, Path]

    @property
    def boot_url(self) -> str:
        return f"http://{self.address.ip}:{self.options.http_port}/{BOOT_SCRIPT}"

    def dnsmasq_config(self, state: Path) -> DnsmasqConfig:
        return DnsmasqConfig(
            interface=self.options.interface,
            address=self.address,
            boot_url=self.boot_url,
            tftp_root=str(state / "tftp"),
            dhcp_range=self.dhcp_range,
            lease_file=str(state / "dnsmasq.leases"),
            hosts_file=str(state / "hosts"),
        )


def plan(options: PxeOptions, check_ports: bool = True) -> PxePlan:
    """Check every option against this machine; UserError naming the first problem."""
    if not re.fullmatch(INTERFACE_NAME, options.interface):
        raise UserError(f"--interface {options.interface!r}: not an interface name")
    if options.proxy == (options.dhcp_range is not None):
        raise UserError(
            "pxe-server: give exactly one of --dhcp-range START,END and --proxy-dhcp",
            hint="--dhcp-range when this server hands out addresses; --proxy-dhcp beside "
            "the site's own DHCP server",
        )
    if not options.root.is_dir():
        raise UserError(
            f"--root {options.root}: no such directory",
            hint="pass the directory `plasmaboot build --output-dir` wrote (e.g. artifacts)",
        )
    address = interface_address(options.interface)
    dhcp_range = parse_range(options.dhcp_range, address) if options.dhcp_range else None
    loaders = find_loaders()
    require_tool(DNSMASQ)
    if check_ports:
        check_ports_free(address, options)
    return PxePlan(options, address, dhcp_range, loaders)


def interface_address(name: str) -> ipaddress.IPv4Interface:
    """The interface's first IPv4 address with its prefix; UserError if it has none."""
    proc = run(["ip", "-j", "-4", "addr", "show", "dev", name], check=False, timeout=10)
    if proc.returncode != 0:
        raise UserError(
            f"--interface {name}: no such network interface",
            hint="pass the interface of the provisioning network (ip -br link lists them)",
        )
    links = json.loads(proc.stdout.decode() or "[]")
    for link in links:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                return ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
    raise UserError(
        f"--interface {name}: has no IPv4 address",
        hint=f"give it the server's address on the provisioning network: ip addr add "
        f"10.20.0.1/24 dev {name}",
    )


def parse_range(
    value: str, address: ipaddress.IPv4Interface
) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    parts = value.split(",")
    try:
        start, end = (ipaddress.IPv4Address(part.strip()) for part in parts)
    except ValueError as exc:
        raise UserError(
            f"--dhcp-range {value!r}: expected START,END (two IPv4 addresses)",
            hint=f"for example {address.network[100]},{address.network[199]}"
            if address.network.num_addresses > 200
            else None,
        ) from exc
    network = address.network
    if start not in network or end not in network or start > end:
        raise UserError(
            f"--dhcp-range {value!r}: expected START <= END inside {network} "
            f"(the network of {address.ip})"
        )
    if start <= address.ip <= end:
        raise UserError(
            f"--dhcp-range {value!r}: includes this server's own address {address.ip}",
            hint="start the range above (or end it below) the server's address",
        )
    return start, end


def find_loaders() -> dict[str, Path]:
    loaders = {name: LOADER_DIR / name for name in (BIOS_LOADER, UEFI_LOADER)}
    missing = [str(path) for path in loaders.values() if not path.is_file()]
    if missing:
        raise UserError(
            f"the iPXE loaders are not installed ({', '.join(missing)} missing)",
            hint="install them: apt-get install ipxe (or run `make setup`)",
        )
    return loaders


def check_ports_free(address: ipaddress.IPv4Interface, options: PxeOptions) -> None:
    """Fail before starting anything when a port this server needs is taken.

    The UDP probes bind as dnsmasq will (on the interface) but without SO_REUSEADDR: dnsmasq
    sets it on its own sockets, so a probe with it would bind beside another dnsmasq (a
    second pxe-server, the site's DHCP server on this host) and two DHCP servers would
    answer on one wire. The TCP probe keeps SO_REUSEADDR, as the HTTP server does, so a
    connection in TIME_WAIT from a previous run does not count as taken."""
    udp = [TFTP_PORT, DHCP_PORT] + ([PROXY_PORT] if options.proxy else [])
    wanted = [(socket.SOCK_STREAM, options.http_port, "--http-port")]
    wanted += [(socket.SOCK_DGRAM, port, "UDP port") for port in udp]
    for kind, port, what in wanted:
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                device = options.interface.encode()
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device)
            try:
                probe.bind((str(address.ip), port))
            except OSError as exc:
                raise UserError(
                    f"{what} {port} on {address.ip}: cannot bind ({exc.strerror})",
                    hint="stop what uses it (another DHCP/TFTP server?) or pick another port",
                ) from exc


def prepare_tftp_root(tftp: Path, loaders: dict[str, Path]) -> None:
    """The loaders, readable by dnsmasq's own user (it drops root before serving)."""
    tftp.mkdir(mode=0o755)
    os.chmod(tftp, 0o755)
    for name, source in loaders.items():
        shutil.copyfile(source, tftp / name)
        os.chmod(tftp / name, 0o644)


def check_addresses(inventory: Inventory, checked: PxePlan) -> None:
    """In DHCP mode a machine's static address must be on the interface's network (dnsmasq
    would silently never hand it out)."""
    if checked.dhcp_range is None:
        return
    network = checked.address.network
    for machine in inventory.machines.values():
        if machine.address and ipaddress.IPv4Address(machine.address) not in network:
            raise UserError(
                f"{inventory.path}: machines.{machine.name}.ipv4: {machine.ipv4} is not on "
                f"{checked.options.interface}'s network {network}",
                hint="give the machine an address of the provisioning network",
            )
        if machine.address == str(checked.address.ip):
            raise UserError(
                f"{inventory.path}: machines.{machine.name}.ipv4: {machine.ipv4} is this "
                "server's own address"
            )


def write_hosts(path: Path, inventory: Inventory, proxy: bool) -> None:
    """Replace the hosts file at once, so dnsmasq never reads half of it."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(render_hosts(list(inventory.machines.values()), proxy))
    os.chmod(temp, 0o644)
    os.replace(temp, path)


def print_config(options: PxeOptions, store: ProfileStore) -> str:
    """What --print-config shows: the configuration and hosts file as they would run."""
    checked = plan(options, check_ports=False)
    watch = InventoryWatch(options.inventory, store)
    check_addresses(watch.current(), checked)
    state = Path("/run/plasmaboot-pxe")  # shown as a placeholder; a run makes its own
    hosts = render_hosts(list(watch.current().machines.values()), options.proxy)
    config = render(checked.dnsmasq_config(state))
    return f"{config}\n# --- {state}/hosts ---\n{hosts}"


@contextmanager
def state_dir() -> Iterator[Path]:
    """A private directory for this run (config, hosts, leases, the TFTP root)."""
    path = Path(tempfile.mkdtemp(prefix="plasmaboot-pxe-"))
    os.chmod(path, 0o755)  # dnsmasq's own user reads the TFTP root below it
    try:
        check_enterable(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_enterable(path: Path) -> None:
    """dnsmasq drops root before serving TFTP: every directory above its TFTP root must let
    others through, or dnsmasq fails after the server has started."""
    for directory in (path, *path.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise UserError(
                f"TMPDIR: {directory} is not searchable by other users, so dnsmasq (which "
                "drops root) cannot read the TFTP root below it",
                hint="run with TMPDIR=/tmp (or another directory every user may enter)",
            )


def run_pxe_server(
    options: PxeOptions,
    store: ProfileStore,
    announce: Callable[[str], None],
    stop: threading.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set); WorkError if dnsmasq dies."""
    checked = plan(options)
    watch = InventoryWatch(options.inventory, store)
    check_addresses(watch.current(), checked)
    stop = stop or install_stop_signals()
    with state_dir() as state:
        config = checked.dnsmasq_config(state)
        prepare_tftp_root(state / "tftp", checked.loaders)
        write_hosts(Path(config.hosts_file), watch.current(), options.proxy)
        (state / "dnsmasq.conf").write_text(render(config))
        address = str(checked.address.ip)
        server = ServerThread(
            options.root,
            host=address,
            port=options.http_port,
            inventory=watch,
            leases=Path(config.lease_file),  # a machine's lease binds its host-key token
            token_ttl=options.token_ttl,
        )
        with server, start_dnsmasq(state / "dnsmasq.conf") as dnsmasq:
            mode = "proxyDHCP" if options.proxy else f"DHCP {options.dhcp_range}"
            announce(
                f"pxe-server on {options.interface} ({checked.address}): {mode}, TFTP "
                f"{BIOS_LOADER}/{UEFI_LOADER}, {checked.boot_url}; "
                f"{len(watch.current().machines)} machines from {options.inventory}"
            )
            supervise(dnsmasq, watch, Path(config.hosts_file), checked, stop)
    announce("stopped")


def start_dnsmasq(config: Path) -> Background:
    # dnsmasq logs to stderr in the foreground: its lines (offers, ignored MACs, TFTP
    # transfers) are part of the server's own output
    argv = [DNSMASQ, "--keep-in-foreground", f"--conf-file={config}", "--log-facility=-"]
    return start([*argv, "--pid-file="], stdout=2)


def supervise(
    dnsmasq: Background, watch: InventoryWatch, hosts: Path, checked: PxePlan, stop: threading.Event
) -> None:
    proxy = checked.options.proxy
    digest = watch.current().digest
    while not stop.wait(WATCH_INTERVAL):
        if not dnsmasq.running():
            raise dnsmasq_stopped(dnsmasq.returncode)
        inventory = watch.current()
        if inventory.digest != digest:
            digest = inventory.digest
            try:
                check_addresses(inventory, checked)
            except UserError as exc:
                watch.log.warning("inventory not applied to DHCP: %s", exc.message)
                continue
            write_hosts(hosts, inventory, proxy)
            os.kill(dnsmasq.pid, signal.SIGHUP)  # dnsmasq re-reads dhcp-hostsfile


def dnsmasq_stopped(code: int | None) -> WorkError:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return WorkError(
            f"dnsmasq was killed by {name}", hint="something outside plasmaboot stopped it"
        )
    return WorkError(f"dnsmasq exited with code {code}", hint="its last lines above say why")


def install_stop_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop
