"""The checks of a booted node over SSH, against what it was built from (manifest.json and
its resolved profile): kernel command line, tools, key-only SSH, systemd, services and
their limits, sysctls, modules, nixos-anywhere prerequisites, device nodes, free memory
and per-boot host keys; booted through pxe-server, also the host name the inventory gave
it and the firmware it booted under. Each check's detail says what was seen."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from plasmaboot.artifacts.layout import STATIC_NODES
from plasmaboot.artifacts.manifest import Manifest
from plasmaboot.boot.ssh import Ssh
from plasmaboot.catalog import native_package_names, package_commands
from plasmaboot.checks import Check, failed, judged, passed
from plasmaboot.errors import WorkError
from plasmaboot.profiles.model import NetworkSection, Profile, ResolvedService

SETTLE_TIMEOUT = 180  # systemctl is-system-running --wait
# Room left for an operator (or nixos-anywhere) after boot: 256 MiB; on a machine the kernel
# gives less than 512 MiB (a 384 MiB node, which keeps its ~115 MiB root image in RAM and
# cannot kexec an installer anyway; docs/benchmarks.md, "#16"), 128 MiB for a shell and tools.
MIN_AVAILABLE_MIB = 256
SMALL_MACHINE_MIB = 512
SMALL_MACHINE_AVAILABLE_MIB = 128

# Modules for one CPU vendor's virtualization: they load only where the CPU has the flag.
CPU_FLAG_MODULES = {"kvm_intel": "vmx", "kvm_amd": "svm"}

NIXOS_ANYWHERE_PROBES = {
    "tar": "tar --version",
    "cpio": "cpio --version",
    "setsid --wait": "setsid --wait true",
    "kexec": "kexec --version",
}

# Device nodes whose modules load on first open (/dev/fuse, /dev/net/tun, ...): kmod's
# list, made at build time in Debian images (/etc) or at boot by kmod-static-nodes (/run).
# Every node it names must be a device once the node has booted.
STATIC_NODE_LISTS = (f"/{STATIC_NODES}", "/run/tmpfiles.d/static-nodes.conf")
DEVICE_NODES_SCRIPT = f"""\
for list in {" ".join(STATIC_NODE_LISTS)}; do [ -s "$list" ] && break; done
echo "list $list"
awk '$1 == "c!" || $1 == "b!" {{print substr($1, 1, 1), $2}}' "$list" 2>/dev/null |
while read -r kind node; do
    test "-$kind" "$node" && echo "ok $node" || echo "missing $node"
done
"""

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
AUTH_METHODS = re.compile(r"Authentications that can continue: (\S+)")


def check_cmdline(ssh: Ssh, params: list[str]) -> Check:
    cmdline = ssh.output("cat /proc/cmdline").split()
    missing = [p for p in params if p not in cmdline]
    if missing:
        return failed("kernel command line", f"missing: {' '.join(missing)}")
    return passed("kernel command line", " ".join(params))


def promised_commands(
    packages: list[str], unavailable: set[str]
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Commands the profile's packages promise (alternatives per package), and packages no
    command is known for."""
    commands = package_commands()
    promised: dict[str, tuple[str, ...]] = {}
    unknown: list[str] = []
    for package in packages:
        if package in unavailable:
            continue
        if package in commands:
            promised[package] = commands[package]
        else:
            unknown.append(package)
    return promised, unknown


def check_tools(ssh: Ssh, profile: Profile, backend: str) -> Check:
    unavailable = set(native_package_names(backend, profile.packages)[1])
    promised, unknown = promised_commands(profile.packages, unavailable)
    names = sorted({command for alternatives in promised.values() for command in alternatives})
    script = (
        f'for c in {" ".join(names)}; do command -v "$c" >/dev/null 2>&1 && echo "$c"; done; true'
    )
    found = set(ssh.output(script).split())
    missing = [
        f"{'|'.join(alternatives)} ({package})"
        for package, alternatives in promised.items()
        if not found.intersection(alternatives)
    ]
    if missing:
        return failed("tools on PATH", f"missing: {', '.join(missing)}")
    detail = f"{len(promised)} commands found"
    if unknown:
        detail += f"; not checked (no command known): {', '.join(unknown)}"
    if unavailable & set(profile.packages):
        detail += f"; not on {backend}: {', '.join(sorted(unavailable & set(profile.packages)))}"
    return passed("tools on PATH", detail)


