"""Watching a PXE boot as it happens: the HTTP server's access log (which file was fetched
when; under pxe-server, its output, where dnsmasq's lines say when a loader went out over
TFTP), the serial console (the kernel started) and QEMU's capture of the guest's packets
(the firmware's and the booted system's DHCP leases), each read as it grows. Events are
seconds since QEMU started; the phases of the report are the spans between them."""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL
from plasmaboot.formats.ipxe import BOOT_SCRIPT

# serve.py's access log, one line per finished request:
# "<time> <client> <method> <path> <status> <bytes> <seconds>s"
ACCESS_LINE = re.compile(r"^\S+ \S+ (?P<method>\S+) (?P<path>\S+) (?P<status>\d+) \d+ [\d.]+s$")
# dnsmasq's line when its TFTP server has sent a file (pxe-server's output):
# "dnsmasq-tftp[1234]: sent /tmp/plasmaboot-pxe-x/tftp/snponly.efi to 10.77.0.10"
TFTP_SENT = re.compile(r"dnsmasq-tftp\[\d+\]: sent \S+ to \S+")
KERNEL_BANNER = b"Linux version "
# What an access-log request for each file marks: event name by the path's last segment,
# without its query. The first script over HTTP is netboot.ipxe on QEMU's user network
# (boot.ipxe came over TFTP), boot.ipxe?mac= under pxe-server.
FETCH_EVENTS = {
    IPXE: "script_fetched",
    BOOT_SCRIPT: "script_fetched",
    KERNEL: "kernel_fetched",
    INITRD: "initrd_fetched",
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
        # the capture first: a lease read in the same poll as a request came before it
        self._poll_packets()
        self._poll_access()
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
            if TFTP_SENT.search(line):
                self.mark("loader_fetched")
                continue
            match = ACCESS_LINE.match(line)
            if not match or match["method"] != "GET" or match["status"] != "200":
                continue
            name = match["path"].split("?", 1)[0].rsplit("/", 1)[-1]
            event = FETCH_EVENTS.get(name)
            if event is not None:
                self.mark(event)

    def _poll_packets(self) -> None:
        if self.packets is None:
            return
        # The first ack is the firmware's lease (iPXE's, or OVMF's PXE). Acks before the
        # initrd arrived were the firmware's; one after it is the booted system's lease:
        # from then on it has an address, so an SSH probe is answered at once (a banner, or
        # a reset while sshd is not up yet). A probe sent before that waits in slirp for
        # seconds, and still reaches sshd later.
        acks = self.packets.new_acks()
        if acks:
            self.mark("firmware_lease")
        if "initrd_fetched" not in self.events:
            return
        if acks:
            self.mark("network_up")

    def phases(self) -> dict[str, float]:
        """Durations between events that both happened."""
        spans = {
            "power_on_to_lease": ("start", "firmware_lease"),
            "lease_to_script": ("firmware_lease", "script_fetched"),
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
