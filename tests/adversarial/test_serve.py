"""Adversarial probe of `serve --inventory`: hostile `mac=` values and malformed requests,
clients that never finish a request, many clients at once, and the inventory or a set's
files replaced under the running server. The server answers with a script or a refusal,
logs one line, keeps the previous inventory when a reload fails, and never hangs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.serve import machines as serve_machines
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.machines import InventoryWatch

INVENTORY = '[defaults]\nprofile = "worker"\n\n[machines.w1]\nmac = "52:54:00:12:34:01"\n'
KNOWN = "52:54:00:12:34:01"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    source = tmp_path / "worker"
    source.mkdir()
    for name in (KERNEL, INITRD, MANIFEST):
        (source / name).write_bytes(name.encode() * 1000)
    (source / IPXE).write_text(render_netboot_script("worker", ["console=ttyS0,115200"]))
    artifacts = tmp_path / "artifacts"
    publish_atomically(source, artifacts, "worker", (KERNEL, INITRD, IPXE, MANIFEST))
    return artifacts


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "machines.toml"
    path.write_text(INVENTORY)
    settle(path)
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def server(root: Path, inventory: Path, log: Path) -> Iterator[ServerThread]:
    watch = InventoryWatch(inventory, ProfileStore())
    with ServerThread(root, access_log=log, inventory=watch, request_timeout=2) as running:
        yield running


def settle(path: Path, seconds_ago: float = 10) -> None:
    """An mtime well in the past: the edit is not "racy" (see serve.machines)."""
    stamp = time.time_ns() - int(seconds_ago * 1e9)
    os.utime(path, ns=(stamp, stamp), follow_symlinks=False)


def get(server: ServerThread, path: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.base_url + path, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def script_for(server: ServerThread, mac: str = KNOWN, timeout: float = 10) -> str:
    status, text = get(server, f"/boot.ipxe?mac={mac}", timeout)
    assert status == 200, text
    return text


def boots(script: str) -> bool:
    return "\nkernel http://" in script and "systemd.hostname=w1" in script


def refuses(script: str) -> bool:
    commands = [line.split()[0] for line in script.splitlines()[1:]]
    return script.startswith("#!ipxe\n") and commands == ["echo", "echo", "exit"]


def raw_request(server: ServerThread, data: bytes, wait: float = 5) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=wait) as connection:
        connection.sendall(data)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


# ------------------------------------------------------------------------------------------
# hostile mac= values


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        (KNOWN, "boot"),
        ("52%3A54%3A00%3A12%3A34%3A01", "boot"),  # percent-encoded colons
        ("52-54-00-12-34-01", "boot"),
        ("52:54:00:12:34:01".upper(), "boot"),
        ("%0a52:54:00:12:34:01%0a", "boot"),  # surrounding whitespace is dropped
        ("+52:54:00:12:34:01+", "boot"),  # "+" is a space in a query
        ("52:54:00:12:34:01%00", "refuse"),
        ("52:54:00:12:34:01%0achain%20http://evil/", "refuse"),
        ("%ff%fe", "refuse"),  # not UTF-8
        ("%E2%80%AE52:54:00:12:34:01", "refuse"),  # a bidi override before it
        ("52%EF%BC%9A54:00:12:34:01", "refuse"),  # a full-width colon
        ("${net0/mac}", "refuse"),  # the loader did not expand it
        ("52:54:00:12:34:01;echo", "refuse"),
        ("52:54:00:12:34:01&mac=52:54:00:99:99:99", "boot"),  # the first mac= counts
        ("52:54:00:99:99:99&mac=52:54:00:12:34:01", "refuse"),
        ("", "refuse"),
        ("x" * 4000, "refuse"),
    ],
)
def test_a_mac_value_gets_its_machine_or_a_refusal(
    server: ServerThread, log: Path, query: str, answer: str
) -> None:
    script = script_for(server, query)
    assert boots(script) if answer == "boot" else refuses(script), script
    assert "evil" not in script and "$" not in script.replace("${", "")
    for line in log.read_text().splitlines():
        assert line.isprintable(), line


@pytest.mark.parametrize("query", ["mac", "MAC=52:54:00:12:34:01", "mac[]=52:54:00:12:34:01"])
def test_no_mac_parameter_gets_the_loader_script(server: ServerThread, query: str) -> None:
    script = script_for(server, "").replace("?mac=", "?")  # a fresh request below
    status, script = get(server, f"/boot.ipxe?{query}")
    assert status == 200 and script.startswith("#!ipxe\n")
    assert "kernel" not in script


@pytest.mark.parametrize(
    ("request_bytes", "complaint"),
    [
        (b"GET /boot.ipxe?mac=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", "8190 bytes"),
        (b"GET /boot.ipxe?mac=52:54:00:12:34:01\x00 HTTP/1.1\r\nHost: a\r\n\r\n", "url query"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 9000 + b"\r\n\r\n", "8190 bytes"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(200)) + b"\r\n",
         "many headers"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", "header"),
    ],
    ids=["long-line", "nul", "long-header", "many-headers", "bad-header"],
)  # fmt: skip
def test_a_malformed_request_is_400_and_one_log_line(
    server: ServerThread, log: Path, request_bytes: bytes, complaint: str
) -> None:
    answer = raw_request(server, request_bytes)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    time.sleep(0.2)
    text = log.read_text()
    assert "Traceback" not in text, text
    refusals = [line for line in text.splitlines() if "refused: error handling request" in line]
    assert len(refusals) == 1 and complaint in refusals[0].lower(), text
    assert boots(script_for(server))


def test_host_header_injection_never_reaches_the_script(server: ServerThread) -> None:
    """A Host header that is no host[:port] is replaced by the address the client reached
    (a plain one like `other:80` is the client's own choice for its own script)."""
    for host in (b"a b", b"${x}", b"[::1", b"a/b", b"a;chain", b"a:99999999", b"\xff"):
        answer = raw_request(
            server,
            b"GET /boot.ipxe?mac=52:54:00:12:34:01 HTTP/1.1\r\nHost: " + host
            + b"\r\nConnection: close\r\n\r\n",
        )  # fmt: skip
        body = answer.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
        if b" 200 " in answer.split(b"\r\n")[0]:
            assert f"kernel http://127.0.0.1:{server.port}/sets/" in body, body


# ------------------------------------------------------------------------------------------
# clients that never finish


def closed_within(server: ServerThread, first: bytes, trickle: bytes, limit: float) -> float:
    """Seconds until the server closes a connection that sent `first`, then `trickle` once a
    second; fails the test if it is still open after `limit`."""
    started = time.monotonic()
    with socket.create_connection((server.host, server.port)) as connection:
        connection.settimeout(1)
        if first:
            connection.sendall(first)
        while time.monotonic() - started < limit:
            try:
                if connection.recv(4096) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except ConnectionResetError:
                return time.monotonic() - started
            if trickle:
                try:
                    connection.sendall(trickle)
                except OSError:
                    return time.monotonic() - started
    pytest.fail(f"the connection is still open after {limit} s")


@pytest.mark.parametrize(
    ("first", "trickle"),
    [
        (b"", b""),  # connects and says nothing
        (b"GET /boot.ipxe HTT", b""),  # half a request line
        (b"GET /boot.ipxe HTTP/1.1\r\nHost: a\r\n", b""),  # headers never end
        (b"GET /boot.ipxe HTTP/1.1\r\n", b"X: y\r\n"),  # a header a second (slowloris)
        (b"G", b"E"),  # a byte a second
    ],
    ids=["silent", "half-line", "no-end-of-headers", "slowloris", "byte-a-second"],
)
def test_an_unfinished_request_is_closed_at_the_timeout(
    server: ServerThread, first: bytes, trickle: bytes
) -> None:
    assert 1.5 < closed_within(server, first, trickle, limit=8) < 6  # request_timeout=2
    assert boots(script_for(server))


@pytest.mark.slow
def test_the_default_request_timeout_is_30_seconds(root: Path, inventory: Path) -> None:
    watch = InventoryWatch(inventory, ProfileStore())
    with ServerThread(root, inventory=watch) as server:
        assert 29 < closed_within(server, b"GET / HTT", b"", limit=45) < 40


def test_many_idle_connections_and_clients_at_once(server: ServerThread) -> None:
    idle = [socket.create_connection((server.host, server.port)) for _ in range(300)]
    try:
        with ThreadPoolExecutor(32) as pool:
            macs = [KNOWN if i % 2 else f"52:54:00:99:00:{i % 100:02d}" for i in range(400)]
            scripts = list(pool.map(lambda mac: script_for(server, mac), macs))
            files = list(pool.map(lambda _: get(server, f"/worker/{KERNEL}"), range(100)))
    finally:
        for connection in idle:
            connection.close()
    assert all(boots(s) if m == KNOWN else refuses(s) for m, s in zip(macs, scripts, strict=True))
    assert all(status == 200 and body == KERNEL * 1000 for status, body in files)


# ------------------------------------------------------------------------------------------
# the inventory replaced under the running server


def touched(path: Path) -> Path:
    path.touch()
    return path


def release(fifo: Path) -> None:
    """Let a reader blocked on `fifo` go (if one is: without a reader, opening fails)."""
    with suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def swap(inventory: Path, make: object) -> None:
    inventory.unlink()
    make(inventory)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: None, "No such file or directory"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
        (lambda p: p.symlink_to("/dev/urandom"), "not a regular file"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: p.symlink_to(p.name), "Too many levels of symbolic links"),
        (lambda p: p.write_text("[machines\n"), "invalid TOML"),
        (lambda p: p.write_text(INVENTORY + 'hostname = "ignore"\n'), "not usable as a host"),
        (lambda p: p.write_text(INVENTORY + 'kernel_params = ["${x}"]\n'), "'$' is not allowed"),
        (lambda p: os.truncate(touched(p), 20 << 20), "larger than 16 MiB"),
    ],
    ids=["removed", "fifo", "dev-zero", "dev-urandom", "directory", "symlink-loop", "broken",
         "dnsmasq-word", "ipxe-injection", "huge"],
)  # fmt: skip
def test_a_bad_replacement_keeps_the_previous_inventory_and_says_why_once(
    server: ServerThread, inventory: Path, log: Path, make: object, why: str
) -> None:
    assert boots(script_for(server))
    swap(inventory, make)
    try:
        for _ in range(3):
            assert boots(script_for(server, timeout=10))
    finally:
        if inventory.is_fifo():
            release(inventory)
    warnings = [line for line in log.read_text().splitlines() if "not reloaded" in line]
    assert len(warnings) == 1 and why in warnings[0], log.read_text()
    # a good file again: reloaded, and the next failure is said again
    if inventory.is_dir():
        inventory.rmdir()
    else:
        inventory.unlink(missing_ok=True)
    inventory.write_text(INVENTORY.replace("machines.w1", "machines.w1") + "\n")
    settle(inventory, 5)
    assert boots(script_for(server))


