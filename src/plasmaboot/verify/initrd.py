"""The initrd as the kernel unpacks it (formats.cpio): its segments, the /init it runs, the
modules stage-1 loads (plain ELF, built for the set's kernel) and the root squashfs stage-1
mounts, whose superblock must be sound (formats.squashfs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, NIX_STORE_SQUASHFS, PACKAGE_LAYER, ROOT_SQUASHFS
from plasmaboot.checks import Check, count, failed, passed, skipped
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats import FormatError
from plasmaboot.formats.cpio import SEGMENT_ALIGN, Member, Segment, SegmentError, read_segments
from plasmaboot.formats.squashfs import SQUASHFS_SUPERBLOCK, read_squashfs_superblock
from plasmaboot.profiles.located_errors import render_value
from plasmaboot.verify.layers import DirLayer, dir_layers

LATER_CHECKS = ("initrd.init", "initrd.stage1-modules", "initrd.squashfs")
# The list of modules stage-1 loads, and where they are (the Debian backend's stage-1).
STAGE1_LIST = "etc/stage1-modules"
STAGE1_MODULES_DIR = "lib/modules"
# Enough of a module to find its .modinfo strings (stage-1's are a few hundred KiB at most).
MODULE_READ_LIMIT = 8 << 20
# What of the root image its superblock check reads (the rest is copied out for unsquashfs).
SUPERBLOCK_READ = SQUASHFS_SUPERBLOCK.size
MODULE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class RootImage:
    """The squashfs the initrd carries: PACKAGE_LAYER (Debian, with the directory layers
    stacked above it), ROOT_SQUASHFS (a Debian set made before layers) or
    NIX_STORE_SQUASHFS. Its bytes stay in the segment's mapped payload: they are most of
    the initrd, so they are copied out a block at a time, never held as one bytes object."""

    name: str
    segment: Segment
    member: Member
    layers: tuple[DirLayer, ...] = ()  # bottom first

    def write(self, path: Path) -> None:
        """The image as a file, for unsquashfs."""
        with path.open("wb") as out:
            self.segment.copy_member(self.member, out)


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


def check_initrd(
    directory: Path, kernel_version: str | None = None
) -> tuple[list[Check], RootImage | None]:
    """The initrd checks, and the root squashfs image when it is sound enough to read.
    `kernel_version` (the manifest's) is what stage-1's modules must be built for."""
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
    modules_check = check_stage1_modules(segments, kernel_version)
    return [segments_check, check_init(segments), modules_check, squashfs_check], root


def check_init(segments: list[Segment]) -> Check:
    init = last_member(segments, "init")
    if init is None:
        return failed("initrd.init", "no /init in any segment")
    number, _, member = init
    if not member.is_executable:
        return failed("initrd.init", f"/init is not an executable file ({member.mode:o})")
    return passed("initrd.init", f"segment {number}, mode {member.mode & 0o7777:o}")


def member_bytes(segment: Segment, member: Member, limit: int) -> bytes:
    return bytes(segment.payload[member.offset : member.offset + min(member.size, limit)])


def check_stage1_modules(segments: list[Segment], kernel_version: str | None) -> Check:
    """Each module stage-1's list names is in the initrd as a plain ELF file (busybox insmod
    reads no .ko.xz: a kernel shipping compressed modules has them unpacked at build time)
    built for the set's kernel (its vermagic), so insmod cannot fail at boot for either."""
    name = "initrd.stage1-modules"
    listing = last_member(segments, STAGE1_LIST)
    if listing is None:
        return skipped(name, f"no /{STAGE1_LIST} (not a Debian stage-1)")
    _, segment, member = listing
    modules = member_bytes(segment, member, 1 << 16).decode("utf-8", "replace").split()
    for module in modules:
        found = last_member(segments, f"{STAGE1_MODULES_DIR}/{module}")
        # the names come from the set: shown escaped (a forged list may hold any byte)
        shown = module if MODULE_NAME.match(module) else render_value(module)
        if found is None:
            return failed(name, f"/{STAGE1_LIST} names {shown}, not in the initrd")
        body = member_bytes(found[1], found[2], MODULE_READ_LIMIT)
        if not body.startswith(b"\x7fELF"):
            return failed(name, f"{shown} is not a plain ELF module (compressed?)")
        magic = module_vermagic(body)
        if kernel_version and (magic is None or magic.split()[0] != kernel_version):
            return failed(name, f"{shown} is built for {magic!r}, the kernel is {kernel_version}")
    return passed(
        name,
        f"{len(modules)} plain ELF modules"
        + (f" for {kernel_version}" if kernel_version else "")
        + (f": {', '.join(modules)}" if modules else ""),
    )


def module_vermagic(body: bytes) -> str | None:
    """The `vermagic=` string of a module's .modinfo section."""
    start = body.find(b"\0vermagic=")
    if start < 0:
        return None
    start += len(b"\0vermagic=")
    end = body.find(b"\0", start)
    return body[start : end if end >= 0 else len(body)].decode("ascii", "replace")


def check_root_squashfs(segments: list[Segment]) -> tuple[Check, RootImage | None]:
    found = find_root_image(segments)
    if found is None:
        wanted = f"/{PACKAGE_LAYER}, /{ROOT_SQUASHFS} or /{NIX_STORE_SQUASHFS}"
        return failed("initrd.squashfs", f"no {wanted} in any segment"), None
    number, segment, member = found
    head = segment.payload[member.offset : member.offset + min(member.size, SUPERBLOCK_READ)]
    try:
        superblock = read_squashfs_superblock(bytes(head), member.size)
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
    return passed("initrd.squashfs", detail), RootImage(member.name, segment, member, layers)
