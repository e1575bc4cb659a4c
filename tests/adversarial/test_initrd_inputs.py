"""Adversarial probe of how verify reads an initrd: sparse or zero-padded giants, and
segments that unpack to far more than they are (decompression bombs) of every compression
the kernel takes. Each is a failed check or a clean read in bounded time and memory, never
a MemoryError, a full disk or a traceback. The real 3 GiB gzip bomb of the issue, against
the default cap, is `extended`."""

from __future__ import annotations

import gzip
import lzma
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD
from plasmaboot.formats import cpio
from plasmaboot.formats.cpio import Compression, Entry, SegmentError, read_segments, write_segment
from plasmaboot.verify.initrd import check_initrd

MiB = 1 << 20
GiB = 1 << 30


def stage1(directory: Path) -> bytes:
    path = directory / "stage1.cpio.gz"
    write_segment(
        [Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n")], path, Compression.GZIP
    )
    data = path.read_bytes()
    path.unlink()
    return data


def measured(initrd: Path) -> tuple[float, int, str]:
    """Seconds, peak resident KiB and outcome of read_segments in a fresh interpreter."""
    code = (
        "import resource, sys, time\n"
        "from pathlib import Path\n"
        "from plasmaboot.formats.cpio import read_segments, SegmentError\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    segments = read_segments(Path(sys.argv[1])); outcome = f'{len(segments)} segments'\n"
        "except SegmentError as exc:\n"
        "    outcome = f'error: {exc}'\n"
        "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "print(outcome)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(initrd)], capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    numbers, outcome = proc.stdout.splitlines()
    seconds, rss = numbers.split()
    return float(seconds), int(rss), outcome


@pytest.mark.parametrize("size", [1 * GiB, 16 * GiB])
def test_a_sparse_giant_initrd_is_read_in_bounded_time_and_memory(
    tmp_path: Path, size: int
) -> None:
    initrd = tmp_path / INITRD
    with initrd.open("wb") as out:
        out.write(stage1(tmp_path))
        out.truncate(size)  # a hole: NUL padding the kernel would skip
    seconds, rss, outcome = measured(initrd)
    assert outcome == "1 segments"
    assert seconds < 10 and rss < 200 * 1024, (seconds, rss)


def test_a_sparse_hole_before_a_segment_is_stepped_over(tmp_path: Path) -> None:
    initrd = tmp_path / INITRD
    segment = stage1(tmp_path)
    with initrd.open("wb") as out:
        out.write(segment)
        out.seek(2 * GiB)
        out.write(segment)
    seconds, rss, outcome = measured(initrd)
    assert outcome == "2 segments" and seconds < 10 and rss < 200 * 1024, (seconds, rss)


def test_written_zero_padding_is_skipped_by_the_block(tmp_path: Path) -> None:
    initrd = tmp_path / INITRD
    segment = stage1(tmp_path)
    with initrd.open("wb") as out:
        out.write(segment)
        for _ in range(256):
            out.write(bytes(MiB))  # real zeros, not a hole
        out.write(segment)
    seconds, rss, outcome = measured(initrd)
    assert outcome == "2 segments" and seconds < 10 and rss < 200 * 1024, (seconds, rss)


def bomb(compression: Compression, unpacked: int, directory: Path) -> bytes:
    """A segment of `unpacked` NUL bytes: a few hundred KiB that inflate a thousandfold."""
    if compression is Compression.GZIP:
        return gzip.compress(bytes(unpacked), compresslevel=9, mtime=0)
    if compression is Compression.XZ:
        return lzma.compress(bytes(unpacked), check=lzma.CHECK_CRC32)
    tool = {
        Compression.ZSTD: ["zstd", "-q", "-19", "-c"],
        Compression.LZ4: ["lz4", "-l", "-q", "-c"],
    }
    source = directory / "zeros"
    source.write_bytes(bytes(unpacked))
    return subprocess.run([*tool[compression], str(source)], capture_output=True, check=True).stdout


BOMBS = [Compression.GZIP, Compression.XZ, Compression.ZSTD, Compression.LZ4]


@pytest.mark.parametrize("compression", BOMBS)
def test_a_segment_that_unpacks_past_the_cap_is_a_failed_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: Compression
) -> None:
    monkeypatch.setattr(cpio, "MAX_UNPACKED_SIZE", 32 * MiB)
    data = bomb(compression, 100 * MiB, tmp_path)
    assert len(data) < 2 * MiB
    (tmp_path / INITRD).write_bytes(stage1(tmp_path) + data)
    with pytest.raises(
        SegmentError, match=rf"{compression} segment at offset \d+ unpacks to more than the 32 MiB"
    ):
        read_segments(tmp_path / INITRD)
    checks, root = check_initrd(tmp_path)
    assert root is None and checks[0].failed and "unpacks to more than" in checks[0].detail
    assert [c.result for c in checks[1:]] == ["skip", "skip", "skip"]


def test_the_cap_counts_every_segment_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpio, "MAX_UNPACKED_SIZE", 32 * MiB)
    part = tmp_path / "part.cpio.gz"  # each a sound archive well under the cap
    write_segment(
        [Entry("big", stat.S_IFREG | 0o644, data=bytes(20 * MiB))], part, Compression.GZIP
    )
    (tmp_path / INITRD).write_bytes(stage1(tmp_path) + part.read_bytes() * 2)
    with pytest.raises(SegmentError, match="unpacks to more than the 32 MiB all segments"):
        read_segments(tmp_path / INITRD)
    (tmp_path / INITRD).write_bytes(stage1(tmp_path) + part.read_bytes())
    assert len(read_segments(tmp_path / INITRD)) == 2


def test_what_fits_the_cap_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpio, "MAX_UNPACKED_SIZE", 32 * MiB)
    big = tmp_path / "big.cpio.xz"
    write_segment([Entry("big", stat.S_IFREG | 0o644, data=bytes(24 * MiB))], big, Compression.XZ)
    (tmp_path / INITRD).write_bytes(stage1(tmp_path) + big.read_bytes())
    segments = read_segments(tmp_path / INITRD)
    assert [m.name for m in segments[1].members] == ["big"]
    assert segments[1].members[0].size == 24 * MiB


@pytest.mark.extended
def test_the_issues_gzip_bomb_is_a_failed_check(tmp_path: Path) -> None:
    """3 MB of gzip inflating to 3 GiB, against the default cap: it used to crash verify."""
    with gzip.GzipFile(tmp_path / "bomb.gz", "wb", compresslevel=9, mtime=0) as out:
        for _ in range(3 * 1024):
            out.write(bytes(MiB))
    (tmp_path / INITRD).write_bytes(stage1(tmp_path) + (tmp_path / "bomb.gz").read_bytes())
    started = time.monotonic()
    seconds, rss, outcome = measured(tmp_path / INITRD)
    assert (
        outcome.startswith("error: gzip segment at offset ") and "unpacks to more than" in outcome
    )
    assert rss < 300 * 1024 and time.monotonic() - started < 120, (seconds, rss)