def check_password_refused(ssh: Ssh) -> Check:
    code, out = ssh.password_probe()
    offered: set[str] = set()
    for match in AUTH_METHODS.finditer(out):
        offered.update(match.group(1).split(","))
    name = "password login refused"
    if code == 0:
        return failed(name, "a login without a key succeeded")
    if not offered:
        last = out.strip().splitlines()[-1:] or ["no output"]
        return failed(name, f"server offered no methods: {last[0]}")
    if offered != {"publickey"}:
        return failed(name, f"server offers: {','.join(sorted(offered))}")
    return passed(name, "server offers publickey only")


def check_systemd(ssh: Ssh) -> list[Check]:
    _, state = ssh.run(
        f"timeout {SETTLE_TIMEOUT} systemctl is-system-running --wait",
        timeout=SETTLE_TIMEOUT + 30,
    )
    state = state.strip().splitlines()[-1] if state.strip() else "(no answer)"
    listed = ssh.output("systemctl --failed --no-legend --plain").strip()
    units = [line.split()[0] for line in listed.splitlines() if line.strip()]
    return [
        judged("systemd is running", state == "running", state),
        judged(
            "no failed units",
            not units,
            ", ".join(units) if units else "systemctl --failed is empty",
        ),
    ]


def memory_bytes(value: str) -> str:
    """A MemoryMax= setting as `systemctl show` prints it: 512M -> 536870912."""
    if value == "infinity":
        return "infinity"
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if value[-1] in units:
        return str(int(value[:-1]) * units[value[-1]])
    return value


def cpu_quota_timespan(value: str) -> str:
    """A CPUQuota= percentage as `systemctl show` prints CPUQuotaPerSecUSec: 50% -> 500ms."""
    usec = int(value.rstrip("%")) * 10_000
    seconds, rest_ms = divmod(usec // 1000, 1000)
    parts = ([f"{seconds}s"] if seconds else []) + ([f"{rest_ms}ms"] if rest_ms else [])
    return " ".join(parts) or "0"


def parse_show_blocks(text: str) -> list[dict[str, str]]:
    """`systemctl show` of several units: blocks of key=value separated by blank lines."""
    blocks: list[dict[str, str]] = []
    for raw in text.strip().split("\n\n"):
        block = dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)
        blocks.append(block)
    return blocks


def expected_unit_properties(service: ResolvedService) -> dict[str, str]:
    """What `systemctl show` must print for a service the profile describes."""
    expected = {
        "LoadState": "loaded",
        "UnitFileState": "enabled" if service.enable else "disabled",
    }
    if service.enable:
        expected["ActiveState"] = "active"
    if service.memory_max:
        expected["MemoryMax"] = memory_bytes(service.memory_max)
    if service.cpu_quota:
        expected["CPUQuotaPerSecUSec"] = cpu_quota_timespan(service.cpu_quota)
    return expected


def check_services(ssh: Ssh, services: Mapping[str, ResolvedService]) -> list[Check]:
    if not services:
        return []
    units = [f"{name}.service" for name in services]
    props = "-p Id -p LoadState -p UnitFileState -p ActiveState -p MemoryMax -p CPUQuotaPerSecUSec"
    shown = {
        b.get("Id", ""): b
        for b in parse_show_blocks(ssh.output(f"systemctl show {props} {' '.join(units)}"))
    }
    checks = []
    for (name, service), unit in zip(services.items(), units, strict=True):
        seen = shown.get(unit, {})
        expected = expected_unit_properties(service)
        wrong = [
            f"{key}={seen.get(key, '?')} (want {want})"
            for key, want in expected.items()
            if seen.get(key) != want
        ]
        detail = "; ".join(wrong) if wrong else " ".join(f"{k}={v}" for k, v in expected.items())
        checks.append(judged(f"service {name}", not wrong, detail))
    return checks


