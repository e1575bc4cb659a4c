"""QEMU for boot-test: probe the accelerator, PXE-boot a guest (SeaBIOS or OVMF) over
QEMU's user-mode network (its DHCP, TFTP boot.ipxe -> HTTP netboot.ipxe -> HTTP kernel and
initrd) or over a tap in a namespace where pxe-server answers (dnsmasq's DHCP and TFTP ->
HTTP), capture its serial console, watch its boot (boot.watch), and never leave a QEMU
process behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from plasmaboot.artifacts.layout import IPXE
from plasmaboot.boot.netns import Netns
from plasmaboot.boot.watch import PCAP_SNAPLEN, BootWatch
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats.ipxe import BOOT_SCRIPT as BOOTFILE
from plasmaboot.formats.ipxe import HEADER
from plasmaboot.log import Log
from plasmaboot.run import Background, run, start

QEMU = "qemu-system-x86_64"
# QEMU's user-mode network (slirp) maps this guest-side address to the host's loopback.
GUEST_HOST_ADDRESS = "10.0.2.2"
# SeaBIOS writes its progress to this I/O port; QEMU's isa-debugcon device captures it.
FIRMWARE_DEBUG_PORT = "0x402"
# SeaBIOS prints this when POST is done and it starts looking for a boot device: guest
# code really ran on the accelerator (a broken KVM hangs long before it).
FIRMWARE_BOOT_PHASE = b"enter handle_19"
# The guest's memory unless --memory says otherwise: room for the root squashfs in RAM.
DEFAULT_MEMORY_MIB = 2048
# Debian's ovmf: the firmware (read-only) and the template of its variable store (each boot
# writes a copy of its own).
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
PROBE_TIMEOUT = 4.0
WATCH_INTERVAL = 0.2
SERIAL_TAIL_LINES = 30


class Accelerator(StrEnum):
    KVM = "kvm"
    TCG = "tcg"

    def cpu(self) -> str:
        """The default CPU model. Under TCG it is QEMU's own qemu64, not "max": TCG runs
        wide vector instructions through slow helpers, and with "max" glibc picks its
        AVX2 string functions, the kernel its AVX crypto (and tests it at load) and udev
        loads those modules. The same image reached its DHCP lease ~4 s later by its own
        clock with "max" (docs/benchmarks.md); --cpu picks another model."""
        return "host" if self is Accelerator.KVM else "qemu64"


class Nic(StrEnum):
    VIRTIO = "virtio"
    E1000 = "e1000"

    def device(self) -> str:
        return {Nic.VIRTIO: "virtio-net-pci", Nic.E1000: "e1000"}[self]

    def rom(self) -> str:
        """The iPXE option ROM QEMU loads for this NIC by default (from ipxe-qemu).

        QEMU's own choice is used rather than `romfile=`: with an explicit romfile the
        virtio-net ROM is not run by SeaBIOS (QEMU 7.2, ipxe-qemu 2019).
        """
        return {Nic.VIRTIO: "efi-virtio.rom", Nic.E1000: "efi-e1000.rom"}[self]


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"

    def machine(self) -> str:
        """SeaBIOS on the i440FX machine like a plain server; OVMF on q35 (its own machine)."""
        return {Firmware.BIOS: "pc", Firmware.UEFI: "q35"}[self]


def require_ovmf() -> None:
    """UserError naming the package unless OVMF's firmware and variable store are here."""
    missing = [str(path) for path in (OVMF_CODE, OVMF_VARS) if not path.is_file()]
    if missing:
        raise UserError(
            f"--firmware uefi: OVMF is not installed ({', '.join(missing)} missing)",
            hint="install it: apt-get install ovmf (or run `make setup`)",
        )


@dataclass(frozen=True)
class UserNetwork:
    """QEMU's user-mode network: its own DHCP and TFTP (boot.ipxe), boot-test's HTTP server
    on the host's loopback, the guest's SSH forwarded to a loopback port."""

    http_port: int
    ssh_port: int


@dataclass(frozen=True)
class TapNetwork:
    """A tap on the bridge of a namespace (boot.netns), where pxe-server's dnsmasq answers
    the NIC's MAC; QEMU runs inside that namespace."""

    tap: str
    mac: str


GuestNetwork = UserNetwork | TapNetwork


@dataclass(frozen=True)
class ProbeResult:
    accelerator: Accelerator
    reason: str  # why this accelerator: for the report


