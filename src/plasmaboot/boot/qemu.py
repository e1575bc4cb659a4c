"""QEMU for boot-test: probe the accelerator, PXE-boot a guest over user-mode networking
(firmware PXE -> DHCP -> TFTP boot.ipxe -> HTTP netboot.ipxe -> HTTP kernel and initrd),
capture its serial console, time the phases, and never leave a QEMU process behind.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats.ipxe import BOOT_SCRIPT as BOOTFILE
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
    url = f"http://{GUEST_HOST_ADDRESS}:{http_port}/{label}/netboot.ipxe"
    return f"#!ipxe\nisset ${{ip}} || dhcp\nchain {url}\n"


@dataclass(frozen=True)
class VmConfig:
    """One PXE boot: where its files go, what it boots, and the machine it runs on."""

    workdir: Path  # tftp/, serial.log, firmware.log, qemu.log
    label: str
    http_port: int
    ssh_port: int
    accelerator: Accelerator
    memory_mib: int = 2048
    nic: Nic = Nic.VIRTIO
    cpus: int = 2
    cpu: str | None = None  # QEMU -cpu; None: the accelerator's default

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


def qemu_command(config: VmConfig, qemu: str = QEMU) -> list[str]:
    """The QEMU command line of a headless PXE boot with SSH forwarded to 127.0.0.1."""
    netdev = ",".join(
        [
            "user",
            "id=n0",
            f"tftp={config.tftp_dir}",
            f"bootfile={BOOTFILE}",
            f"hostfwd=tcp:127.0.0.1:{config.ssh_port}-:22",
        ]
    )
    return [
        qemu,
        "-accel", str(config.accelerator),
        "-machine", "pc",
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
        "-netdev", netdev,
        "-device", f"{config.nic.device()},netdev=n0",
        # The guest's traffic, headers only: its DHCP lease says when the booted system
        # is on the network (see PacketWatch).
        "-object", f"filter-dump,id=dump0,netdev=n0,file={config.packet_log},maxlen={PCAP_SNAPLEN}",
        "-boot", "order=n",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------
# Watching a boot: the serial console and the HTTP server's access log, read as they grow.

# serve.py's access log, one line per finished request:
# "<time> <client> <method> <path> <status> <bytes> <seconds>s"
ACCESS_LINE = re.compile(r"^\S+ \S+ (?P<method>\S+) (?P<path>\S+) (?P<status>\d+) \d+ [\d.]+s$")
KERNEL_BANNER = b"Linux version "
# What an access-log request for each file marks: event name by the path's last segment.
FETCH_EVENTS = {
    "netboot.ipxe": "script_fetched",
    "bzImage": "kernel_fetched",
    "initrd": "initrd_fetched",
}


@dataclass
class BootWatch:
    """Events of one boot, in seconds since QEMU started, from the logs it reads."""

    serial_log: Path
    access_log: Path | None
    packet_log: Path | None = None
    started: float = field(default_factory=time.monotonic)
    events: dict[str, float] = field(default_factory=dict)
    access_offset: int = 0
    packets: PacketWatch | None = None

    def __post_init__(self) -> None:
        if self.access_log is not None and self.access_log.exists():
            self.access_offset = self.access_log.stat().st_size  # earlier boots' requests
        if self.packet_log is not None:
            self.packets = PacketWatch(self.packet_log)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def mark(self, event: str, at: float | None = None) -> None:
        self.events.setdefault(event, self.elapsed() if at is None else round(at, 3))

    def poll(self) -> None:
        self._poll_access()
        self._poll_packets()
        if "kernel_started" in self.events or not self.serial_log.exists():
            return
        if KERNEL_BANNER in self.serial_log.read_bytes():
            self.mark("kernel_started")

    def _poll_access(self) -> None:
        if self.access_log is None or not self.access_log.exists():
            return
        with self.access_log.open("rb") as handle:
            handle.seek(self.access_offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.access_offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            match = ACCESS_LINE.match(line)
            if not match or match["method"] != "GET" or match["status"] != "200":
                continue
            event = FETCH_EVENTS.get(match["path"].rsplit("/", 1)[-1])
            if event is not None:
                self.mark(event)

    def _poll_packets(self) -> None:
        if self.packets is None:
            return
        # Acks before the initrd arrived were the firmware's (iPXE); one after it is the
        # booted system's lease: from then on it has an address, so an SSH probe is
        # answered at once (a banner, or a reset while sshd is not up yet). A probe sent
        # before that waits in slirp for seconds, and still reaches sshd later.
        acks = self.packets.new_acks()
        if "initrd_fetched" not in self.events:
            return
        if acks:
            self.mark("network_up")

    def phases(self) -> dict[str, float]:
        """Durations between events that both happened."""
        spans = {
            "pxe_to_kernel": ("start", "kernel_fetched"),
            "initrd_download": ("kernel_fetched", "initrd_fetched"),
            "kernel_to_network": ("kernel_fetched", "network_up"),
            "network_to_ssh": ("network_up", "ssh_reachable"),
            "kernel_to_ssh": ("kernel_fetched", "ssh_reachable"),
            "total_to_ssh": ("start", "ssh_reachable"),
        }
        events = {"start": 0.0, **self.events}
        return {
            name: round(events[end] - events[begin], 3)
            for name, (begin, end) in spans.items()
            if begin in events and end in events
        }


# A pcap file as QEMU's filter-dump writes it: a 24-byte file header, then per packet a
# 16-byte record header (seconds, microseconds, captured length, length) and the bytes.
PCAP_MAGIC = 0xA1B2C3D4
PCAP_FILE_HEADER = 24
PCAP_RECORD = struct.Struct("<IIII")
# Ethernet (14) + IPv4 (20) + UDP (8) + BOOTP (236) + magic cookie (4) + option 53 (3):
# slirp's DHCP server writes the message type first.
PCAP_SNAPLEN = 320
DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
DHCP_ACK = 5


def dhcp_message_type(frame: bytes) -> int | None:
    """The DHCP message type of a DHCP server's reply in an Ethernet frame, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:  # IPv4, UDP
        return None
    udp = 14 + (frame[14] & 0x0F) * 4
    ports = struct.unpack_from("!HH", frame, udp) if len(frame) >= udp + 8 else None
    if ports != (DHCP_SERVER_PORT, DHCP_CLIENT_PORT):
        return None
    options = udp + 8 + 240  # fixed BOOTP fields and the magic cookie
    while options + 2 <= len(frame) and frame[options] != 255:
        code, length = frame[options], frame[options + 1]
        if code == 0:  # padding
            options += 1
            continue
        if code == 53 and length == 1 and options + 2 < len(frame):
            return frame[options + 2]
        options += 2 + length
    return None