# TCP and UDP sockets bound to listen, numeric, no header: what could answer the network.
LISTENING_SCRIPT = "ss -H -l -n -t -u"
SSH_PORT = 22
# The DHCP clients' sockets (networkd renews its lease on one): clients, not servers.
DHCP_CLIENT_PORTS = frozenset({("udp", 68), ("udp", 546)})


@dataclass(frozen=True)
class Listener:
    """One listening socket: `tcp 0.0.0.0 22`."""

    protocol: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.protocol}"

    @property
    def on_loopback(self) -> bool:
        """Reachable from the node only (127.0.0.0/8, ::1): not a listener on the network."""
        try:
            return ipaddress.ip_address(self.address).is_loopback
        except ValueError:  # "*", a wildcard
            return False


def parse_listeners(out: str) -> list[Listener]:
    """`ss -H -l -n -t -u`: `tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*`, `udp UNCONN 0 0
    127.0.0.53%lo:53 0.0.0.0:*`, `tcp LISTEN 0 128 [::]:22 [::]:*`."""
    listeners: list[Listener] = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] not in {"tcp", "udp"}:
            continue
        host, _, port = fields[4].rpartition(":")
        host = host.partition("%")[0].removeprefix("[").removesuffix("]")
        if port.isdigit():
            listeners.append(Listener(fields[0], host, int(port)))
    return listeners


def judge_listeners(listeners: list[Listener], services: Mapping[str, ResolvedService]) -> Check:
    """Nothing but sshd and the enabled services listens on the network, and every port of
    every enabled service does (TCP or UDP, as the service chooses)."""
    owners: dict[int, str] = {SSH_PORT: "sshd"}
    for service in services.values():
        if service.enable:
            owners.update({port: service.name for port in service.ports.values()})
    on_network = [item for item in listeners if not item.on_loopback]
    unexpected = sorted(
        {
            str(item)
            for item in on_network
            if item.port not in owners and (item.protocol, item.port) not in DHCP_CLIENT_PORTS
        }
    )
    bound = {item.port for item in on_network}
    silent = [f"{owner} {port}" for port, owner in sorted(owners.items()) if port not in bound]
    problems = ([f"unexpected: {', '.join(unexpected)}"] if unexpected else []) + (
        [f"not listening: {', '.join(silent)}"] if silent else []
    )
    if problems:
        return failed("listening sockets", "; ".join(problems))
    seen = sorted({(item.port, item.protocol) for item in on_network if item.port in owners})
    return passed(
        "listening sockets",
        ", ".join(f"{owners[port]} {port}/{protocol}" for port, protocol in seen),
    )


def check_listeners(ssh: Ssh, services: Mapping[str, ResolvedService]) -> Check:
    return judge_listeners(parse_listeners(ssh.output(LISTENING_SCRIPT)), services)


def check_sysctls(ssh: Ssh, sysctl: Mapping[str, int | str]) -> list[Check]:
    if not sysctl:
        return []
    script = "; ".join(f'printf "%s=%s\\n" {key} "$(sysctl -n {key} 2>&1)"' for key in sysctl)
    seen = dict(line.split("=", 1) for line in ssh.output(script).splitlines() if "=" in line)
    checks = []
    for key, want in sysctl.items():
        got = " ".join(seen.get(key, "?").split())
        wanted = " ".join(str(want).split())
        checks.append(judged(f"sysctl {key}", got == wanted, f"{got} (want {wanted})"))
    return checks


# "<nic> <mtu>" for every NIC with a device behind it: the physical ones DHCP configures
NIC_MTU_SCRIPT = (
    'for nic in /sys/class/net/*; do [ -e "$nic/device" ] && echo "${nic##*/} $(cat "$nic/mtu")";'
    " done; true"
)


