"""Deterministic newc cpio: the writer that makes initrd segments and the reader that
lists them back (verify uses it).

An initrd is a concatenation of segments; each is a newc archive, optionally compressed.
The kernel unpacks them in order into one rootfs. Our writer sorts entries, sets uid/gid
0 and clamps mtimes to SOURCE_DATE_EPOCH, so the same inputs give the same bytes.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import mmap
import os
import shutil
import stat
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from plasmaboot.run import Background, command_failed, start

NEWC_MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
COPY_CHUNK = 1 << 20
COMPRESS_TIMEOUT = 1800.0  # zstd -19 of a root image takes minutes, never hours


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    XZ = "xz"
    LZ4 = "lz4"

    @classmethod
    def detect(cls, head: bytes) -> Compression | None:
        """The compression of a segment from its first bytes; None if not a known format."""
        if head.startswith(NEWC_MAGIC):
            return cls.NONE
        for compression, magic in MAGICS.items():
            if head.startswith(magic):
                return compression
        return None


MAGICS: dict[Compression, bytes] = {
    Compression.GZIP: b"\x1f\x8b",
    Compression.ZSTD: b"\x28\xb5\x2f\xfd",
    Compression.XZ: b"\xfd7zXZ\x00",
    Compression.LZ4: b"\x02\x21\x4c\x18",  # lz4 legacy frame, what the kernel reads
}


@dataclass(frozen=True)
class Entry:
    """One cpio member: a path inside the archive and where its bytes come from."""

    name: str  # without leading slash, e.g. "init" or "lib/modules"
    mode: int  # full st_mode (type and permissions)
    source: Path | None = None  # regular file contents
    data: bytes | None = None  # inline contents (small files)
    link_target: str | None = None  # symlink target
    rdev: tuple[int, int] = (0, 0)  # device number of a device node (major, minor)

    def size(self) -> int:
        if self.link_target is not None:
            return len(self.link_target.encode())
        if self.data is not None:
            return len(self.data)
        if self.source is not None:
            return self.source.stat().st_size
        return 0


def source_date_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def parent_dirs(entries: list[Entry]) -> list[Entry]:
    """Directory entries for every parent that is not listed, so the kernel can create files."""
    listed = {e.name for e in entries}
    missing: set[str] = set()
    for entry in entries:
        parts = entry.name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in listed:
                missing.add(parent)
    return [Entry(name, stat.S_IFDIR | 0o755) for name in missing]


def header(ino: int, entry: Entry, mtime: int, size: int, nlink: int) -> bytes:
    name = entry.name.encode() + b"\0"
    major, minor = entry.rdev
    fields = [ino, entry.mode, 0, 0, nlink, mtime, size, 0, 0, major, minor, len(name), 0]
    return NEWC_MAGIC + b"".join(f"{v:08x}".encode() for v in fields) + name


# Where the kernel looks for an uncompressed segment: offsets of the whole initrd (every
# initrd the boot loader gives, concatenated) that are multiples of 4.
SEGMENT_ALIGN = 4


def pad4(length: int) -> bytes:
    return b"\0" * (-length % SEGMENT_ALIGN)


def align_end(path: Path) -> int:
    """Pad the initrd at `path` with NULs to a multiple of 4 bytes (the kernel skips them),
    so that an initrd a boot loader puts right after it starts aligned: UEFI's command-line
    initrd loader concatenates files as they are, and the per-node layer follows the set's
    initrd. A file with other links is copied first, never changed through them. Returns
    the number of bytes added."""
    size = path.stat().st_size
    padding = -size % SEGMENT_ALIGN
    if padding:
        if path.stat().st_nlink > 1:
            copy = path.with_name(path.name + ".aligned")
            shutil.copyfile(path, copy)
            os.replace(copy, path)
        with path.open("ab") as out:
            out.write(b"\0" * padding)
    return padding


def write_cpio(entries: list[Entry], out: IO[bytes], mtime: int | None = None) -> None:
    """Write a newc archive: sorted entries, uid/gid 0, mtimes clamped to SOURCE_DATE_EPOCH."""
    clamp = source_date_epoch() if mtime is None else mtime
    ordered = sorted([*entries, *parent_dirs(entries)], key=lambda e: e.name)
    written = 0
    for ino, entry in enumerate(ordered, start=1):
        size = entry.size()
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        head = header(ino, entry, clamp, size, nlink)
        out.write(head + pad4(len(head)))
        written += len(head) + len(pad4(len(head)))
        if entry.link_target is not None:
            out.write(entry.link_target.encode())
        elif entry.data is not None:
            out.write(entry.data)
        elif entry.source is not None:
            with entry.source.open("rb") as handle:
                shutil.copyfileobj(handle, out, COPY_CHUNK)
        out.write(pad4(size))
        written += size + len(pad4(size))
    trailer = header(0, Entry(TRAILER, 0), 0, 0, 1)
    out.write(trailer + pad4(len(trailer)))
    written += len(trailer) + len(pad4(len(trailer)))
    # pad the segment to a 512-byte block, as GNU cpio does; the kernel skips the zeros
    out.write(b"\0" * (-written % 512))


def write_segment(entries: list[Entry], path: Path, compression: Compression) -> None:
    """Write one initrd segment to `path`, compressed as asked."""
    if compression is Compression.NONE:
        with path.open("wb") as out:
            write_cpio(entries, out)
    elif compression is Compression.GZIP:
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            write_cpio(entries, out)  # type: ignore[arg-type]
    else:
        tool = {
            Compression.ZSTD: ["zstd", "-q", "-19", "-T0"],
            # the kernel's xz decoder only knows crc32 checks
            Compression.XZ: ["xz", "--check=crc32", "-9"],
        }
        if compression not in tool:
            raise ValueError(f"cannot write {compression} segments")
        argv = [*tool[compression], "-c"]
        with path.open("wb") as out, tempfile.TemporaryFile() as errors:
            with start(argv, stdin=subprocess.PIPE, stdout=out, stderr=errors) as proc:
                assert proc.stdin is not None
                write_cpio(entries, proc.stdin)
                proc.stdin.close()
                code = proc.wait(timeout=COMPRESS_TIMEOUT)
            if code != 0:
                errors.seek(0)
                raise command_failed(argv, code, errors.read().decode("utf-8", "replace"), None)


def concatenate(segments: list[Path], out_path: Path) -> None:
    """Join segments into one initrd, each starting 4-byte aligned, and the whole ending so
    (see align_end)."""
    with out_path.open("wb") as out:
        for segment in segments:
            position = out.tell()
            out.write(pad4(position))
            with segment.open("rb") as handle:
                shutil.copyfileobj(handle, out, COPY_CHUNK)
        out.write(pad4(out.tell()))


# --------------------------------------------------------------------------------------
# Reading


# What `payload` is: bytes, or a read-only map of a file (the initrd itself, or a temporary
# file holding a decompressed segment); both slice to bytes.
Payload = bytes | mmap.mmap


class CpioError(ValueError):
    """The bytes are not a well-formed newc archive."""


@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    size: int
    mtime: int
    uid: int
    gid: int
    offset: int  # where the member's data starts in the archive stream
    link_target: str | None = None

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_executable(self) -> bool:
        return self.is_file and bool(self.mode & 0o111)


def read_members(data: Payload, start: int = 0) -> tuple[list[Member], int]:
    """Parse a newc archive from `data[start:]`; return its members and the end offset
    (just past the trailer's padding)."""
    members: list[Member] = []
    pos = start
    while True:
        if pos + HEADER_SIZE > len(data):
            raise CpioError(f"truncated cpio header at offset {pos}")
        head = data[pos : pos + HEADER_SIZE]
        if not head.startswith(NEWC_MAGIC):
            raise CpioError(f"bad cpio magic {head[:6]!r} at offset {pos}")
        try:
            fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError as exc:
            raise CpioError(f"bad cpio header at offset {pos}") from exc
        mode, uid, gid, mtime, size, namesize = (
            fields[1],
            fields[2],
            fields[3],
            fields[5],
            fields[6],
            fields[11],
        )
        name_end = pos + HEADER_SIZE + namesize
        if name_end > len(data):
            raise CpioError(f"truncated cpio name at offset {pos}")
        name = data[pos + HEADER_SIZE : name_end - 1].decode("utf-8", "replace")
        data_start = name_end + (-(HEADER_SIZE + namesize) % 4)
        data_end = data_start + size
        if data_end > len(data):
            raise CpioError(f"truncated data of {name!r}: needs {size} bytes at {data_start}")
        pos = data_end + (-size % 4)
        if name == TRAILER:
            return members, pos
        link = data[data_start:data_end].decode() if stat.S_ISLNK(mode) else None
        members.append(Member(name.lstrip("/"), mode, size, mtime, uid, gid, data_start, link))


class SegmentError(ValueError):
    """The initrd is not a well-formed sequence of (compressed) newc segments."""


@dataclass(frozen=True)
class Segment:
    """One initrd segment. `payload` is the byte stream its members' offsets index into:
    the decompressed archive (a temporary file, mapped), or for an uncompressed segment the
    initrd itself (mapped, never read whole)."""

    offset: int  # where the segment starts in the initrd
    end: int  # just past its last byte (before any padding)
    compression: Compression
    payload: Payload
    members: list[Member]

    def copy_member(self, member: Member, out: IO[bytes]) -> None:
        """Write a member's bytes to `out` a block at a time (a root image is hundreds of
        MiB: never one bytes object)."""
        for pos in range(member.offset, member.offset + member.size, COPY_CHUNK):
            out.write(self.payload[pos : min(pos + COPY_CHUNK, member.offset + member.size)])


# The largest lz4 legacy chunk: an 8 MiB block that did not compress, plus lz4's overhead.
LZ4_MAX_CHUNK = (8 << 20) + (8 << 20) // 255 + 16
# What the compressed segments of one initrd may unpack to, together. The kernel unpacks
# them into RAM, so a real initrd stays far below; past it a segment is a decompression
# bomb, a failed check rather than a full disk or an exhausted memory.
MAX_UNPACKED_SIZE = 2 << 30
# How often a decompressing tool's output is measured against the cap.
TOOL_POLL_SECONDS = 0.05
TOOL_TIMEOUT = 600.0


def read_segments(path: Path) -> list[Segment]:
    """Split an initrd into its segments and parse each one's archive, as the kernel does:
    NUL bytes between segments are skipped, each segment is decompressed on its own.

    The initrd is mapped, not read: padding is skipped by the block (and holes of a sparse
    file without reading them), members' data is never touched, and compressed segments
    unpack into temporary files, at most MAX_UNPACKED_SIZE bytes together."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise SegmentError("the initrd is empty")
        data = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        return split_segments(data, handle.fileno())


def split_segments(data: Payload, descriptor: int | None = None) -> list[Segment]:
    segments: list[Segment] = []
    budget = [MAX_UNPACKED_SIZE]  # what the compressed segments may still unpack to
    pos = 0
    while True:
        pos = skip_padding(data, pos, descriptor)
        if pos >= len(data):
            break
        compression = Compression.detect(data[pos : pos + 8])
        if compression is None:
            raise SegmentError(f"unknown segment format {data[pos : pos + 6]!r} at offset {pos}")
        if compression is Compression.NONE and pos % SEGMENT_ALIGN:
            # the kernel takes a cpio header for one only at a 4-byte aligned offset of the
            # whole initrd; anywhere else it looks for a compressor and stops
            raise SegmentError(
                f"uncompressed segment at offset {pos} is not 4-byte aligned (the kernel "
                "stops there: 'invalid magic at start of compressed archive')"
            )
        try:
            segment = read_segment(data, pos, compression, budget)
        except SegmentError:
            raise
        except ValueError as exc:  # a CpioError, or a link target that is not UTF-8
            raise SegmentError(f"{compression} segment at offset {pos}: {exc}") from exc
        segments.append(segment)
        pos = segment.end
    if not segments:
        raise SegmentError("the initrd is empty")
    return segments


def read_segment(
    data: Payload, start: int, compression: Compression, budget: list[int] | None = None
) -> Segment:
    budget = [MAX_UNPACKED_SIZE] if budget is None else budget
    if compression is Compression.NONE:
        members, end = read_archives(data, start, stop_at_first=True)
        return Segment(start, end, compression, data, members)
    with tempfile.TemporaryFile(prefix="plasmaboot-segment-") as out:
        if compression in (Compression.GZIP, Compression.XZ):
            end = decompress_stream(data, start, compression, out, budget[0])
        elif compression is Compression.ZSTD:
            end = zstd_frame_end(data, start)
            decompress_with_tool(["zstd", "-d", "-q", "-c"], data, start, end, out, budget[0])
        else:
            end = lz4_legacy_end(data, start)
            decompress_with_tool(["lz4", "-d", "-q", "-c"], data, start, end, out, budget[0])
        out.flush()
        unpacked = os.fstat(out.fileno()).st_size
        budget[0] -= unpacked
        payload: Payload = mmap.mmap(out.fileno(), 0, prot=mmap.PROT_READ) if unpacked else b""
    members, _ = read_archives(payload, 0, stop_at_first=False)
    return Segment(start, end, compression, payload, members)


def too_large(compression: Compression, start: int, limit: int) -> SegmentError:
    return SegmentError(
        f"{compression} segment at offset {start} unpacks to more than the "
        f"{MAX_UNPACKED_SIZE >> 20} MiB all segments of an initrd may unpack to "
        f"({limit >> 20} MiB were left for it)"
    )


def read_archives(data: Payload, start: int, stop_at_first: bool) -> tuple[list[Member], int]:
    """One archive (an uncompressed segment), or every archive in a decompressed stream."""
    members, pos = read_members(data, start)
    while not stop_at_first:
        pos = skip_padding(data, pos)
        if pos >= len(data):
            break
        more, pos = read_members(data, pos)
        members.extend(more)
    return members, pos


PADDING_BLOCK = 1 << 16


def skip_padding(data: Payload, pos: int, descriptor: int | None = None) -> int:
    """The offset of the first byte at or after `pos` that is not NUL padding (the kernel
    skips NULs between segments and between the archives of a stream). A block at a time;
    with the file's `descriptor`, the holes of a sparse file are stepped over unread."""
    while pos < len(data):
        if descriptor is not None:
            pos = next_data(descriptor, pos, len(data))
            # read, not the map: padding scanned leaves no pages resident
            block = os.pread(descriptor, PADDING_BLOCK, pos)
        else:
            block = data[pos : pos + PADDING_BLOCK]
        rest = block.lstrip(b"\0")
        if rest:
            return pos + len(block) - len(rest)
        pos += len(block)
    return pos


def next_data(descriptor: int, pos: int, size: int) -> int:
    """Where the file's next data (not a hole) starts at or after `pos`."""
    try:
        return os.lseek(descriptor, pos, os.SEEK_DATA)
    except OSError as exc:  # ENXIO: only a hole follows; else no SEEK_DATA here: scan
        return size if exc.errno == errno.ENXIO else pos


def decompress_stream(
    data: Payload, start: int, compression: Compression, out: IO[bytes], limit: int
) -> int:
    """Decompress one gzip member or xz stream starting at `start` into `out`, at most
    `limit` bytes; return where it ends."""
    decompressor: zlib._Decompress | lzma.LZMADecompressor
    if compression is Compression.GZIP:
        decompressor = zlib.decompressobj(wbits=31)
    else:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    written = 0
    pos = start
    try:
        while pos < len(data) and not decompressor.eof:
            chunk = data[pos : pos + PADDING_BLOCK]
            pos += len(chunk)
            feed: bytes | None = chunk
            while feed is not None:
                # bounded output per call: a bomb never becomes one huge bytes object
                piece = decompressor.decompress(feed, COPY_CHUNK)
                written += len(piece)
                if written > limit:
                    raise too_large(compression, start, limit)
                out.write(piece)
                feed = pending_input(decompressor)
    except (zlib.error, lzma.LZMAError) as exc:
        raise SegmentError(f"{compression} segment at offset {start} is corrupt: {exc}") from exc
    if not decompressor.eof:
        raise SegmentError(f"{compression} segment at offset {start} is truncated")
    return pos - len(decompressor.unused_data)


def pending_input(decompressor: zlib._Decompress | lzma.LZMADecompressor) -> bytes | None:
    """What to feed the decompressor again because its output was full; None when it
    wants the next chunk."""
    if decompressor.eof:
        return None
    if isinstance(decompressor, lzma.LZMADecompressor):
        return None if decompressor.needs_input else b""
    return decompressor.unconsumed_tail or None


def zstd_frame_end(data: Payload, start: int) -> int:
    """Where the zstd frame at `start` ends, from its frame and block headers (RFC 8878)."""
    descriptor = data[start + 4] if start + 4 < len(data) else 0
    single_segment = descriptor >> 5 & 1
    content_size_bytes = [single_segment, 2, 4, 8][descriptor >> 6]
    pos = start + 5 + (1 - single_segment) + [0, 1, 2, 4][descriptor & 3] + content_size_bytes
    while True:
        if pos + 3 > len(data):
            raise SegmentError(f"zstd segment at offset {start} is truncated")
        block = int.from_bytes(data[pos : pos + 3], "little")
        block_type, block_size = block >> 1 & 3, block >> 3
        if block_type == 3:
            raise SegmentError(f"zstd segment at offset {start}: reserved block type at {pos}")
        pos += 3 + (1 if block_type == 1 else block_size)
        if block & 1:
            break
    end = pos + 4 * (descriptor >> 2 & 1)
    if end > len(data):
        raise SegmentError(f"zstd segment at offset {start} is truncated")
    return end


def lz4_legacy_end(data: Payload, start: int) -> int:
    """Where the lz4 legacy stream at `start` ends: the format has no end marker, so it ends
    at the end of the file, at zero padding, or where a chunk size cannot be one."""
    pos = start + 4
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "little")
        if size == int.from_bytes(MAGICS[Compression.LZ4], "little"):
            pos += 4
            continue
        if size == 0 or size > LZ4_MAX_CHUNK:
            break
        if pos + 4 + size > len(data):
            raise SegmentError(f"lz4 segment at offset {start} is truncated")
        pos += 4 + size
    return pos


