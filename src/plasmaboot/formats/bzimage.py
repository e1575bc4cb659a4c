"""The x86 Linux boot protocol header of a bzImage (Documentation/arch/x86/boot.rst), and
the one rule for what size a netboot kernel may have."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.formats import FormatError

KERNEL_HEADER_READ = 0x10000 + 0x200 + 256  # the farthest a version string can start, + room
# A netboot kernel is a few MiB to a few tens of MiB; outside this range it is not one.
MIN_KERNEL_SIZE = 512 << 10
MAX_KERNEL_SIZE = 256 << 20


@dataclass(frozen=True)
class KernelHeader:
    protocol: tuple[int, int]
    loaded_high: bool  # a bzImage: the protected-mode kernel loads at 1 MiB
    setup_size: int  # real-mode setup code, including the boot sector
    payload_size: int  # protected-mode kernel (syssize x 16)
    version: str  # "" when the header has no version pointer


def read_kernel_header(path: Path) -> KernelHeader:
    with path.open("rb") as handle:
        head = handle.read(KERNEL_HEADER_READ)
    if len(head) < 0x240:
        raise FormatError(f"only {len(head)} bytes: too short for a boot header")
    if head[0x202:0x206] != b"HdrS":
        raise FormatError("not a Linux kernel: no 'HdrS' magic at 0x202")
    (signature,) = struct.unpack_from("<H", head, 0x1FE)
    if signature != 0xAA55:
        raise FormatError(f"boot sector signature at 0x1fe is {signature:#06x}, not 0xaa55")
    (protocol,) = struct.unpack_from("<H", head, 0x206)
    (version_offset,) = struct.unpack_from("<H", head, 0x20E)
    (syssize,) = struct.unpack_from("<I", head, 0x1F4)
    setup_sectors = head[0x1F1] or 4
    version = ""
    if version_offset:
        start = version_offset + 0x200
        end = head.find(b"\0", start)
        if start >= len(head) or end < 0:
            raise FormatError(f"kernel version string at {start:#x} is not NUL-terminated")
        raw = head[start:end]
        if not raw or not all(0x20 <= b < 0x7F for b in raw):
            raise FormatError(f"kernel version string at {start:#x} is not printable text")
        version = raw.decode("ascii")
    return KernelHeader(
        protocol=(protocol >> 8, protocol & 0xFF),
        loaded_high=bool(head[0x211] & 1),
        setup_size=(setup_sectors + 1) * 512,
        payload_size=syssize * 16,
        version=version,
    )


def check_kernel_size(size: int, header: KernelHeader) -> None:
    """FormatError unless the file holds what its header describes and its size is sane."""
    needed = header.setup_size + header.payload_size
    if size < needed:
        raise FormatError(f"{size} bytes, but its header describes {needed}")
    if not MIN_KERNEL_SIZE <= size <= MAX_KERNEL_SIZE:
        raise FormatError(
            f"{size} bytes, outside {MIN_KERNEL_SIZE >> 10} KiB..{MAX_KERNEL_SIZE >> 20} MiB"
        )


def is_bzimage(header: KernelHeader) -> bool:
    """Boot protocol 2.00 or later and loaded high: a bzImage, not an old zImage."""
    return header.protocol >= (2, 0) and header.loaded_high