def check_mtu(ssh: Ssh, network: NetworkSection) -> list[Check]:
    """The profile's network.mtu on the NICs DHCP configures (nothing to check when the
    profile leaves the MTU to the NIC, or has no DHCP)."""
    if network.mtu is None or not network.dhcp:
        return []
    return [judge_mtu(ssh.output(NIC_MTU_SCRIPT), network.mtu)]


def judge_mtu(out: str, mtu: int) -> Check:
    """NIC_MTU_SCRIPT's output against the profile's network.mtu."""
    nics = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    wrong = {nic: got for nic, got in nics.items() if got != str(mtu)}
    if not nics:
        detail = "no NIC with a device in /sys/class/net"
    elif wrong:
        detail = f"{', '.join(f'{nic} {got}' for nic, got in wrong.items())} (want {mtu})"
    else:
        detail = ", ".join(f"{nic} {got}" for nic, got in nics.items())
    return judged("network mtu", bool(nics) and not wrong, detail)


def module_name(text: str) -> str:
    return text.rsplit("/", 1)[-1].removesuffix(".ko").replace("-", "_")


def check_modules(ssh: Ssh, modules: list[str]) -> list[Check]:
    if not modules:
        return []
    out = ssh.output(
        "cat /proc/modules; echo @@; cat /lib/modules/$(uname -r)/modules.builtin 2>/dev/null;"
        " echo @@; grep -owE 'vmx|svm' /proc/cpuinfo | sort -u"
    )
    loaded_text, builtin_text, flags_text = [*out.split("@@\n"), "", ""][:3]
    loaded = {line.split()[0] for line in loaded_text.splitlines() if line.strip()}
    builtin = {module_name(line.strip()) for line in builtin_text.splitlines() if line.strip()}
    flags = set(flags_text.split())
    checks = []
    for module in modules:
        name = module_name(module)
        row = f"module {module}"
        if name in loaded:
            checks.append(passed(row, "loaded"))
        elif name in builtin:
            checks.append(passed(row, "built into the kernel"))
        elif name in CPU_FLAG_MODULES and CPU_FLAG_MODULES[name] not in flags:
            checks.append(passed(row, f"not applicable: CPU has no {CPU_FLAG_MODULES[name]}"))
        else:
            checks.append(failed(row, "not loaded"))
    return checks


def check_nixos_anywhere(ssh: Ssh) -> Check:
    script = "; ".join(
        f'{cmd} >/dev/null 2>&1 && echo "ok {name}"' for name, cmd in NIXOS_ANYWHERE_PROBES.items()
    )
    _, out = ssh.run(script)
    ok = {line[3:] for line in out.splitlines() if line.startswith("ok ")}
    missing = [name for name in NIXOS_ANYWHERE_PROBES if name not in ok]
    detail = f"missing: {', '.join(missing)}" if missing else ", ".join(NIXOS_ANYWHERE_PROBES)
    return judged("nixos-anywhere prerequisites", not missing, detail)


def check_device_nodes(ssh: Ssh) -> Check:
    _, out = ssh.run(DEVICE_NODES_SCRIPT)
    return judge_device_nodes(out)


def judge_device_nodes(out: str) -> Check:
    """DEVICE_NODES_SCRIPT's output: the list it read, then "ok NODE" or "missing NODE"."""
    lines = out.splitlines()
    source = next((line[5:] for line in lines if line.startswith("list ")), "no list")
    ok = [line[3:] for line in lines if line.startswith("ok ")]
    missing = [line[8:] for line in lines if line.startswith("missing ")]
    if missing:
        detail = f"not devices: {', '.join(missing)} (listed in {source})"
    elif not ok:
        detail = f"no device nodes listed (looked in {', '.join(STATIC_NODE_LISTS)})"
    else:
        detail = f"{len(ok)} nodes of {source}, e.g. {', '.join(ok[:4])}"
    return judged("device nodes", bool(ok) and not missing, detail)