def test_an_edit_of_the_same_size_in_the_same_tick_is_seen(
    server: ServerThread, inventory: Path
) -> None:
    """A file system whose timestamps are coarse (a tick, or a second) leaves inode, size
    and mtime alike after a quick second edit; the watch compares the content while the
    mtime is that recent."""
    assert boots(script_for(server))
    stamp = time.time_ns()
    inventory.write_text(INVENTORY.replace("12:34:01", "12:34:09"))  # same size
    os.utime(inventory, ns=(stamp, stamp))
    assert refuses(script_for(server))  # the first edit is seen
    inventory.write_text(INVENTORY)  # back, same size, same inode
    os.utime(inventory, ns=(stamp, stamp))  # and the same mtime: a coarse clock
    assert boots(script_for(server))


def test_an_inventory_symlink_retargeted_is_reloaded(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(INVENTORY.replace("machines.w1", "machines.w9"))
    settle(other)
    swap(inventory, lambda p: p.symlink_to(other))
    assert "systemd.hostname=w9" in script_for(server)


def test_an_unexpected_error_in_a_reload_keeps_the_inventory(
    server: ServerThread, inventory: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(serve_machines, "parse_inventory", broken)
    inventory.write_text(INVENTORY + "\n")
    settle(inventory, 5)
    assert boots(script_for(server))
    assert "not reloaded, keeping the previous one: unexpected RuntimeError: a bug" in (
        log.read_text()
    )


def test_edits_racing_requests_always_give_one_of_the_two(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    """Atomic replacements (what editors and config tools do) while requests run."""
    versions = [INVENTORY, INVENTORY.replace("machines.w1", "machines.w1") + "# b\n"]
    stop = threading.Event()

    def edit() -> None:
        for index in range(300):
            temp = tmp_path / ".machines.toml.tmp"
            temp.write_text(versions[index % 2])
            temp.replace(inventory)
        stop.set()

    editor = threading.Thread(target=edit)
    editor.start()
    answers = []
    while not stop.is_set():
        answers.append(script_for(server))
    editor.join()
    assert answers and all(boots(script) for script in answers)


def test_a_reload_of_a_large_inventory_does_not_stop_downloads(
    server: ServerThread, inventory: Path
) -> None:
    lines = [INVENTORY]
    for i in range(20_000):
        lines.append(f'[machines.m{i}]\nmac = "52:54:01:{i >> 8 & 255:02x}:{i & 255:02x}:01"\n')
    inventory.write_text("".join(lines))
    settle(inventory, 5)
    reloading = threading.Thread(target=script_for, args=(server,), kwargs={"timeout": 120})
    reloading.start()
    time.sleep(0.3)  # the reload is under way
    started = time.monotonic()
    status, body = get(server, f"/worker/{INITRD}")
    took = time.monotonic() - started
    alive = reloading.is_alive()
    reloading.join()
    assert status == 200 and len(body) == 6000
    assert alive, "the reload was over before the download: the probe proves nothing"
    assert took < 1.0, f"a download waited {took:.1f} s for the reload"


def test_an_unreadable_inventory_keeps_the_previous_one() -> None:
    """As an unprivileged user (root reads anything): the watch loads, the file loses its
    read permission, the watch keeps its machines and says why."""
    directory = Path(tempfile.mkdtemp(prefix="plasmaboot-adversarial-"))
    try:
        directory.chmod(0o755)
        path = directory / "machines.toml"
        path.write_text(INVENTORY)
        os.chown(path, 65534, 65534)
        probe = (
            "import logging, os, sys, time\n"
            "from pathlib import Path\n"
            "from plasmaboot.profiles.store import ProfileStore\n"
            "from plasmaboot.serve.machines import InventoryWatch\n"
            "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
            f"path = Path({str(path)!r})\n"
            "watch = InventoryWatch(path, ProfileStore())\n"
            "path.chmod(0)\n"
            "os.utime(path, ns=(1, 1))\n"
            "print(sorted(watch.current().machines))\n"
        )
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-c", probe],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(directory)
    assert proc.returncode == 0, proc.stderr
    assert "cannot read (Permission denied)" in proc.stdout and "['w1']" in proc.stdout


# ------------------------------------------------------------------------------------------
# a set's files changed on disk


def current_set(root: Path) -> Path:
    return (root / "worker").resolve()


@pytest.mark.parametrize(
    ("make", "logged"),
    [
        (lambda p: p.write_text(p.read_text() + "chain http://evil/\n"), "after `boot`"),
        (lambda p: p.write_text(p.read_text().replace("initrd=initrd", "initrd=initrd ${x}")),
         "line 3"),
        (lambda p: p.write_bytes(b"#!ipxe\n\xff\n"), None),
        (lambda p: (p.unlink(), os.mkfifo(p)), None),
        (lambda p: (p.unlink(), p.symlink_to("/etc/passwd")), None),
        (lambda p: (p.unlink(), p.symlink_to("/dev/zero")), None),
        (lambda p: os.truncate(p, 100 << 20), None),
        (lambda p: p.unlink(), None),
    ],
    ids=["extra-command", "param-injection", "not-utf8", "fifo", "symlink-out",
         "dev-zero", "huge", "missing"],
)  # fmt: skip
def test_a_damaged_set_script_is_never_served(
    server: ServerThread, root: Path, log: Path, make: object, logged: str | None
) -> None:
    script = current_set(root) / IPXE
    make(script)  # type: ignore[operator]
    try:
        answer = script_for(server, timeout=10)
        status, _ = get(server, f"/worker/{IPXE}", timeout=10)
    finally:
        if script.is_fifo():
            release(script)
    assert refuses(answer) and "evil" not in answer, answer
    assert status == 404
    if logged:
        assert logged in log.read_text(), log.read_text()


def test_a_script_with_crlf_line_ends_is_served_as_the_renderer_writes_it(
    server: ServerThread, root: Path
) -> None:
    script = current_set(root) / IPXE
    script.write_bytes(script.read_bytes().replace(b"\n", b"\r\n"))
    answer = script_for(server)
    assert boots(answer) and "\r" not in answer


def test_a_set_symlink_pointing_out_of_the_root_is_not_published(
    server: ServerThread, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(current_set(root), outside)
    (root / "worker").unlink()
    (root / "worker").symlink_to(outside)
    answer = script_for(server)
    assert refuses(answer) and "no image is published for worker" in answer
    assert get(server, f"/worker/{KERNEL}")[0] == 404


def test_serve_takes_the_request_timeout_from_its_command_line(
    root: Path, inventory: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "plasmaboot", "serve", "--root", str(root)]
    argv += ["--listen", f"127.0.0.1:{port}", "--inventory", str(inventory)]
    errors = tmp_path / "serve.err"
    with errors.open("wb") as sink:
        proc = subprocess.Popen([*argv, "--request-timeout", "1"], stderr=sink)
    try:
        deadline = time.monotonic() + 30
        while "serving" not in errors.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            assert connection.recv(10) == b""
        assert time.monotonic() - started < 4
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = subprocess.run([*argv, "--request-timeout", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--request-timeout" in bad.stderr


def test_a_kernel_line_past_the_kernel_limit_is_refused_not_cut(
    server: ServerThread, inventory: Path
) -> None:
    params = ", ".join(f'"p{i}={"x" * 500}"' for i in range(5))
    inventory.write_text(INVENTORY + f"kernel_params = [{params}]\n")
    settle(inventory, 5)
    script = script_for(server)
    # refused, never served cut: the kernel would drop what is past 2048 characters
    assert refuses(script), script
    assert "kernel line of" in script and "too long" in script


@pytest.mark.xfail(
    strict=True,
    reason="open: an in-place rewrite (truncate, then write) seen half-way is a valid, smaller "
    "inventory; the machines missing from it are refused until the write lands (docs: edit "
    "atomically)",
)
def test_a_request_during_an_in_place_rewrite_keeps_the_machines(
    server: ServerThread, inventory: Path
) -> None:
    assert boots(script_for(server))
    with inventory.open("r+") as handle:
        handle.truncate(0)  # an editor writing in place, caught between truncate and write
        assert boots(script_for(server))
        handle.write(INVENTORY)
