"""serve.app, the boot server over HTTP: files, ranges, validators, rendered scripts, path
safety, consistent sets while publishing, the access log and --listen."""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.serve.app import ServerThread, parse_listen
from published_sets import SCRIPT, SERVED_NAMES, Published, publish


@pytest.fixture
def published(tmp_path: Path) -> Published:
    return publish(tmp_path, tmp_path / "root", seed=1)


@pytest.fixture
def server(published: Published) -> Iterator[ServerThread]:
    with ServerThread(published.root, access_log=published.root.parent / "server.log") as srv:
        yield srv


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def request(
    srv: ServerThread, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def raw_request(srv: ServerThread, target: bytes) -> int:
    """Send a request line exactly as given (no client normalisation); return the status."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


# --------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize("name", [KERNEL, INITRD])
def test_get_serves_exact_bytes(server: ServerThread, published: Published, name: str) -> None:
    reply = request(server, f"/cp/{name}")
    assert reply.status == 200
    assert reply.body == published.files[name]
    assert reply.headers["content-length"] == str(len(published.files[name]))
    assert reply.headers["accept-ranges"] == "bytes"
    assert "etag" in reply.headers and "last-modified" in reply.headers


def test_exact_set_urls_serve_the_set(server: ServerThread, published: Published) -> None:
    reply = request(server, f"/sets/{published.set_name}/{INITRD}")
    assert reply.status == 200 and reply.body == published.files[INITRD]


def test_head_has_length_and_no_body(server: ServerThread, published: Published) -> None:
    reply = request(server, f"/cp/{INITRD}", method="HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["content-length"] == str(len(published.files[INITRD]))


def test_range_first_bytes(server: ServerThread, published: Published) -> None:
    reply = request(server, f"/cp/{INITRD}", headers={"Range": "bytes=0-99"})
    size = len(published.files[INITRD])
    assert reply.status == 206
    assert reply.body == published.files[INITRD][:100]
    assert reply.headers["content-range"] == f"bytes 0-99/{size}"
    assert reply.headers["content-length"] == "100"


def test_range_suffix(server: ServerThread, published: Published) -> None:
    reply = request(server, f"/cp/{INITRD}", headers={"Range": "bytes=-500"})
    size = len(published.files[INITRD])
    assert reply.status == 206
    assert reply.body == published.files[INITRD][-500:]
    assert reply.headers["content-range"] == f"bytes {size - 500}-{size - 1}/{size}"


def test_range_unsatisfiable(server: ServerThread, published: Published) -> None:
    size = len(published.files[INITRD])
    reply = request(server, f"/cp/{INITRD}", headers={"Range": f"bytes={size + 10}-"})
    assert reply.status == 416
    assert reply.headers["content-range"] == f"bytes */{size}"


def test_etag_and_last_modified_give_304(server: ServerThread) -> None:
    first = request(server, f"/cp/{KERNEL}")
    by_etag = request(server, f"/cp/{KERNEL}", headers={"If-None-Match": first.headers["etag"]})
    assert by_etag.status == 304 and by_etag.body == b""
    since = {"If-Modified-Since": first.headers["last-modified"]}
    assert request(server, f"/cp/{KERNEL}", headers=since).status == 304
    other = request(server, f"/cp/{KERNEL}", headers={"If-None-Match": '"something-else"'})
    assert other.status == 200


@pytest.mark.parametrize(
    "path",
    ["/cp", "/cp/", "/sets", "/sets/", "/nope/bzImage", "/cp/missing", "/cp/a/b"],
)
def test_no_directory_listings_or_unknown_paths(server: ServerThread, path: str) -> None:
    assert request(server, path).status == 404


def test_exact_set_listing_is_404(server: ServerThread, published: Published) -> None:
    assert request(server, f"/sets/{published.set_name}/").status == 404


def test_other_methods_refused(server: ServerThread) -> None:
    assert request(server, f"/cp/{INITRD}", method="POST").status == 405
    assert request(server, f"/cp/{INITRD}", method="PUT").status == 405


# --------------------------------------------------------------------------------------
# scripts


def test_netboot_script_points_at_the_exact_set(server: ServerThread, published: Published) -> None:
    reply = request(server, f"/cp/{IPXE}", headers={"Host": "10.0.2.2:8123"})
    assert reply.status == 200
    text = reply.body.decode()
    prefix = f"http://10.0.2.2:8123/sets/{published.set_name}"
    assert text == (
        "#!ipxe\n"
        "# plasmaboot: cp\n"
        f"kernel {prefix}/bzImage initrd=initrd console=ttyS0\n"
        f"initrd --name initrd {prefix}/initrd\n"
        "boot\n"
    )
    assert reply.headers["cache-control"] == "no-store"


def test_netboot_script_uses_own_address_by_default(server: ServerThread) -> None:
    text = request(server, f"/cp/{IPXE}").body.decode()
    assert f"kernel {server.base_url}/sets/" in text
    assert "${boot-server}" not in text


def test_boot_menu_lists_labels(server: ServerThread, tmp_path: Path) -> None:
    publish(tmp_path, server.root, seed=7, label="worker")
    plain = server.root / "plain"  # a plain copy with no manifest: listed by label alone
    plain.mkdir()
    (plain / IPXE).write_text(SCRIPT)
    (plain / KERNEL).write_text("k")
    (plain / INITRD).write_text("i")
    (server.root / "junk").mkdir()  # no boot script: not listed
    text = request(server, "/boot.ipxe", headers={"Host": "10.0.2.2:80"}).body.decode()
    assert text.startswith("#!ipxe\nmenu ")
    assert "item cp cp (debian/bookworm, kernel 6.1.0, built 2026-01-01T00:00:00Z)\n" in text
    assert "item worker worker (" in text
    assert "item plain plain\n" in text
    assert "junk" not in text
    assert "choose --timeout 10000 --default cp target || exit 1\n" in text
    assert "chain http://10.0.2.2:80/${target}/netboot.ipxe\n" in text


def test_boot_profile_chains_to_label(server: ServerThread) -> None:
    reply = request(server, "/boot.ipxe?profile=cp", headers={"Host": "10.0.2.2:80"})
    assert reply.body.decode() == "#!ipxe\nchain http://10.0.2.2:80/cp/netboot.ipxe\n"
    assert request(server, "/boot.ipxe?profile=nope").status == 404
    assert request(server, "/boot.ipxe?profile=../etc").status == 404


def test_boot_menu_with_nothing_published(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with ServerThread(tmp_path / "empty") as srv:
        text = request(srv, "/boot.ipxe").body.decode()
    assert "no images are published" in text and "exit 1" in text


@pytest.mark.parametrize(
    "forged",
    [
        SCRIPT + "chain http://elsewhere/x\n",
        SCRIPT.replace("boot\n", "initrd http://elsewhere/extra.img\nboot\n"),
        SCRIPT.replace("console=ttyS0", "console=ttyS0 || shell"),
        "\n" + SCRIPT,
    ],
)
def test_a_script_of_another_shape_is_never_served(tmp_path: Path, forged: str) -> None:
    """serve reads a set's script with the one parser and writes it with the one renderer:
    a script someone changed on disk is refused, and says so in the server's log."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SERVED_NAMES:
        (source / name).write_text(SCRIPT if name == IPXE else name)
    publish_atomically(source, tmp_path / "root", "cp", SERVED_NAMES)
    (tmp_path / "root" / "cp" / IPXE).write_text(forged)  # changed on disk after publishing
    with ServerThread(tmp_path / "root", access_log=tmp_path / "access.log") as running:
        reply = request(running, f"/cp/{IPXE}")
    assert reply.status == 404 and b"damaged" in reply.body
    assert "is not plasmaboot's" in (tmp_path / "access.log").read_text()


# --------------------------------------------------------------------------------------
# path safety


TRAVERSALS = [
    b"/../secret.txt",
    b"/cp/../../secret.txt",
    b"/%2e%2e/secret.txt",
    b"/cp/%2e%2e/%2e%2e/secret.txt",
    b"/cp%2f..%2f..%2fsecret.txt",
    b"/cp/..%2f..%2fsecret.txt",
    b"/cp/..%5c..%5csecret.txt",
    b"/cp\\..\\..\\secret.txt",
    b"/cp/initrd%00",
    b"/cp/initrd%00.txt",
    b"/.sets/x/initrd",
    b"/cp/.secret",
    b"//secret.txt",
    b"/escape/secret.txt",
    b"/escape/netboot.ipxe",
    b"/plain/bzImage",
    b"/plain/netboot.ipxe",
    b"http://x/../secret.txt",
    b"/sets/..%2f..%2fsecret.txt/initrd",
    b"/sets/../secret.txt",
]


def test_traversal_refused_and_server_keeps_serving(
    server: ServerThread, published: Published
) -> None:
    outside = published.root.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET\n")
    (outside / IPXE).write_text("#!ipxe\necho SECRET\n")
    (published.root.parent / "secret.txt").write_text("SECRET\n")
    (published.root / "escape").symlink_to(outside)
    plain = published.root / "plain"
    plain.mkdir()
    (plain / KERNEL).symlink_to(outside / "secret.txt")
    (plain / IPXE).symlink_to(outside / IPXE)
    for target in TRAVERSALS:
        status = raw_request(server, target)
        assert status in (400, 404), target
    assert request(server, f"/cp/{INITRD}").body == published.files[INITRD]


def test_nul_byte_in_request_line_does_not_stop_the_server(
    server: ServerThread, published: Published
) -> None:
    assert raw_request(server, b"/cp/initrd\x00") == 400
    assert request(server, f"/cp/{KERNEL}").body == published.files[KERNEL]


# --------------------------------------------------------------------------------------
# publishing while serving


def test_publish_during_serving_keeps_sets_consistent(
    server: ServerThread, published: Published, tmp_path: Path
) -> None:
    old_script = request(server, f"/cp/{IPXE}").body.decode()
    new = publish(tmp_path, published.root, seed=2)
    assert new.set_name != published.set_name

    old_urls = re.findall(r"http://\S+/(?:bzImage|initrd)", old_script)
    assert len(old_urls) == 2
    for url in old_urls:
        name = url.rsplit("/", 1)[1]
        assert request(server, url.removeprefix(server.base_url)).body == published.files[name]

    new_script = request(server, f"/cp/{IPXE}").body.decode()
    assert f"/sets/{new.set_name}/" in new_script
    for url in re.findall(r"http://\S+/(?:bzImage|initrd)", new_script):
        name = url.rsplit("/", 1)[1]
        assert request(server, url.removeprefix(server.base_url)).body == new.files[name]
    assert request(server, f"/cp/{INITRD}").body == new.files[INITRD]


# --------------------------------------------------------------------------------------
# access log and --listen


def test_access_log_has_a_line_per_request(published: Published, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with ServerThread(published.root, access_log=log) as srv:
        request(srv, f"/cp/{INITRD}")
        request(srv, f"/cp/{INITRD}", method="HEAD")
        request(srv, "/cp/nothing")
    lines = log.read_text().splitlines()  # complete once the server has stopped
    size = len(published.files[INITRD])
    assert len(lines) == 3
    assert re.fullmatch(rf"\S+ 127\.0\.0\.1 GET /cp/initrd 200 {size} \d+\.\d+s", lines[0])
    assert re.fullmatch(r"\S+ 127\.0\.0\.1 HEAD /cp/initrd 200 0 \d+\.\d+s", lines[1])
    assert re.fullmatch(r"\S+ 127\.0\.0\.1 GET /cp/nothing 404 \d+ \d+\.\d+s", lines[2])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":0", ("127.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:80", ("localhost", 80)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


def test_the_admin_listener_has_a_small_cap_of_its_own() -> None:
    """A crowd on --admin-listen cannot take the boot listener's descriptors: 16 at most,
    with the boot listener's deadlines."""
    from plasmaboot.serve.app import ADMIN_CONNECTIONS, Limits, admin_limits

    boot = Limits(request_timeout=12.0, idle_timeout=3.0, max_connections=200)
    assert admin_limits(boot) == Limits(12.0, 3.0, ADMIN_CONNECTIONS)
    assert admin_limits(None).max_connections == ADMIN_CONNECTIONS == 16


def test_the_boot_default_leaves_the_admin_listener_its_descriptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a low descriptor limit, the boot listener's default cap shrinks by what the
    admin listener may hold; a cap the user chose, or no admin listener, is left alone."""
    from plasmaboot.serve import connections
    from plasmaboot.serve.app import Limits, admin_reserve, boot_limits

    monkeypatch.setattr(connections, "soft_descriptor_limit", lambda: 512)
    alone = connections.default_connection_limit()
    beside = boot_limits(None, admin=True, chosen=False).max_connections
    assert beside == connections.default_connection_limit(admin_reserve())
    assert 0 < beside < alone <= connections.MAX_CONNECTIONS
    # every descriptor counted: two per download, the bursts, the admin share, the reserve
    backlog = connections.accept_backlog()
    assert 2 * beside + 2 * backlog + admin_reserve() + connections.RESERVED_DESCRIPTORS <= 512
    chosen = Limits(max_connections=300)
    assert boot_limits(chosen, admin=True, chosen=True) == chosen
    assert boot_limits(None, admin=False, chosen=False).max_connections == alone
