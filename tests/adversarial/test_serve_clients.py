"""Hostile cases against `serve` (issue 15, "serve under hostile clients"): links swapped
inside the root while requests run, what a node may download, the boot menu and the chain
of `?profile=`. Connections (deadlines, the cap, accept failures) are in
tests/serve/test_connections.py, ranges and validators in tests/serve/test_files.py."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import BUILD_LOG, INITRD, IPXE, KERNEL, MANIFEST, SETS_DIR
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.serve.app import ServerThread

SECRET = b"SECRET-OUTSIDE-THE-ROOT\n"
REQUESTS_PER_CASE = 2000


def make_set(source: Path, label: str, marker: str) -> Path:
    source.mkdir(parents=True)
    (source / KERNEL).write_bytes(f"kernel-{marker}\n".encode() * 100)
    (source / INITRD).write_bytes(f"initrd-{marker}\n".encode() * 100)
    (source / IPXE).write_text(render_netboot_script(label, [f"marker={marker}"]))
    (source / MANIFEST).write_text('{"backend": "debian"}\n')
    (source / BUILD_LOG).write_text("running as root in /home/builder\n")
    return source


@pytest.fixture
def root(tmp_path: Path) -> Path:
    artifacts = tmp_path / "root"
    names = (KERNEL, INITRD, IPXE, MANIFEST, BUILD_LOG)
    publish_atomically(make_set(tmp_path / "src", "cp", "good"), artifacts, "cp", names)
    return artifacts


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the root that looks like a set, every file the secret."""
    directory = tmp_path / "outside"
    directory.mkdir()
    for name in (KERNEL, INITRD, MANIFEST, BUILD_LOG):
        (directory / name).write_bytes(SECRET)
    (directory / IPXE).write_text(render_netboot_script("cp", ["secret=SECRET-OUTSIDE"]))
    (directory / "passwd").write_bytes(SECRET)
    return directory


@pytest.fixture
def server(root: Path) -> Iterator[ServerThread]:
    with ServerThread(root, operator_files=True) as srv:
        yield srv


def swap_forever(target: Path, makers: list[Callable[[Path], None]], stop: threading.Event) -> None:
    """Replace `target` atomically (rename over it) with each maker's result in turn."""
    temp = target.with_name(f".swap-{target.name}")
    while not stop.is_set():
        for make in makers:
            if temp.is_symlink() or temp.exists():
                temp.unlink()
            make(temp)
            os.replace(temp, target)


def link_to(destination: Path | str) -> Callable[[Path], None]:
    return lambda temp: temp.symlink_to(destination)


def hard_link_of(original: Path) -> Callable[[Path], None]:
    return lambda temp: os.link(original, temp)


