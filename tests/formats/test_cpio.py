"""formats.cpio, reading: an initrd split into its segments as the kernel does, for each
compression, and damaged ones refused with where they break."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from artifact_sets import make_initrd, make_squashfs, make_tree
from plasmaboot.artifacts.layout import INITRD
from plasmaboot.formats.cpio import (
    Compression,
    Entry,
    SegmentError,
    concatenate,
    read_segments,
    write_cpio,
    write_segment,
)


def lz4_legacy_segment(entries: list[Entry], path: Path) -> None:
    cpio = path.with_suffix(".cpio")
    with cpio.open("wb") as out:
        write_cpio(entries, out)
    subprocess.run(["lz4", "-q", "-l", "-f", cpio, path], check=True)


@pytest.mark.parametrize(
    "compression", [Compression.GZIP, Compression.XZ, Compression.ZSTD, Compression.LZ4]
)
def test_segments_split_and_list_each_compression(tmp_path: Path, compression: Compression) -> None:
    entries = [Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n" * 500)]
    first = tmp_path / "first"
    if compression is Compression.LZ4:
        lz4_legacy_segment(entries, first)
    else:
        write_segment(entries, first, compression)
    # zero padding after a compressed segment, which the kernel skips
    with first.open("ab") as out:
        out.write(b"\0" * 64)
    second = tmp_path / "second"
    write_segment([Entry("root.squashfs", stat.S_IFREG | 0o644, data=b"hsqs")], second,
                  Compression.NONE)  # fmt: skip
    concatenate([first, second], tmp_path / INITRD)

    segments = read_segments(tmp_path / INITRD)

    assert [s.compression for s in segments] == [compression, Compression.NONE]
    init = segments[0].members[0]
    assert init.name == "init" and init.is_executable
    assert segments[0].payload[init.offset : init.offset + init.size] == b"#!/bin/sh\n" * 500
    assert [m.name for m in segments[1].members] == ["root.squashfs"]
    assert segments[0].end <= segments[1].offset


def test_segments_of_a_truncated_initrd_fail(tmp_path: Path) -> None:
    squashfs = make_squashfs(make_tree(tmp_path / "tree", "ssh-ed25519 AAAA x\n"), tmp_path / "i")
    initrd = make_initrd(tmp_path, squashfs)
    data = initrd.read_bytes()
    initrd.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegmentError, match=r"truncated data of 'root\.squashfs'"):
        read_segments(initrd)
    initrd.write_bytes(data[:40])
    with pytest.raises(SegmentError, match="gzip segment at offset 0 is truncated"):
        read_segments(initrd)
    initrd.write_bytes(b"junk" + data)
    with pytest.raises(SegmentError, match="unknown segment format"):
        read_segments(initrd)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.XZ, Compression.ZSTD])
def test_segments_with_overwritten_bytes_fail(tmp_path: Path, compression: Compression) -> None:
    segment = tmp_path / "segment"
    entries = [Entry("init", stat.S_IFREG | 0o755, data=os.urandom(20000))]
    write_segment(entries, segment, compression)
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    segment.write_bytes(data)
    with pytest.raises(SegmentError, match=f"{compression} segment at offset 0"):
        read_segments(segment)
