"""formats.cpio: the writer (deterministic, sorted, owned by root, parents added) and the
reader (an initrd split into its segments as the kernel does, for each compression, and
damaged ones refused with where they break)."""

from __future__ import annotations

import gzip
import io
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
    align_end,
    concatenate,
    read_members,
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


# --- writing -------------------------------------------------------------------------


def sample_entries(tmp_path: Path) -> list[Entry]:
    script = tmp_path / "init"
    script.write_text("#!/bin/sh\necho hi\n")
    os.utime(script, (2_000_000_000, 2_000_000_000))
    return [
        Entry("lib/modules/loop.ko", stat.S_IFREG | 0o644, data=b"\x7fELF"),
        Entry("init", stat.S_IFREG | 0o755, source=script),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("bin/sh", stat.S_IFLNK | 0o777, link_target="busybox"),
    ]


def test_cpio_is_deterministic_sorted_and_owned_by_root(tmp_path: Path) -> None:
    first, second = io.BytesIO(), io.BytesIO()
    write_cpio(sample_entries(tmp_path), first, mtime=1234)
    write_cpio(list(reversed(sample_entries(tmp_path))), second, mtime=1234)
    assert first.getvalue() == second.getvalue()
    assert len(first.getvalue()) % 512 == 0
    members, _ = read_members(first.getvalue())
    names = [m.name for m in members]
    assert names == sorted(names)
    # parent directories are added so the kernel can create the files
    assert {"lib", "lib/modules", "dev", "bin"} <= set(names)
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 1234 for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["init"].is_executable
    assert by_name["bin/sh"].link_target == "busybox"
    init = by_name["init"]
    assert first.getvalue()[init.offset : init.offset + init.size] == b"#!/bin/sh\necho hi\n"


def test_cpio_mtime_defaults_to_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "777")
    out = io.BytesIO()
    write_cpio(sample_entries(tmp_path), out)
    members, _ = read_members(out.getvalue())
    assert {m.mtime for m in members} == {777}


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD, Compression.NONE])
def test_segments_are_detected_and_readable(tmp_path: Path, compression: Compression) -> None:
    path = tmp_path / "segment"
    write_segment(sample_entries(tmp_path), path, compression)
    data = path.read_bytes()
    assert Compression.detect(data[:8]) is compression
    if compression is Compression.GZIP:
        data = gzip.decompress(data)
    if compression is not Compression.ZSTD:
        members, _ = read_members(data)
        assert "init" in {m.name for m in members}


def node_segment(directory: Path) -> Path:
    """A per-node layer as serve sends it: an uncompressed newc archive."""
    path = directory / "node.cpio"
    write_segment([Entry("etc/hostname", stat.S_IFREG | 0o644, data=b"n1\n")], path,
                  Compression.NONE)  # fmt: skip
    return path


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_an_initrd_ends_aligned_so_a_loaders_next_initrd_is_read(
    tmp_path: Path, compression: Compression
) -> None:
    """UEFI's command-line initrd loader puts the per-node layer right after the set's
    initrd, unpadded: it is read only if the set's initrd ends 4-byte aligned, which a
    compressed last segment alone does not."""
    last = tmp_path / "last"
    for size in range(4):  # some payload size leaves the compressed stream unaligned
        write_segment([Entry("etc/x", stat.S_IFREG | 0o644, data=os.urandom(97 + size))],
                      last, compression)  # fmt: skip
        if last.stat().st_size % 4:
            break
    assert last.stat().st_size % 4, "no unaligned compressed segment to test with"
    # as the loader does, without our padding: the node layer is not read, as in the kernel
    raw = last.read_bytes() + node_segment(tmp_path).read_bytes()
    (tmp_path / "raw").write_bytes(raw)
    with pytest.raises(SegmentError, match="not 4-byte aligned"):
        read_segments(tmp_path / "raw")
    # concatenate (and the pipeline's align_end) end the initrd aligned: both are read
    concatenate([last], tmp_path / INITRD)
    assert (tmp_path / INITRD).stat().st_size % 4 == 0
    joined = (tmp_path / INITRD).read_bytes() + node_segment(tmp_path).read_bytes()
    (tmp_path / "joined").write_bytes(joined)
    names = [m.name for s in read_segments(tmp_path / "joined") for m in s.members]
    assert "etc/hostname" in names and "etc/x" in names


def test_align_end_pads_with_nuls_and_never_writes_through_a_link(tmp_path: Path) -> None:
    initrd, other = tmp_path / INITRD, tmp_path / "cached"
    other.write_bytes(b"\x1f\x8b" + b"x" * 5)  # 7 bytes
    os.link(other, initrd)
    assert align_end(initrd) == 1
    assert initrd.read_bytes() == b"\x1f\x8bxxxxx\0" and other.read_bytes() == b"\x1f\x8bxxxxx"
    assert align_end(initrd) == 0 and initrd.stat().st_size == 8
