"""The squashfs 4.0 superblock: parsed and sanity-checked without mounting anything."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from plasmaboot.formats import FormatError

SQUASHFS_MAGIC = b"hsqs"
SQUASHFS_SUPERBLOCK = struct.Struct("<4sIIIIHHHHHHQQQQQQQQ")
SQUASHFS_COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
SQUASHFS_PADDING = 4096  # mksquashfs pads the image to a multiple of 4 KiB
SQUASHFS_ABSENT = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class SquashfsSuperblock:
    inodes: int
    block_size: int
    compressor: str
    version: tuple[int, int]
    bytes_used: int


def read_squashfs_superblock(data: bytes, size: int) -> SquashfsSuperblock:
    """Parse and sanity-check a squashfs 4.0 superblock; `size` is the image's length."""
    if len(data) < SQUASHFS_SUPERBLOCK.size:
        raise FormatError(f"{len(data)} bytes: too short for a squashfs superblock")
    (
        magic, inodes, _mtime, block_size, _fragments, compressor_id, block_log, _flags,
        _ids, major, minor, _root_inode, bytes_used, *tables,
    ) = SQUASHFS_SUPERBLOCK.unpack_from(data)  # fmt: skip
    id_table, xattr_table, inode_table, directory_table, fragment_table, export_table = tables
    version = (major, minor)
    if magic != SQUASHFS_MAGIC:
        raise FormatError(f"bad squashfs magic {magic!r}, expected b'hsqs'")
    if version != (4, 0):
        raise FormatError(f"squashfs version {major}.{minor}, expected 4.0")
    if compressor_id not in SQUASHFS_COMPRESSORS:
        raise FormatError(f"unknown squashfs compressor id {compressor_id}")
    if block_size != 1 << block_log or not 4096 <= block_size <= 1 << 20:
        raise FormatError(f"inconsistent block size {block_size} (log {block_log})")
    if not bytes_used <= size < bytes_used + SQUASHFS_PADDING:
        raise FormatError(f"superblock says {bytes_used} bytes used, the member has {size}")
    # optional tables are absent as all ones; the others must lie inside the image
    optional = (xattr_table, fragment_table, export_table)
    if not inode_table < directory_table < id_table < bytes_used or any(
        not start < bytes_used for start in optional if start != SQUASHFS_ABSENT
    ):
        raise FormatError("superblock table offsets point outside the image")
    return SquashfsSuperblock(
        inodes, block_size, SQUASHFS_COMPRESSORS[compressor_id], version, bytes_used
    )