def qemu_data_dirs(qemu: str = QEMU) -> list[Path]:
    """The directories QEMU searches for firmware and ROMs (`-L help`)."""
    listing = run([qemu, "-L", "help"], timeout=30, check=False).stdout.decode("utf-8", "replace")
    # run() merges stderr in: keep only the lines that are directories
    return [
        Path(line.strip()).resolve() for line in listing.splitlines() if Path(line.strip()).is_dir()
    ]


def require_rom(nic: Nic, qemu: str = QEMU) -> Path:
    """The NIC's iPXE ROM as QEMU will find it, or a UserError naming the package."""
    for directory in qemu_data_dirs(qemu):
        if (directory / nic.rom()).is_file():
            return directory / nic.rom()
    raise UserError(
        f"--nic {nic}: QEMU's PXE ROM {nic.rom()} was not found in its data directories",
        hint="install it: apt-get install ipxe-qemu (or run `make setup`)",
    )


def cpu_models(qemu: str = QEMU) -> set[str]:
    """The x86 CPU model names this QEMU knows (`-cpu help`)."""
    listing = run([qemu, "-cpu", "help"], timeout=30).stdout.decode("utf-8", "replace")
    return {
        fields[1]
        for line in listing.splitlines()
        if len(fields := line.split()) >= 2 and fields[0] == "x86"
    }


def cpu_model_name(model: str) -> str:
    """The model of a -cpu value: name[,+feature,-feature...]."""
    return model.split(",", 1)[0]


def require_cpu_model(model: str, qemu: str = QEMU) -> None:
    """A UserError unless `model` names a QEMU CPU model (its features are QEMU's to check)."""
    name = cpu_model_name(model)
    if name not in cpu_models(qemu):
        raise UserError(
            f"--cpu {model}: {name!r} is not a CPU model of {qemu}",
            hint=f"pick one from `{qemu} -cpu help` (qemu64, max, Skylake-Server, ...)",
        )


def cpu_needs_kvm(model: str | None) -> bool:
    """QEMU's "host" model passes the host CPU through: KVM only, TCG has no host CPU."""
    return model is not None and cpu_model_name(model) == "host"


def cpu_model(model: str | None, accelerator: Accelerator) -> str:
    """The -cpu a boot uses: the chosen model, else the accelerator's default."""
    return model or accelerator.cpu()


def start_qemu(argv: list[str], output: Path, log: Log | None = None) -> Background:
    """Start QEMU in the background; its own messages go to `output`."""
    return start(argv, log=log, stdout=output)


