"""boot-test: PXE-boot a built image in QEMU, log in over SSH and check that the running
node is what its profile promised (kernel command line, tools, key-only SSH, systemd,
services and their limits, sysctls, modules, nixos-anywhere prerequisites, per-boot host
keys). The result is a table of checks and a JSON report.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.table import Table

from plasmaboot.artifacts.layout import BOOT_FILES, MANIFEST
from plasmaboot.artifacts.manifest import Manifest, read_manifest
from plasmaboot.boot.qemu import (
    QEMU,
    Accelerator,
    Nic,
    ProbeResult,
    PxeVm,
    VmConfig,
    cpu_model,
    cpu_needs_kvm,
    free_port,
    kvm_usable,
    probe_accelerator,
    require_cpu_model,
    require_rom,
)
from plasmaboot.catalog import native_package_names, package_commands
from plasmaboot.errors import UserError, WorkError
from plasmaboot.image.backends.debian.hook import STATIC_NODES
from plasmaboot.log import Log
from plasmaboot.profiles.model import NetworkSection, Profile
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.run import require_tool, run
from plasmaboot.serve.app import ServerThread

DEFAULT_MEMORY_MIB = 2048
BOOT_TIMEOUT = {Accelerator.TCG: 300.0, Accelerator.KVM: 120.0}
SETTLE_TIMEOUT = 180  # systemctl is-system-running --wait
# Once the guest's DHCP lease is seen, SSH is probed this often: a probe is then answered
# at once (a reset while sshd is not listening yet), so this is the resolution of the
# PXE-to-SSH figure.
SSH_POLL_INTERVAL = 0.25
# Before the lease a probe is answered by nobody: QEMU holds it inside slirp, and it
# reaches sshd seconds later. So probe only every few seconds (only a guest whose lease
# the capture misses needs these), and drop the probe as soon as the lease shows.
SSH_BLIND_PROBE_INTERVAL = 3.0
SSH_BLIND_PROBE_WAIT = 3.0
# After the lease: wait SSH_FIRST_GREETING_WAIT for an answer, doubling on each silent
# probe (the address may not be set yet); once the guest has reset a probe, its TCP stack
# is up and the greeting alone can take seconds (sshd forks and re-executes itself per
# connection, slowly under TCG): wait for it rather than start another sshd.
SSH_FIRST_GREETING_WAIT = 1.0
SSH_GREETING_TIMEOUT = 15.0
GREETING_SLICE = 0.2
SSH_COMMAND_TIMEOUT = 120.0
MIN_AVAILABLE_MIB = 256  # room left for an operator (or nixos-anywhere) after boot

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


# --------------------------------------------------------------------------------------
# The report


class Check(BaseModel):
    name: str
    passed: bool
    detail: str


class BootRecord(BaseModel):
    index: int
    ssh_port: int
    events: dict[str, float]  # seconds since QEMU started
    phases: dict[str, float]
    host_key: str | None
    logs: dict[str, str]


class Report(BaseModel):
    label: str
    profile: str
    variant: str | None
    accelerator: str
    accelerator_reason: str
    cpu: str
    nic: str
    memory_mib: int
    qemu_command: list[str]
    boots: list[BootRecord]
    memory: dict[str, int]
    checks: list[Check]
    passed: bool
    report_path: str


def write_report(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    temp.replace(path)


def render_table(report: Report) -> Table:
    table = Table(title=f"boot-test {report.label} ({report.accelerator})")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        mark = "[green]pass[/]" if check.passed else "[bold red]FAIL[/]"
        table.add_row(check.name, mark, check.detail)
    return table


# --------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True)
class BootTestOptions:
    label: str
    artifacts: Path
    identity: Path
    memory_mib: int = DEFAULT_MEMORY_MIB
    nic: Nic = Nic.VIRTIO
    cpu: str | None = None  # QEMU CPU model; None: host under KVM, qemu64 under TCG
    boots: int = 1
    report: Path | None = None
    timeout: float | None = None
    profiles_dirs: tuple[Path, ...] = ()

    @property
    def set_dir(self) -> Path:
        return self.artifacts / self.label

    @property
    def report_path(self) -> Path:
        return self.report or self.artifacts / f"boot-test-{self.label}.json"

    @property
    def workdir(self) -> Path:
        """Logs of the run (serial consoles, firmware, QEMU, access log), beside the report."""
        return self.report_path.parent / f"boot-test-{self.label}"


def validate(options: BootTestOptions) -> tuple[Manifest, Profile]:
    """Everything that can be wrong with the input, checked before QEMU starts."""
    if not options.set_dir.is_dir():
        found = (
            sorted(p.name for p in options.artifacts.iterdir() if (p / MANIFEST).is_file())
            if (options.artifacts.is_dir())
            else []
        )
        raise UserError(
            f"{options.set_dir}: no artifact set for {options.label!r}",
            hint=f"build it first, or pick one of: {', '.join(found)}"
            if found
            else "build it first (plasmaboot build --profile ...) or pass --artifacts DIR",
        )
    for name in (*BOOT_FILES, MANIFEST):
        if not (options.set_dir / name).is_file():
            raise UserError(
                f"{options.set_dir / name}: missing; an artifact set needs "
                f"{', '.join((*BOOT_FILES, MANIFEST))}",
                hint="rebuild the image",
            )
    try:
        manifest = read_manifest(options.set_dir)
    except (ValidationError, ValueError) as exc:
        raise UserError(
            f"{options.set_dir / MANIFEST}: not a valid manifest ({exc.__class__.__name__})",
            hint="rebuild the image",
        ) from exc
    if not options.identity.is_file():
        raise UserError(
            f"--identity {options.identity}: no such private key file",
            hint="pass the private key whose public key was built into the image",
        )
    if options.boots < 1:
        raise UserError(f"--boots {options.boots}: expected 1 or more")
    require_tool(QEMU)
    require_tool("ssh")
    require_rom(options.nic)
    if options.cpu is not None:
        require_cpu_model(options.cpu)
    if cpu_needs_kvm(options.cpu) and (no_kvm := kvm_usable()) is not None:
        raise UserError(
            f"--cpu {options.cpu}: the host CPU model needs KVM, and here there is {no_kvm}",
            hint="leave --cpu out (qemu64 under TCG) or pick a model such as max",
        )
    profile = ProfileStore(options.profiles_dirs).resolve(manifest.profile, manifest.variant)
    return manifest, profile


# --------------------------------------------------------------------------------------
# SSH to the guest


class Greeting(StrEnum):
    """What came back on the SSH port (see Ssh.greeting)."""

    BANNER = "banner"
    CLOSED = "closed"
    SILENT = "silent"


@dataclass(frozen=True)
class Ssh:
    port: int
    identity: Path
    log: Log | None = None

    def base(self) -> list[str]:
        return [
            "ssh",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5",
            "-p", str(self.port),
        ]  # fmt: skip

    def argv(self, command: str) -> list[str]:
        return [
            *self.base(),
            "-i", str(self.identity),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "root@127.0.0.1",
            command,
        ]  # fmt: skip

    def run(self, command: str, timeout: float = SSH_COMMAND_TIMEOUT) -> tuple[int, str]:
        try:
            proc = run(self.argv(command), log=self.log, check=False, timeout=timeout)
        except WorkError as exc:
            return 255, exc.message
        return proc.returncode, proc.stdout.decode("utf-8", "replace")

    def output(self, command: str, timeout: float = SSH_COMMAND_TIMEOUT) -> str:
        code, out = self.run(command, timeout)
        if code != 0:
            raise WorkError(f"over SSH, `{command}` failed with exit code {code}: {out.strip()}")
        return out

    def greeting(self, timeout: float, give_up: Callable[[], bool] | None = None) -> Greeting:
        """What the SSH port says within `timeout` s: the server's banner; a closed
        connection (the guest's TCP stack reset it: nothing listens yet); or silence. QEMU
        accepts the connection itself whatever the guest does, so only what comes back
        tells. `give_up` is asked every GREETING_SLICE s while the port is silent."""
        deadline = time.monotonic() + timeout
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.settimeout(GREETING_SLICE)
                while True:
                    try:
                        data = sock.recv(64)
                    except TimeoutError:
                        if time.monotonic() >= deadline or (give_up is not None and give_up()):
                            return Greeting.SILENT
                        continue
                    return Greeting.BANNER if data.startswith(b"SSH-") else Greeting.CLOSED
        except OSError:
            return Greeting.CLOSED

    def login(self) -> tuple[bool, str]:
        code, out = self.run("true", timeout=60)
        return code == 0, out.strip()

    def password_probe(self) -> tuple[int, str]:
        """Try to log in with a password only, verbosely: what does the server offer?"""
        argv = [
            *self.base(),
            "-v",
            "-o", "BatchMode=yes",
            "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no",
            "root@127.0.0.1",
            "true",
        ]  # fmt: skip
        try:
            proc = run(argv, log=self.log, check=False, timeout=60)
        except WorkError as exc:
            return 255, exc.message
        return proc.returncode, proc.stdout.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------
# The checks: each returns rows; a row's detail says what was seen.


def check_cmdline(ssh: Ssh, params: list[str]) -> Check:
    cmdline = ssh.output("cat /proc/cmdline").split()
    missing = [p for p in params if p not in cmdline]
    if missing:
        return Check(
            name="kernel command line", passed=False, detail=f"missing: {' '.join(missing)}"
        )
    return Check(name="kernel command line", passed=True, detail=" ".join(params))


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
    present = len(promised) - len(missing)
    detail = f"{present} commands found"
    if unknown:
        detail += f"; not checked (no command known): {', '.join(unknown)}"
    if unavailable & set(profile.packages):
        detail += f"; not on {backend}: {', '.join(sorted(unavailable & set(profile.packages)))}"
    if missing:
        return Check(name="tools on PATH", passed=False, detail=f"missing: {', '.join(missing)}")
    return Check(name="tools on PATH", passed=True, detail=detail)


AUTH_METHODS = re.compile(r"Authentications that can continue: (\S+)")


def check_password_refused(ssh: Ssh) -> Check:
    code, out = ssh.password_probe()
    offered: set[str] = set()
    for match in AUTH_METHODS.finditer(out):
        offered.update(match.group(1).split(","))
    name = "password login refused"
    if code == 0:
        return Check(name=name, passed=False, detail="a login without a key succeeded")
    if not offered:
        last = out.strip().splitlines()[-1:] or ["no output"]
        return Check(name=name, passed=False, detail=f"server offered no methods: {last[0]}")
    if offered != {"publickey"}:
        return Check(name=name, passed=False, detail=f"server offers: {','.join(sorted(offered))}")
    return Check(name=name, passed=True, detail="server offers publickey only")


def check_systemd(ssh: Ssh) -> list[Check]:
    _, state = ssh.run(
        f"timeout {SETTLE_TIMEOUT} systemctl is-system-running --wait",
        timeout=SETTLE_TIMEOUT + 30,
    )
    state = state.strip().splitlines()[-1] if state.strip() else "(no answer)"
    failed = ssh.output("systemctl --failed --no-legend --plain").strip()
    units = [line.split()[0] for line in failed.splitlines() if line.strip()]
    return [
        Check(name="systemd is running", passed=state == "running", detail=state),
        Check(
            name="no failed units",
            passed=not units,
            detail=", ".join(units) if units else "systemctl --failed is empty",
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


def check_services(ssh: Ssh, services: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    if not services:
        return []
    units = [f"{name}.service" for name in services]
    props = "-p Id -p LoadState -p UnitFileState -p MemoryMax -p CPUQuotaPerSecUSec"
    shown = {
        b.get("Id", ""): b
        for b in parse_show_blocks(ssh.output(f"systemctl show {props} {' '.join(units)}"))
    }
    checks = []
    for (name, spec), unit in zip(services.items(), units, strict=True):
        props_seen = shown.get(unit, {})
        expected = {
            "LoadState": "loaded",
            "UnitFileState": "enabled" if spec.get("enable") else "disabled",
        }
        if spec.get("memory_max"):
            expected["MemoryMax"] = memory_bytes(str(spec["memory_max"]))
        if spec.get("cpu_quota"):
            expected["CPUQuotaPerSecUSec"] = cpu_quota_timespan(str(spec["cpu_quota"]))
        wrong = [
            f"{key}={props_seen.get(key, '?')} (want {want})"
            for key, want in expected.items()
            if props_seen.get(key) != want
        ]
        detail = "; ".join(wrong) if wrong else " ".join(f"{k}={v}" for k, v in expected.items())
        checks.append(Check(name=f"service {name}", passed=not wrong, detail=detail))
    return checks


def check_sysctls(ssh: Ssh, sysctl: Mapping[str, int | str]) -> list[Check]:
    if not sysctl:
        return []
    script = "; ".join(f'printf "%s=%s\\n" {key} "$(sysctl -n {key} 2>&1)"' for key in sysctl)
    seen = dict(line.split("=", 1) for line in ssh.output(script).splitlines() if "=" in line)
    checks = []
    for key, want in sysctl.items():
        got = " ".join(seen.get(key, "?").split())
        wanted = " ".join(str(want).split())
        checks.append(
            Check(name=f"sysctl {key}", passed=got == wanted, detail=f"{got} (want {wanted})")
        )
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
    return Check(name="network mtu", passed=bool(nics) and not wrong, detail=detail)


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
        if name in loaded:
            checks.append(Check(name=f"module {module}", passed=True, detail="loaded"))
        elif name in builtin:
            checks.append(
                Check(name=f"module {module}", passed=True, detail="built into the kernel")
            )
        elif name in CPU_FLAG_MODULES and CPU_FLAG_MODULES[name] not in flags:
            flag = CPU_FLAG_MODULES[name]
            checks.append(
                Check(
                    name=f"module {module}",
                    passed=True,
                    detail=f"not applicable: CPU has no {flag}",
                )
            )
        else:
            checks.append(Check(name=f"module {module}", passed=False, detail="not loaded"))
    return checks


def check_nixos_anywhere(ssh: Ssh) -> Check:
    script = "; ".join(
        f'{cmd} >/dev/null 2>&1 && echo "ok {name}"' for name, cmd in NIXOS_ANYWHERE_PROBES.items()
    )
    _, out = ssh.run(script)
    ok = {line[3:] for line in out.splitlines() if line.startswith("ok ")}
    missing = [name for name in NIXOS_ANYWHERE_PROBES if name not in ok]
    detail = f"missing: {', '.join(missing)}" if missing else ", ".join(NIXOS_ANYWHERE_PROBES)
    return Check(name="nixos-anywhere prerequisites", passed=not missing, detail=detail)


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
    return Check(name="device nodes", passed=bool(ok) and not missing, detail=detail)


def read_memory(ssh: Ssh) -> dict[str, int]:
    out = ssh.output("grep -E '^(MemTotal|MemAvailable):' /proc/meminfo")
    fields = {line.split(":")[0]: int(line.split()[1]) for line in out.splitlines() if ":" in line}
    return {
        "mem_total_mib": fields.get("MemTotal", 0) // 1024,
        "mem_available_mib": fields.get("MemAvailable", 0) // 1024,
    }


def check_memory(memory: Mapping[str, int]) -> Check:
    available = memory["mem_available_mib"]
    return Check(
        name="free memory",
        passed=available >= MIN_AVAILABLE_MIB,
        detail=f"MemAvailable {available} MiB of {memory['mem_total_mib']} MiB"
        f" (need {MIN_AVAILABLE_MIB} MiB)",
    )


def check_host_keys(keys: list[str | None]) -> Check:
    name = f"host keys differ across {len(keys)} boots"
    if any(key is None for key in keys):
        return Check(name=name, passed=False, detail="a boot gave no host key")
    distinct = len(set(keys))
    fingerprints = ", ".join(str(key).split()[1][-12:] for key in keys)
    return Check(name=name, passed=distinct == len(keys), detail=f"{HOST_KEY}: {fingerprints}")


def guest_checks(
    ssh: Ssh, manifest: Manifest, profile: Profile
) -> tuple[list[Check], dict[str, int]]:
    """Everything checked on the first boot, in the order a reader expects. A check whose
    SSH command fails becomes a failed row of its own; the others still run."""
    memory: dict[str, int] = {}

    def memory_check() -> Check:
        memory.update(read_memory(ssh))
        return check_memory(memory)

    groups: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("kernel command line", lambda: check_cmdline(ssh, manifest.kernel_params)),
        ("tools on PATH", lambda: check_tools(ssh, profile, manifest.backend)),
        ("password login refused", lambda: check_password_refused(ssh)),
        ("systemd", lambda: check_systemd(ssh)),
        ("services", lambda: check_services(ssh, manifest.services)),
        ("sysctls", lambda: check_sysctls(ssh, profile.sysctl)),
        ("kernel modules", lambda: check_modules(ssh, profile.kernel.modules)),
        ("network mtu", lambda: check_mtu(ssh, profile.network)),
        ("nixos-anywhere prerequisites", lambda: check_nixos_anywhere(ssh)),
        ("device nodes", lambda: check_device_nodes(ssh)),
        ("free memory", memory_check),
    ]
    checks: list[Check] = []
    for name, run_check in groups:
        try:
            result = run_check()
        except WorkError as exc:
            checks.append(Check(name=name, passed=False, detail=exc.message))
            continue
        checks.extend(result if isinstance(result, list) else [result])
    return checks, memory


# --------------------------------------------------------------------------------------
# The run


def wait_for_ssh(vm: PxeVm, ssh: Ssh, timeout: float) -> None:
    """Until the SSH server greets: probed often once the guest has its address, and only
    now and then before (see SSH_BLIND_PROBE_INTERVAL)."""
    next_blind_probe = 0.0
    wait = SSH_FIRST_GREETING_WAIT

    def network_up() -> bool:
        return "network_up" in vm.watch.events

    def greeted() -> bool:
        nonlocal next_blind_probe, wait
        if not network_up():
            if time.monotonic() < next_blind_probe:
                return False
            next_blind_probe = time.monotonic() + SSH_BLIND_PROBE_INTERVAL
            return ssh.greeting(SSH_BLIND_PROBE_WAIT, give_up=network_up) is Greeting.BANNER
        answer = ssh.greeting(wait)
        if answer is Greeting.CLOSED:
            wait = SSH_GREETING_TIMEOUT
        elif answer is Greeting.SILENT:
            wait = min(2 * wait, SSH_GREETING_TIMEOUT)
        return answer is Greeting.BANNER

    vm.wait_until(greeted, timeout, "the SSH server to answer", SSH_POLL_INTERVAL)


def boot_check_name(index: int) -> str:
    return f"boot {index}: PXE to SSH"


def boot_once(
    index: int,
    options: BootTestOptions,
    probe: ProbeResult,
    http_port: int,
    access_log: Path,
    log: Log,
    identity: Path,
    on_ssh: Callable[[Ssh], None],
) -> tuple[BootRecord, Check, list[str]]:
    """One PXE boot until SSH answers; `on_ssh` runs while the guest is up."""
    config = VmConfig(
        workdir=options.workdir / f"boot{index}",
        label=options.label,
        http_port=http_port,
        ssh_port=free_port(),
        accelerator=probe.accelerator,
        memory_mib=options.memory_mib,
        nic=options.nic,
        cpu=options.cpu,
    )
    ssh = Ssh(config.ssh_port, identity, log)
    timeout = options.timeout or BOOT_TIMEOUT[probe.accelerator]
    host_key: str | None = None
    name = boot_check_name(index)
    with PxeVm(config, access_log=access_log, log=log) as vm:
        try:
            wait_for_ssh(vm, ssh, timeout)
        except WorkError as exc:
            check = Check(name=name, passed=False, detail=exc.message)
        else:
            vm.watch.mark("ssh_reachable")
            seconds = vm.watch.events["ssh_reachable"]
            logged_in, out = ssh.login()
            if logged_in:
                check = Check(name=name, passed=True, detail=f"SSH answered after {seconds:.0f}s")
                on_ssh(ssh)
                code, out = ssh.run(f"cat {HOST_KEY}")
                host_key = out.strip() if code == 0 and out.strip() else None
            else:
                detail = (
                    f"the SSH server answered after {seconds:.0f}s but refused the key "
                    f"{options.identity}: {out}"
                )
                check = Check(name=name, passed=False, detail=detail)
        record = BootRecord(
            index=index,
            ssh_port=config.ssh_port,
            events=vm.watch.events,
            phases=vm.watch.phases(),
            host_key=host_key,
            logs={
                "serial": str(config.serial_log),
                "firmware": str(config.firmware_log),
                "qemu": str(config.qemu_log),
            },
        )
    packets = vm.watch.packets
    if packets is not None and packets.unreadable is not None:
        log.info(f"{packets.unreadable}: SSH was probed without seeing the guest's lease")
    # The packet capture (~30 MB: every packet's headers, the initrd's included) has done
    # its job once SSH answered; a failed boot keeps it, to show what the guest sent.
    if check.passed:
        config.packet_log.unlink(missing_ok=True)
    else:
        record.logs["network"] = str(config.packet_log)
    return record, check, vm.argv


def kvm_gave_out(probe: ProbeResult, record: BootRecord, reached: Check) -> bool:
    """A KVM boot that failed before the kernel was even downloaded: KVM's fault."""
    return (
        probe.accelerator is Accelerator.KVM
        and not reached.passed
        and "kernel_fetched" not in record.events
    )


def private_copy(identity: Path, workdir: Path) -> Path:
    """ssh refuses a private key others can read (a shared or read-only copy often is):
    use a 0600 copy of it in the run's own directory."""
    copy = workdir / "identity"
    copy.touch(mode=0o600)
    copy.write_bytes(identity.read_bytes())
    return copy


def run_boot_test(
    options: BootTestOptions, announce: Callable[[str], None] | None = None
) -> Report:
    """Validate, boot `options.boots` times, check, write the JSON report, return it.
    `announce` hears one line once the input is valid and the boot starts."""
    manifest, profile = validate(options)
    if announce is not None:
        announce(f"booting {options.label} in QEMU (logs: {options.workdir}) ...")
    if options.workdir.exists():
        shutil.rmtree(options.workdir)
    options.workdir.mkdir(parents=True)
    identity = private_copy(options.identity, options.workdir)
    access_log = options.workdir / "access.log"
    checks: list[Check] = []
    boots: list[BootRecord] = []
    memory: dict[str, int] = {}
    argv: list[str] = []
    with Log(options.workdir / "boot-test.log", subject=options.label) as log:
        probe = probe_accelerator(options.workdir, log=log)
        log.info(f"accelerator: {probe.accelerator} ({probe.reason})")

        def first_boot_checks(ssh: Ssh) -> None:
            found, seen = guest_checks(ssh, manifest, profile)
            checks.extend(found)
            memory.update(seen)

        # /dev/kvm opened but KVM failed the probe: TCG cannot run the host CPU model
        blocked = cpu_needs_kvm(options.cpu) and probe.accelerator is not Accelerator.KVM
        if blocked:
            detail = f"--cpu {options.cpu} needs KVM, and KVM failed: {probe.reason}"
            checks.append(Check(name=boot_check_name(1), passed=False, detail=detail))
        with ServerThread(options.artifacts, access_log=access_log) as server:
            for index in range(1, (0 if blocked else options.boots) + 1):
                on_ssh = first_boot_checks if index == 1 else lambda ssh: None
                boot_args = (server.port, access_log, log, identity, on_ssh)
                record, reached, argv = boot_once(index, options, probe, *boot_args)
                if kvm_gave_out(probe, record, reached) and not cpu_needs_kvm(options.cpu):
                    # KVM passed the probe but the guest died before its kernel arrived:
                    # on these machines KVM can fail late in the firmware. Fall back to TCG.
                    probe = ProbeResult(
                        Accelerator.TCG,
                        f"KVM passed the probe but the guest stopped early "
                        f"({reached.detail.splitlines()[0]}); fell back to TCG",
                    )
                    log.info(f"accelerator: {probe.accelerator} ({probe.reason})")
                    shutil.rmtree(options.workdir / f"boot{index}", ignore_errors=True)
                    record, reached, argv = boot_once(index, options, probe, *boot_args)
                boots.append(record)
                checks.insert(index - 1, reached)
                if not reached.passed:
                    break
        if options.boots > 1 and len(boots) == options.boots:
            checks.append(check_host_keys([b.host_key for b in boots]))
    report = Report(
        label=options.label,
        profile=manifest.profile,
        variant=manifest.variant,
        accelerator=str(probe.accelerator),
        accelerator_reason=probe.reason,
        cpu=cpu_model(options.cpu, probe.accelerator),
        nic=str(options.nic),
        memory_mib=options.memory_mib,
        qemu_command=argv,
        boots=boots,
        memory=memory,
        checks=checks,
        passed=all(c.passed for c in checks),
        report_path=str(options.report_path),
    )
    write_report(report, options.report_path)
    return report


def report_json(report: Report) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2)
