"""Files of a set, opened safely and sent with the HTTP validators and ranges nodes use.

Opening: the path is resolved once (every symlink followed, the result must lie inside the
served root), then walked again from a descriptor of the root, one component at a time with
`O_NOFOLLOW`. A symlink swapped in after the check makes the walk fail (404) instead of
leading outside the root: what is sent is always the file that was checked.

Sending: a strong ETag made of the file's identity (device, inode, size, mtime in ns: a set's
files are never rewritten in place, a publish makes new files); `If-Match`, `If-None-Match`,
`If-Modified-Since`, `If-Unmodified-Since`; `Range` per RFC 9110 section 14 with one decision:
a request for several ranges gets the whole file (200), as a server may ignore `Range`.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from plasmaboot.serve.paths import resolve_within

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
BYTE_RANGE = re.compile(r"\s*(?:([0-9]+)-([0-9]*)|-([0-9]+))\s*")
OCTET_STREAM = "application/octet-stream"


def open_within(root: Path, *parts: str) -> BinaryIO | None:
    """`root/parts...` opened for reading if it resolves to a regular file inside `root`,
    opened along the path that was checked without following any link; else None."""
    resolved = resolve_within(root, *parts)
    if resolved is None or resolved == root:
        return None
    components = resolved.relative_to(root).parts
    try:
        directory = os.open(root, DIRECTORY_FLAGS)
    except OSError:
        return None
    try:
        for component in components[:-1]:
            following = os.open(component, DIRECTORY_FLAGS, dir_fd=directory)
            os.close(directory)
            directory = following
        descriptor = os.open(components[-1], FILE_FLAGS, dir_fd=directory)
    except OSError:  # ELOOP: a link appeared after the check; ENOENT, ENOTDIR, EACCES
        return None
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # a FIFO or device: never read
        os.close(descriptor)
        return None
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


@contextmanager
def opened_within(root: Path, *parts: str) -> Iterator[BinaryIO | None]:
    handle = open_within(root, *parts)
    try:
        yield handle
    finally:
        if handle is not None:
            handle.close()


def read_within(root: Path, *parts: str, limit: int) -> bytes | None:
    """At most `limit` bytes of the file `open_within` opens, or None."""
    with opened_within(root, *parts) as handle:
        if handle is None:
            return None
        try:
            return handle.read(limit)
        except OSError:
            return None


def entity_tag(info: os.stat_result) -> str:
    """A strong validator: another file (a publish, a new set) always gives another tag."""
    return f'"{info.st_dev:x}-{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}"'


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(ValueError):
    """Every range asked for lies beyond the file (416)."""


def parse_range(header: str, size: int) -> ByteRange | None:
    """The one range to send for a `Range` header, or None to send the whole file.

    None for: a unit other than `bytes`, a syntax error (a last position before the first,
    no digits, junk), and several ranges (the whole file answers them all). Unsatisfiable
    for a single range starting at or past the end, and a suffix of length 0 (`bytes=-0`).
    """
    unit, _, ranges = header.partition("=")
    if unit.strip().lower() != "bytes" or not ranges.strip():
        return None
    specs = ranges.split(",")
    if len(specs) != 1:
        return None
    match = BYTE_RANGE.fullmatch(specs[0])
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        length = int(suffix)
        if length == 0 or size == 0:
            raise Unsatisfiable(header)
        return ByteRange(max(size - length, 0), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid syntax (RFC 9110 14.1.1): ignored
    if start >= size:
        raise Unsatisfiable(header)
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end)


def tag_matches(header: str, tag: str, weak: bool) -> bool:
    """Whether an `If-Match`/`If-None-Match` list names `tag` (`*` names every tag)."""
    listed = [item.strip() for item in header.split(",")]
    if "*" in listed:
        return True
    if weak:
        listed = [item.removeprefix("W/") for item in listed]
    return tag in listed


def http_date(header: str) -> float | None:
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def range_applies(request: web.BaseRequest, tag: str, modified: int) -> bool:
    """`If-Range` (RFC 9110 13.1.5): the range is sent only when the validator names this
    very file: an ETag compared strongly, or a date equal to its modification time; anything
    else (a weak or another tag, another date, junk) gets the whole file."""
    condition = request.headers.get(hdrs.IF_RANGE)
    if condition is None:
        return True
    condition = condition.strip()
    if condition.startswith(('"', "W/")):
        return condition == tag
    date = http_date(condition)
    return date is not None and int(date) == modified


def precondition_status(request: web.BaseRequest, tag: str, modified: int) -> int | None:
    """412 or 304 when a conditional header says so (RFC 9110 13.2.2), else None."""
    headers = request.headers
    if (match := headers.get(hdrs.IF_MATCH)) is not None:
        if not tag_matches(match, tag, weak=False):
            return 412
    elif (since := headers.get(hdrs.IF_UNMODIFIED_SINCE)) is not None:
        date = http_date(since)
        if date is not None and modified > date:
            return 412
    if (none_match := headers.get(hdrs.IF_NONE_MATCH)) is not None:
        if tag_matches(none_match, tag, weak=True):
            return 304
    elif (since := headers.get(hdrs.IF_MODIFIED_SINCE)) is not None:
        date = http_date(since)
        if date is not None and modified <= date:
            return 304
    return None


class OpenFileResponse(web.StreamResponse):
    """An already opened file, sent with sendfile; the response closes it."""

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__()
        self._handle = handle
        self._span: ByteRange | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # already sent (a middleware prepared it before aiohttp did)
            return await super().prepare(request)
        try:
            return await self._prepare(request)
        finally:
            self._handle.close()

    async def _prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        info = os.fstat(self._handle.fileno())
        size = info.st_size
        tag = entity_tag(info)
        modified = int(info.st_mtime)
        self.etag = tag.strip('"')
        self.last_modified = modified
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        status = precondition_status(request, tag, modified)
        if status is not None:
            self.set_status(status)
            self.content_length = 0 if status == 412 else None
            return await super().prepare(request)
        span = None
        header = request.headers.get(hdrs.RANGE)
        if header is not None and request.method == "GET" and range_applies(request, tag, modified):
            try:
                span = parse_range(header, size)
            except Unsatisfiable:
                self.set_status(416)
                self.headers[hdrs.CONTENT_RANGE] = f"bytes */{size}"
                self.content_length = 0
                return await super().prepare(request)
        self.content_type = OCTET_STREAM
        if span is None:
            span = ByteRange(0, size - 1)
        else:
            self.set_status(206)
            self.headers[hdrs.CONTENT_RANGE] = f"bytes {span.start}-{span.end}/{size}"
        self.content_length = span.length
        writer = await super().prepare(request)
        if request.method == "HEAD" or span.length <= 0:
            return writer
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        loop = asyncio.get_running_loop()
        await loop.sendfile(transport, self._handle, span.start, span.length)
        with suppress(ConnectionError):
            await super().write_eof()
        return writer