def wait_for_file_text(path: Path, needle: bytes, proc: Background, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_bytes():
            return True
        if proc.poll() is not None:
            return path.exists() and needle in path.read_bytes()
        time.sleep(0.05)
    return False


def kvm_usable() -> str | None:
    """None if /dev/kvm can be opened, else why not."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


def probe_accelerator(
    workdir: Path, qemu: str = QEMU, timeout: float = PROBE_TIMEOUT, log: Log | None = None
) -> ProbeResult:
    """KVM if it really runs guest code, else TCG. Starts SeaBIOS under KVM with no boot
    device and waits (at most `timeout` seconds) until it reaches its boot phase."""
    unusable = kvm_usable()
    if unusable is not None:
        return ProbeResult(Accelerator.TCG, f"KVM not available ({unusable})")
    workdir.mkdir(parents=True, exist_ok=True)
    firmware_log = workdir / "kvm-probe-firmware.log"
    firmware_log.unlink(missing_ok=True)
    argv = [
        qemu,
        "-accel", "kvm",
        "-machine", "pc",
        "-m", "32",
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
        "-chardev", f"file,id=firmware,path={firmware_log}",
        "-device", f"isa-debugcon,iobase={FIRMWARE_DEBUG_PORT},chardev=firmware",
    ]  # fmt: skip
    proc = start_qemu(argv, workdir / "kvm-probe-qemu.log", log)
    try:
        ran = wait_for_file_text(firmware_log, FIRMWARE_BOOT_PHASE, proc, timeout)
        exited = proc.poll()
    finally:
        proc.stop()
    if ran:
        return ProbeResult(Accelerator.KVM, "KVM ran the firmware")
    if exited is not None:
        return ProbeResult(Accelerator.TCG, f"KVM failed: QEMU exited with code {exited}")
    return ProbeResult(
        Accelerator.TCG, f"KVM failed: the firmware did not get through POST in {timeout:.0f}s"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for QEMU's SSH port forward)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def boot_script(http_port: int, label: str) -> str:
    """The TFTP bootfile: chain to the image's script over HTTP. The ROM that fetched this
    file already holds a DHCP lease; asking again would only cost seconds."""
    url = f"http://{GUEST_HOST_ADDRESS}:{http_port}/{label}/{IPXE}"
    return f"{HEADER}\nisset ${{ip}} || dhcp\nchain {url}\n"


@dataclass(frozen=True)
class VmConfig:
    """One PXE boot: where its files go, what it boots, and the machine it runs on."""

    workdir: Path  # tftp/, serial.log, firmware.log, qemu.log, OVMF_VARS.fd
    label: str
    network: GuestNetwork
    accelerator: Accelerator
    memory_mib: int = DEFAULT_MEMORY_MIB
    nic: Nic = Nic.VIRTIO
    cpus: int = 2
    cpu: str | None = None  # QEMU -cpu; None: the accelerator's default
    firmware: Firmware = Firmware.BIOS
    disk: Path | None = None  # a qcow2 image as the machine's virtio disk (install tests)

    @property
    def cpu_model(self) -> str:
        return cpu_model(self.cpu, self.accelerator)

    @property
    def tftp_dir(self) -> Path:
        return self.workdir / "tftp"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def firmware_log(self) -> Path:
        return self.workdir / "firmware.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def packet_log(self) -> Path:
        return self.workdir / "network.pcap"

    @property
    def ovmf_vars(self) -> Path:
        """This boot's own copy of OVMF's variable store (the firmware writes to it)."""
        return self.workdir / "OVMF_VARS.fd"


def netdev_arg(config: VmConfig) -> str:
    """-netdev: QEMU's user network (DHCP, TFTP boot.ipxe, SSH forwarded to 127.0.0.1), or
    an existing tap."""
    match config.network:
        case UserNetwork(ssh_port=ssh_port):
            return ",".join(
                [
                    "user",
                    "id=n0",
                    f"tftp={config.tftp_dir}",
                    f"bootfile={BOOTFILE}",
                    f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
                ]
            )
        case TapNetwork(tap=tap):
            # vnet_hdr=off: with the offload header on, QEMU 7.2's filter-dump writes it
            # before each frame, and the capture no longer reads as Ethernet
            return f"tap,id=n0,ifname={tap},script=no,downscript=no,vnet_hdr=off"


def nic_arg(config: VmConfig) -> str:
    """-device of the NIC: a tap network's NIC has the MAC the inventory knows. Under OVMF
    its ROM is left out (`romfile=`), so the firmware's own PXE boots and fetches iPXE over
    TFTP, as on a UEFI server without an iPXE ROM."""
    parts = [config.nic.device(), "netdev=n0"]
    if isinstance(config.network, TapNetwork):
        parts.append(f"mac={config.network.mac}")
    if config.firmware is Firmware.UEFI:
        parts.append("romfile=")
    return ",".join(parts)


def firmware_args(config: VmConfig) -> list[str]:
    """SeaBIOS boots the network first (-boot order=n); OVMF, with no disk, PXE-boots
    from its variable store's defaults."""
    if config.firmware is Firmware.BIOS:
        return ["-boot", "order=n"]
    return [
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={config.ovmf_vars}",
    ]  # fmt: skip


def qemu_command(config: VmConfig, qemu: str = QEMU) -> list[str]:
    """The QEMU command line of a headless PXE boot."""
    return [
        qemu,
        "-accel", str(config.accelerator),
        "-machine", config.firmware.machine(),
        "-cpu", config.cpu_model,
        "-smp", str(config.cpus),
        "-m", str(config.memory_mib),
        "-nodefaults",
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-serial", f"file:{config.serial_log}",
        "-chardev", f"file,id=firmware,path={config.firmware_log}",
        "-device", f"isa-debugcon,iobase={FIRMWARE_DEBUG_PORT},chardev=firmware",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", netdev_arg(config),
        "-device", nic_arg(config),
        # The guest's traffic, headers only: its DHCP leases say when the firmware and the
        # booted system are on the network (see PacketWatch).
        "-object", f"filter-dump,id=dump0,netdev=n0,file={config.packet_log},maxlen={PCAP_SNAPLEN}",
        *firmware_args(config),
        *disk_args(config),
    ]  # fmt: skip


def disk_args(config: VmConfig) -> list[str]:
    """The machine's disk (/dev/vda); SeaBIOS still boots the network first, and iPXE hands
    over to the disk when serve says the machine is installed."""
    if config.disk is None:
        return []
    return ["-drive", f"file={config.disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap"]


def tail(path: Path, lines: int = SERIAL_TAIL_LINES) -> str:
    if not path.exists():
        return f"({path.name} is empty: nothing was written)"
    text = path.read_bytes().decode("utf-8", "replace").replace("\r", "")
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else f"({path.name} is empty: nothing was written)"


# The lines the guest kernel prints when it crashes. Under TCG with 2 vCPUs, a rare one is
# QEMU's, not the image's: "Oops: int3" in scheduler code while another vCPU patches kernel
# text (static keys flipped by a module load). boot-test names a crash, never hides it.
PANIC_MARKERS = ("Kernel panic - not syncing", "Oops: ", "BUG: unable to handle")


def guest_panic(text: str) -> str | None:
    """The guest kernel's first crash line in its console output, if it crashed."""
    for line in text.replace("\r", "").splitlines():
        if any(marker in line for marker in PANIC_MARKERS):
            # console bytes: anything but printable ASCII (escapes, colours) is shown as ?
            return "".join(c if " " <= c <= "~" else "?" for c in line.strip())[:160]
    return None


class PxeVm:
    """A running PXE-booted guest; a context manager that always stops QEMU on exit. With
    `netns`, QEMU runs inside that namespace (where its tap is)."""

    def __init__(
        self,
        config: VmConfig,
        access_log: Path | None = None,
        log: Log | None = None,
        qemu: str = QEMU,
        netns: Netns | None = None,
    ) -> None:
        self.config = config
        self.log = log
        argv = qemu_command(config, qemu)
        self.argv = netns.argv(argv) if netns is not None else argv
        self.access_log = access_log
        self.proc: Background | None = None
        self.watch = self.new_watch()
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def new_watch(self) -> BootWatch:
        return BootWatch(self.config.serial_log, self.access_log, self.config.packet_log)

    def __enter__(self) -> PxeVm:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.config.network, UserNetwork):
            self.config.tftp_dir.mkdir(exist_ok=True)
            script = boot_script(self.config.network.http_port, self.config.label)
            (self.config.tftp_dir / BOOTFILE).write_text(script, encoding="utf-8")
        if self.config.firmware is Firmware.UEFI:
            shutil.copyfile(OVMF_VARS, self.config.ovmf_vars)  # a fresh store per boot
        for stale in (self.config.serial_log, self.config.firmware_log, self.config.packet_log):
            stale.unlink(missing_ok=True)
        self.watch = self.new_watch()
        self.proc = start_qemu(self.argv, self.config.qemu_log, self.log)
        # The logs are read on a thread of their own, so a slow check (an SSH attempt
        # waiting for its timeout) does not blur the timings.
        self._stop_watching.clear()
        self._watcher = threading.Thread(target=self._watch_logs, name="plasmaboot-vm-watch")
        self._watcher.start()

    def _watch_logs(self) -> None:
        while not self._stop_watching.wait(WATCH_INTERVAL):
            self.watch.poll()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        if self._watcher is not None:
            self._stop_watching.set()
            self._watcher.join()
            self._watcher = None
        self.watch.poll()  # whatever arrived last

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def serial_text(self) -> str:
        if not self.config.serial_log.exists():
            return ""
        return self.config.serial_log.read_bytes().decode("utf-8", "replace")

    def wait_until(
        self, done: Callable[[], bool], timeout: float, what: str, every: float = 0.0
    ) -> None:
        """Poll `done` (at most once per `every` seconds) until it is true; WorkError with
        the serial tail on timeout or if the guest stopped (with -no-reboot a power-off or
        a reboot ends QEMU; a panicked guest spins unless its kernel line has `panic=N`,
        Debian's kernel has no panic timeout)."""
        deadline = time.monotonic() + timeout
        next_try = 0.0
        while True:
            if time.monotonic() >= next_try:
                if done():
                    return
                next_try = time.monotonic() + every
            if not self.running():
                code = self.proc.returncode if self.proc is not None else None
                raise self.failure(f"the guest stopped (QEMU exit code {code}) before {what}")
            if time.monotonic() >= deadline:
                raise self.failure(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(max(0.01, min(WATCH_INTERVAL, next_try - time.monotonic())))

    def failure(self, message: str) -> WorkError:
        where = [f"serial console: {self.config.serial_log}"]
        if "kernel_started" not in self.watch.events:
            where.append(f"firmware: {self.config.firmware_log}")
            where.append(f"QEMU: {self.config.qemu_log}")
        seen = ", ".join(
            f"{k} {v:.1f}s" for k, v in sorted(self.watch.events.items(), key=lambda i: i[1])
        )
        return WorkError(
            f"{message}; events: {seen or 'none'}\n"
            f"--- last lines of the serial console ---\n{tail(self.config.serial_log)}",
            hint="full logs: " + ", ".join(where),
        )