@dataclass
class PacketWatch:
    """Reads QEMU's packet capture as it grows and counts the DHCP acks slirp sent. (The
    capture's timestamps are QEMU's virtual clock on a whole-second base, so the watcher's
    own clock times them.)"""

    path: Path
    offset: int = 0
    unreadable: str | None = None  # why the capture is not read

    def new_acks(self) -> int:
        if self.unreadable is not None or not self.path.exists():
            return 0
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        if self.offset == 0:
            if len(data) < PCAP_FILE_HEADER:
                return 0
            if struct.unpack_from("<I", data)[0] != PCAP_MAGIC:
                # Not the capture we know how to read (a big-endian host writes the other
                # byte order): stop reading it; SSH is then probed as if no lease was seen.
                self.unreadable = f"{self.path}: not a little-endian pcap file"
                return 0
            data, self.offset = data[PCAP_FILE_HEADER:], PCAP_FILE_HEADER
        acks = 0
        pos = 0
        while pos + PCAP_RECORD.size <= len(data):
            captured = PCAP_RECORD.unpack_from(data, pos)[2]
            end = pos + PCAP_RECORD.size + captured
            if end > len(data):
                break  # the rest of this record is not written yet
            if dhcp_message_type(data[pos + PCAP_RECORD.size : end]) == DHCP_ACK:
                acks += 1
            pos = end
        self.offset += pos
        return acks


def tail(path: Path, lines: int = SERIAL_TAIL_LINES) -> str:
    if not path.exists():
        return f"({path.name} is empty: nothing was written)"
    text = path.read_bytes().decode("utf-8", "replace").replace("\r", "")
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else f"({path.name} is empty: nothing was written)"


class PxeVm:
    """A running PXE-booted guest; a context manager that always stops QEMU on exit."""

    def __init__(
        self,
        config: VmConfig,
        access_log: Path | None = None,
        log: Log | None = None,
        qemu: str = QEMU,
    ) -> None:
        self.config = config
        self.log = log
        self.argv = qemu_command(config, qemu)
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
        self.config.tftp_dir.mkdir(parents=True, exist_ok=True)
        script = boot_script(self.config.http_port, self.config.label)
        (self.config.tftp_dir / BOOTFILE).write_text(script, encoding="utf-8")
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
        the serial tail on timeout or if the guest stopped (with -no-reboot a panic or a
        power-off ends QEMU)."""
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
