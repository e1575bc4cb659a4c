"""serve.files: ranges per RFC 9110 (one range, or the whole file), If-Range with the strong
ETag, conditional requests; over HTTP against a real server, and the range parser alone."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD, KERNEL
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.files import ByteRange, Unsatisfiable, entity_tag, parse_range
from published_sets import Published, publish

SIZE = 1000


# --------------------------------------------------------------------------------------
# the parser alone


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=0-0", ByteRange(0, 0)),
        ("bytes=999-999", ByteRange(999, 999)),
        ("bytes=500-", ByteRange(500, 999)),
        ("bytes=0-5000", ByteRange(0, 999)),  # a last position past the end: to the end
        ("bytes=-1", ByteRange(999, 999)),
        ("bytes=-500", ByteRange(500, 999)),
        ("bytes=-5000", ByteRange(0, 999)),  # a suffix longer than the file: all of it
        ("BYTES=1-2", ByteRange(1, 2)),  # the unit is case-insensitive
        ("bytes= 1-2 ", ByteRange(1, 2)),
    ],
)
def test_one_satisfiable_range(header: str, expected: ByteRange) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header",
    ["bytes=-0", "bytes=1000-", "bytes=1000-2000", "bytes=5000-", "bytes=-00", "bytes=1000-1000"],
)
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, SIZE)


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-2",  # last before first (RFC 9110 14.1.1: invalid)
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=--1",
        "bytes=+1-2",
        "bytes=0x10-",
        "bytes=1.5-2",
        "items=0-1",  # another unit
        "bytes 0-1",
        "0-1",
        "",
        "bytes=0-1,2-3",  # several ranges: the whole file
        "bytes=0-1,-5",
        "bytes=0-1,",
        "bytes=,0-1",
        "bytes=-0,0-1",
        "bytes=" + ",".join(f"{i}-{i}" for i in range(200)),
        "bytes=\u0661-\u0662",  # digits of another script are not digits here
    ],
)
def test_ignored_ranges_give_the_whole_file(header: str) -> None:
    assert parse_range(header, SIZE) is None


def test_an_empty_file_satisfies_no_range() -> None:
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=0-", 0)
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=-5", 0)


def test_the_etag_changes_with_the_file(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"x" * 10)
    two.write_bytes(b"x" * 10)
    os.utime(two, ns=(os.stat(one).st_atime_ns, os.stat(one).st_mtime_ns))
    # same size, same mtime (a copy2), other file: another tag
    assert entity_tag(os.stat(one)) != entity_tag(os.stat(two))
    assert entity_tag(os.stat(one)) == entity_tag(os.stat(one))
    assert entity_tag(os.stat(one)).startswith('"') and not entity_tag(os.stat(one)).startswith(
        'W/"'
    )


# --------------------------------------------------------------------------------------
# over HTTP


@pytest.fixture
def published(tmp_path: Path) -> Published:
    return publish(tmp_path, tmp_path / "root", seed=1)


@pytest.fixture
def server(published: Published) -> Iterator[ServerThread]:
    with ServerThread(published.root) as srv:
        yield srv


def get(
    srv: ServerThread, path: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_if_range_with_the_current_etag_gives_the_range(
    server: ServerThread, published: Published
) -> None:
    _, headers, _ = get(server, f"/cp/{INITRD}", {})
    tag = headers["etag"]
    status, reply, body = get(server, f"/cp/{INITRD}", {"Range": "bytes=10-19", "If-Range": tag})
    assert status == 206 and body == published.files[INITRD][10:20]
    assert reply["content-range"] == f"bytes 10-19/{len(published.files[INITRD])}"


@pytest.mark.parametrize(
    "condition",
    [
        '"another-tag"',
        "W/{tag}",  # a weak tag never matches for If-Range
        "{tag}x",
        "Mon, 01 Jan 2001 00:00:00 GMT",  # another date
        "not a date",
        "",
    ],
)
def test_if_range_that_does_not_name_the_file_gives_it_whole(
    server: ServerThread, published: Published, condition: str
) -> None:
    _, headers, _ = get(server, f"/cp/{INITRD}", {})
    condition = condition.replace("{tag}", headers["etag"])
    status, reply, body = get(
        server, f"/cp/{INITRD}", {"Range": "bytes=10-19", "If-Range": condition}
    )
    assert status == 200 and body == published.files[INITRD]
    assert "content-range" not in reply


def test_a_resumed_download_after_a_publish_gets_the_new_file_whole(
    server: ServerThread, published: Published, tmp_path: Path
) -> None:
    """The splice the issue saw: half of one initrd, the rest of another."""
    _, first, _ = get(server, f"/cp/{INITRD}", {"Range": "bytes=0-49999"})
    newer = publish(tmp_path, published.root, seed=2)
    headers = {"Range": "bytes=50000-", "If-Range": first["etag"]}
    status, _, body = get(server, f"/cp/{INITRD}", headers)
    assert status == 200 and body == newer.files[INITRD]


def test_if_range_with_the_exact_date_gives_the_range(
    server: ServerThread, published: Published
) -> None:
    _, headers, _ = get(server, f"/cp/{KERNEL}", {})
    status, _, body = get(
        server, f"/cp/{KERNEL}", {"Range": "bytes=0-9", "If-Range": headers["last-modified"]}
    )
    assert status == 206 and body == published.files[KERNEL][:10]


@pytest.mark.parametrize("header", ["bytes=-0", "bytes=100000000-", "bytes=-0 "])
def test_unsatisfiable_ranges_are_416(server: ServerThread, header: str) -> None:
    status, reply, body = get(server, f"/cp/{KERNEL}", {"Range": header})
    assert status == 416 and body == b""
    assert reply["content-range"] == "bytes */4096"


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-9", "bytes=5-2", "bytes=x", "pages=0-1", "bytes=0-1,-0"]
)
def test_several_or_invalid_ranges_get_the_whole_file(
    server: ServerThread, published: Published, header: str
) -> None:
    status, reply, body = get(server, f"/cp/{KERNEL}", {"Range": header})
    assert status == 200 and body == published.files[KERNEL]
    assert reply["content-length"] == "4096" and "content-range" not in reply


def test_head_ignores_range(server: ServerThread) -> None:
    status, reply, body = get(server, f"/cp/{KERNEL}", {"Range": "bytes=0-9"}, method="HEAD")
    assert status == 200 and body == b"" and reply["content-length"] == "4096"


def test_if_match_and_if_unmodified_since(server: ServerThread) -> None:
    _, headers, _ = get(server, f"/cp/{KERNEL}", {})
    assert get(server, f"/cp/{KERNEL}", {"If-Match": headers["etag"]})[0] == 200
    assert get(server, f"/cp/{KERNEL}", {"If-Match": "*"})[0] == 200
    assert get(server, f"/cp/{KERNEL}", {"If-Match": '"other"'})[0] == 412
    assert get(server, f"/cp/{KERNEL}", {"If-Match": f"W/{headers['etag']}"})[0] == 412
    old = formatdate(0, usegmt=True)
    assert get(server, f"/cp/{KERNEL}", {"If-Unmodified-Since": old})[0] == 412
    assert get(server, f"/cp/{KERNEL}", {"If-None-Match": f"W/{headers['etag']}"})[0] == 304
    assert get(server, f"/cp/{KERNEL}", {"If-Modified-Since": "junk"})[0] == 200


def test_the_server_header_names_no_version(server: ServerThread) -> None:
    for path in (f"/cp/{KERNEL}", "/cp/netboot.ipxe", "/boot.ipxe", "/nope", "/cp/%2e%2e"):
        _, headers, _ = get(server, path, {})
        assert headers["server"] == "plasmaboot", path
