"""The initrd as the kernel unpacks it (formats.cpio): its segments, the /init it runs, and
the root squashfs stage-1 mounts, whose superblock must be sound (formats.squashfs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, NIX_STORE_SQUASHFS, PACKAGE_LAYER, ROOT_SQUASHFS
from plasmaboot.checks import Check, count, failed, passed, skipped
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats import FormatError
from plasmaboot.formats.cpio import SEGMENT_ALIGN, Member, Segment, SegmentError, read_segments
from plasmaboot.formats.squashfs import read_squashfs_superblock
from plasmaboot.verify.layers import DirLayer, dir_layers

LATER_CHECKS = ("initrd.init", "initrd.squashfs")


@dataclass(frozen=True)
class RootImage:
    """The squashfs the initrd carries: PACKAGE_LAYER (Debian, with the directory layers
    stacked above it), ROOT_SQUASHFS (a Debian set made before layers) or
    NIX_STORE_SQUASHFS."""

    name: str
    data: bytes
    layers: tuple[DirLayer, ...] = ()  # bottom first


def last_member(segments: list[Segment], name: str) -> tuple[int, Segment, Member] | None:
    """The member the kernel ends up with: a later segment overwrites an earlier one."""
    found = None
    for number, segment in enumerate(segments, start=1):
        for member in segment.members:
            if member.name == name:
                found = (number, segment, member)
    return found


def find_root_image(segments: list[Segment]) -> tuple[int, Segment, Member] | None:
    for name in (PACKAGE_LAYER, ROOT_SQUASHFS, NIX_STORE_SQUASHFS):
        found = last_member(segments, name)
        if found is not None:
            return found
    return None


def check_initrd(directory: Path) -> tuple[list[Check], RootImage | None]:
    """The initrd checks, and the root squashfs image when it is sound enough to read."""
    path = directory / INITRD
    if not path.is_file():
        checks = [failed("initrd.segments", f"{INITRD} is missing")]
        return checks + [skipped(name, "no initrd to read") for name in LATER_CHECKS], None
    try:
        segments = read_segments(path)
    except (SegmentError, WorkError, UserError, OSError) as exc:
        checks = [failed("initrd.segments", str(exc).splitlines()[0])]
        return checks + [skipped(name, "initrd unreadable") for name in LATER_CHECKS], None
    summary = ", ".join(f"{s.compression} ({count(s.members, 'member')})" for s in segments)
    segments_check = passed("initrd.segments", f"{len(segments)} segments: {summary}")
    size = path.stat().st_size
    if size % SEGMENT_ALIGN:
        segments_check = failed(
            "initrd.segments",
            f"{INITRD} is {size} bytes, not a multiple of {SEGMENT_ALIGN}: an initrd the boot "
            "loader puts after it (the per-node layer under UEFI) would not be read; rebuild",
        )
    squashfs_check, root = check_root_squashfs(segments)
    return [segments_check, check_init(segments), squashfs_check], root


def check_init(segments: list[Segment]) -> Check:
    init = last_member(segments, "init")
    if init is None:
        return failed("initrd.init", "no /init in any segment")
    number, _, member = init
    if not member.is_executable:
        return failed("initrd.init", f"/init is not an executable file ({member.mode:o})")
    return passed("initrd.init", f"segment {number}, mode {member.mode & 0o7777:o}")


def check_root_squashfs(segments: list[Segment]) -> tuple[Check, RootImage | None]:
    found = find_root_image(segments)
    if found is None:
        wanted = f"/{PACKAGE_LAYER}, /{ROOT_SQUASHFS} or /{NIX_STORE_SQUASHFS}"
        return failed("initrd.squashfs", f"no {wanted} in any segment"), None
    number, segment, member = found
    image = segment.payload[member.offset : member.offset + member.size]
    try:
        superblock = read_squashfs_superblock(image, member.size)
    except FormatError as exc:
        return failed("initrd.squashfs", f"/{member.name}: {exc}"), None
    detail = (
        f"segment {number}: /{member.name}: squashfs 4.0, {superblock.compressor}, "
        f"{superblock.bytes_used / (1 << 20):.1f} MiB, {superblock.inodes} inodes, "
        f"{superblock.block_size >> 10} KiB blocks"
    )
    layers = tuple(dir_layers(segments))
    if layers:
        detail += "; above it " + ", ".join(
            f"{layer.name} ({len(layer.files)} entries)" for layer in layers
        )
    return passed("initrd.squashfs", detail), RootImage(member.name, image, layers)