def hammer(server: ServerThread, paths: list[str], count: int) -> list[tuple[int, bytes]]:
    def worker(share: int) -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        replies = []
        try:
            for index in range(share):
                conn.request("GET", paths[index % len(paths)])
                response = conn.getresponse()
                replies.append((response.status, response.read()))
        finally:
            conn.close()
        return replies

    with ThreadPoolExecutor(4) as pool:
        return [reply for part in pool.map(worker, [count // 4] * 4) for reply in part]


def current_set(root: Path) -> Path:
    return root / os.readlink(root / "cp")


SWAPS = ["label-link", "set-file", "set-directory", "sets-directory", "script", "passwd-link"]


@pytest.mark.parametrize("case", SWAPS)
def test_a_link_swapped_during_requests_never_serves_a_byte_outside_the_root(
    server: ServerThread, root: Path, outside: Path, tmp_path: Path, case: str
) -> None:
    good_set = current_set(root)
    keep = tmp_path / "keep"  # originals, hard-linked back in place
    keep.mkdir()
    for name in (KERNEL, INITRD, IPXE):
        os.link(good_set / name, keep / name)
    paths = [f"/cp/{KERNEL}", f"/cp/{INITRD}", f"/cp/{IPXE}", f"/cp/{MANIFEST}"]
    paths.append(f"/sets/{good_set.name}/{INITRD}")
    if case == "label-link":  # root/cp: the current set, or a directory outside
        target, makers = root / "cp", [link_to(Path(SETS_DIR) / good_set.name), link_to(outside)]
    elif case == "set-file":  # root/.sets/cp-ID/initrd: the file, or a link to the secret
        target = good_set / INITRD
        makers = [hard_link_of(keep / INITRD), link_to(outside / INITRD)]
    elif case == "set-directory":  # root/.sets/cp-ID: moved aside and back, or a link out
        aside = root / SETS_DIR / f"{good_set.name}-aside"
        os.rename(good_set, aside)
        target, makers = good_set, [link_to(aside.name), link_to(outside)]
    elif case == "sets-directory":  # root/.sets itself
        aside = root / ".sets-aside"
        os.rename(root / SETS_DIR, aside)
        target, makers = root / SETS_DIR, [link_to(aside.name), link_to(outside.parent)]
    elif case == "script":  # the set's netboot.ipxe: the script, or one outside
        target = good_set / IPXE
        makers = [hard_link_of(keep / IPXE), link_to(outside / IPXE)]
    else:  # a link inside the set to a file of the system
        target = good_set / INITRD
        makers = [hard_link_of(keep / INITRD), link_to(outside / "passwd")]
        paths = [f"/cp/{INITRD}"]
    stop = threading.Event()
    swapper = threading.Thread(target=swap_forever, args=(target, makers, stop))
    swapper.start()
    try:
        replies = hammer(server, paths, REQUESTS_PER_CASE)
    finally:
        stop.set()
        swapper.join()
    assert len(replies) == REQUESTS_PER_CASE
    leaked = [body for _, body in replies if b"SECRET" in body]
    assert not leaked, f"{len(leaked)} of {len(replies)} replies held bytes from outside"
    assert {status for status, _ in replies} <= {200, 404}
    ok = [body for status, body in replies if status == 200]
    # (a renamed .sets is not the layout: nothing of it is served, and nothing from outside)
    assert ok or case == "sets-directory", "no request was answered at all"
    assert all(b"good" in body or body.startswith(b"{") for body in ok)


# --------------------------------------------------------------------------------------
# what a node may download


def get(server: ServerThread, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("name", [MANIFEST, BUILD_LOG, "manifest.json.gz", "build.log.1"])
@pytest.mark.parametrize("prefix", ["/cp", "/sets/{set}"])
def test_nodes_get_no_manifest_or_build_log_by_default(root: Path, name: str, prefix: str) -> None:
    with ServerThread(root) as srv:
        path = f"{prefix.format(set=current_set(root).name)}/{name}"
        assert get(srv, path)[0] == 404
        assert get(srv, f"/cp/{KERNEL}")[0] == 200


@pytest.mark.parametrize("name", [MANIFEST, BUILD_LOG])
def test_operators_may_ask_for_them(server: ServerThread, root: Path, name: str) -> None:
    status, _, body = get(server, f"/cp/{name}")
    assert status == 200 and body == (current_set(root) / name).read_bytes()


@pytest.mark.parametrize(
    "path", ["/cp/bzImage", "/cp/netboot.ipxe", "/boot.ipxe", "/nope", "/cp/..%2f", "/%00"]
)
def test_no_answer_names_a_version(server: ServerThread, path: str) -> None:
    _, headers, body = get(server, path)
    assert headers.get("server") == "plasmaboot"
    assert b"aiohttp" not in body and b"Python" not in body


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,  # TLS hello
    ],
    ids=["nul", "no-method", "long-header", "version", "tls"],
)
def test_requests_aiohttp_refuses_name_no_version_either(server: ServerThread, raw: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], reply[:200]
    assert b"\r\nServer: plasmaboot" in head and b"aiohttp" not in reply, head


# --------------------------------------------------------------------------------------
# the menu and ?profile=


def add_label(root: Path, tmp_path: Path, label: str, damage: str = "") -> None:
    """Publish `label`, then damage it on disk as `damage` says."""
    publish_atomically(
        make_set(tmp_path / f"src-{label}", label, label), root, label, (KERNEL, INITRD, IPXE)
    )
    directory = current_set(root).parent / os.readlink(root / label).split("/")[-1]
    if damage == "no-kernel":
        (directory / KERNEL).unlink()
    elif damage == "no-initrd":
        (directory / INITRD).unlink()
    elif damage == "forged-script":
        (directory / IPXE).write_text("#!ipxe\nchain http://elsewhere/x\n")
    elif damage == "no-script":
        (directory / IPXE).unlink()
    elif damage == "fifo-kernel":
        (directory / KERNEL).unlink()
        os.mkfifo(directory / KERNEL)
    elif damage == "kernel-link-out":
        (directory / KERNEL).unlink()
        (directory / KERNEL).symlink_to("/etc/hostname")


DAMAGES = ["no-kernel", "no-initrd", "forged-script", "no-script", "fifo-kernel", "kernel-link-out"]


def test_the_menu_offers_only_bootable_sets_and_times_out(
    server: ServerThread, root: Path, tmp_path: Path
) -> None:
    add_label(root, tmp_path, "fine")
    for index, damage in enumerate(DAMAGES):
        add_label(root, tmp_path, f"broken{index}", damage)
    (root / "junk").mkdir()
    (root / "dangling").symlink_to("nowhere")
    (root / "out").symlink_to("/etc")
    status, _, body = get(server, "/boot.ipxe")
    text = body.decode()
    assert status == 200
    items = [line.split()[1] for line in text.splitlines() if line.startswith("item ")]
    assert items == ["cp", "fine"], text
    assert "choose --timeout 10000 --default cp target || exit 1\n" in text


def test_the_menu_timeout_is_an_option(root: Path) -> None:
    with ServerThread(root, menu_timeout=2.5) as srv:
        text = get(srv, "/boot.ipxe")[2].decode()
    assert "choose --timeout 2500 --default cp target" in text


@pytest.mark.parametrize(
    "profile",
    [*(f"broken{i}" for i in range(len(DAMAGES))), "junk", "dangling", "out", "sets", ".sets",
     "boot.ipxe", "../cp", "cp/..", "", "CP", "cp%00", "cp\n", "/cp", "a" * 300],
)  # fmt: skip
def test_profile_chains_only_to_bootable_sets(
    server: ServerThread, root: Path, tmp_path: Path, profile: str
) -> None:
    for index, damage in enumerate(DAMAGES):
        add_label(root, tmp_path, f"broken{index}", damage)
    (root / "junk").mkdir()
    (root / "dangling").symlink_to("nowhere")
    (root / "out").symlink_to("/etc")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        from urllib.parse import quote

        conn.request("GET", f"/boot.ipxe?profile={quote(profile, safe='')}")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 404, body
    assert b"chain" not in body
    assert get(server, "/boot.ipxe?profile=cp")[2].endswith(b"/cp/netboot.ipxe\n")