def decompress_with_tool(
    argv: list[str], data: Payload, start: int, end: int, out: IO[bytes], limit: int
) -> None:
    """Decompress `data[start:end]` with a tool into `out`, stopping it once `out` holds
    more than `limit` bytes (measured as it writes: a bomb ends the check, not the disk)."""
    with tempfile.TemporaryFile(prefix="plasmaboot-segment-in-") as source:
        for pos in range(start, end, COPY_CHUNK):
            source.write(data[pos : min(pos + COPY_CHUNK, end)])
        source.seek(0)
        with tempfile.TemporaryFile() as errors:
            with start_tool(argv, source, out, errors) as proc:
                waited = 0.0
                while proc.poll() is None:
                    if os.fstat(out.fileno()).st_size > limit or waited > TOOL_TIMEOUT:
                        proc.stop()
                        break
                    time.sleep(TOOL_POLL_SECONDS)
                    waited += TOOL_POLL_SECONDS
                code = proc.wait()
            if os.fstat(out.fileno()).st_size > limit:
                raise too_large(
                    Compression.ZSTD if argv[0] == "zstd" else Compression.LZ4, start, limit
                )
            if code != 0:
                errors.seek(0)
                message = errors.read().decode("utf-8", "replace").strip().splitlines()
                detail = message[-1] if message else f"exit code {code}"
                raise SegmentError(f"{argv[0]} segment at offset {start} is corrupt: {detail}")


def start_tool(argv: list[str], source: IO[bytes], out: IO[bytes], errors: IO[bytes]) -> Background:
    return start(argv, stdin=source, stdout=out, stderr=errors)
