"""formats.squashfs: the superblock of what mksquashfs writes, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifact_sets import make_squashfs, make_tree
from plasmaboot.formats import FormatError
from plasmaboot.formats.squashfs import read_squashfs_superblock


def test_squashfs_superblock_of_mksquashfs_output(tmp_path: Path) -> None:
    image = make_squashfs(make_tree(tmp_path / "tree", "k\n"), tmp_path / "img")
    data = image.read_bytes()
    superblock = read_squashfs_superblock(data, len(data))
    assert superblock.compressor == "zstd"
    assert superblock.version == (4, 0)
    assert superblock.bytes_used <= len(data) < superblock.bytes_used + 4096
    with pytest.raises(FormatError, match="bytes used"):
        read_squashfs_superblock(data, superblock.bytes_used - 1)
    with pytest.raises(FormatError, match="magic"):
        read_squashfs_superblock(b"hsqx" + data[4:], len(data))