def read_memory(ssh: Ssh) -> dict[str, int]:
    out = ssh.output("grep -E '^(MemTotal|MemAvailable):' /proc/meminfo")
    fields = {line.split(":")[0]: int(line.split()[1]) for line in out.splitlines() if ":" in line}
    return {
        "mem_total_mib": fields.get("MemTotal", 0) // 1024,
        "mem_available_mib": fields.get("MemAvailable", 0) // 1024,
    }


def check_memory(memory: Mapping[str, int]) -> Check:
    available, total = memory["mem_available_mib"], memory["mem_total_mib"]
    need = MIN_AVAILABLE_MIB if total >= SMALL_MACHINE_MIB else SMALL_MACHINE_AVAILABLE_MIB
    return judged(
        "free memory",
        available >= need,
        f"MemAvailable {available} MiB of {total} MiB (need {need} MiB)",
    )


def check_hostname(ssh: Ssh, expected: str) -> Check:
    """The host name the inventory gave the machine (systemd.hostname= on its kernel line)."""
    seen = ssh.output("hostname").strip()
    return judged("hostname", seen == expected, f"{seen} (the inventory's: {expected})")


# /sys/firmware/efi exists only when the kernel was started by UEFI firmware
FIRMWARE_SCRIPT = "test -d /sys/firmware/efi && echo uefi || echo bios"


def check_firmware(ssh: Ssh, expected: str) -> Check:
    seen = ssh.output(FIRMWARE_SCRIPT).strip()
    return judged("firmware", seen == expected, f"booted under {seen} (want {expected})")


def check_host_keys(keys: list[str | None]) -> Check:
    name = f"host keys differ across {len(keys)} boots"
    if any(key is None for key in keys):
        return failed(name, "a boot gave no host key")
    fingerprints = ", ".join(str(key).split()[1][-12:] for key in keys)
    return judged(name, len(set(keys)) == len(keys), f"{HOST_KEY}: {fingerprints}")


def read_host_key(ssh: Ssh) -> str | None:
    code, out = ssh.run(f"cat {HOST_KEY}")
    return out.strip() if code == 0 and out.strip() else None


def guest_checks(
    ssh: Ssh,
    manifest: Manifest,
    hostname: str | None = None,
    firmware: str | None = None,
) -> tuple[list[Check], dict[str, int]]:
    """Everything checked on the first boot, against the profile the image was built from
    (and, when given, the inventory's host name and the firmware chosen), in the order a
    reader expects. A check whose SSH command fails becomes a failed row of its own; the
    others still run."""
    profile = manifest.resolved_profile
    memory: dict[str, int] = {}

    def memory_check() -> Check:
        memory.update(read_memory(ssh))
        return check_memory(memory)

    groups: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("kernel command line", lambda: check_cmdline(ssh, manifest.kernel_params)),
        ("tools on PATH", lambda: check_tools(ssh, profile, manifest.backend)),
        ("password login refused", lambda: check_password_refused(ssh)),
        ("systemd", lambda: check_systemd(ssh)),
        ("services", lambda: check_services(ssh, profile.services)),
        ("listening sockets", lambda: check_listeners(ssh, profile.services)),
        ("sysctls", lambda: check_sysctls(ssh, profile.sysctl)),
        ("kernel modules", lambda: check_modules(ssh, profile.kernel.modules)),
        ("network mtu", lambda: check_mtu(ssh, profile.network)),
        ("nixos-anywhere prerequisites", lambda: check_nixos_anywhere(ssh)),
        ("device nodes", lambda: check_device_nodes(ssh)),
        ("free memory", memory_check),
    ]
    if hostname is not None:
        groups.append(("hostname", lambda: check_hostname(ssh, hostname)))
    if firmware is not None:
        groups.append(("firmware", lambda: check_firmware(ssh, firmware)))
    checks: list[Check] = []
    for name, run_check in groups:
        try:
            result = run_check()
        except WorkError as exc:
            checks.append(failed(name, exc.message))
            continue
        checks.extend(result if isinstance(result, list) else [result])
    return checks, memory
