"""serve.connections under hostile clients, with real sockets against a real server: idle,
half-open and slow connections are closed at their deadline, a crowd of sockets cannot keep
clients out, accept() failing for want of descriptors is one log line, and the server
answers again once the load drops."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.connections import GUARD_KEY, ConnectionGuard, default_connection_limit

REQUEST = b"GET /big/bzImage HTTP/1.1\r\nHost: x\r\n\r\n"
BIG = 64 << 20  # more than loopback's socket buffers hold: a download not read stays busy


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    (source / KERNEL).write_bytes(b"k" * 4096)
    with (source / INITRD).open("wb") as handle:
        handle.truncate(BIG)  # sparse: cheap to make, slow to send
    (source / IPXE).write_text(render_netboot_script("big", ["console=ttyS0"]))
    artifacts = tmp_path_factory.mktemp("root")
    publish_atomically(source, artifacts, "big", (KERNEL, INITRD, IPXE))
    return artifacts


def guard_of(server: ServerThread) -> ConnectionGuard:
    return server._app[GUARD_KEY]


def connect(server: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=0.2)


def seconds_until_closed(sock: socket.socket, limit: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes `sock` (reading what it sends, sending `trickle`
    between reads); fails the test if it is still open after `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if trickle:
            try:
                sock.sendall(trickle)
            except OSError:
                return time.monotonic() - started
    pytest.fail(f"the connection is still open after {limit} s")


def fetch(server: ServerThread, path: str = "/big/bzImage") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture
def server(root: Path) -> Iterator[ServerThread]:
    with ServerThread(root, request_timeout=2, idle_timeout=0.5) as srv:
        yield srv


# --------------------------------------------------------------------------------------
# deadlines


@pytest.mark.parametrize("count", [1, 5, 50])
def test_connections_that_send_nothing_are_closed_at_the_idle_timeout(
    server: ServerThread, count: int
) -> None:
    crowd = [connect(server) for _ in range(count)]
    try:
        started = time.monotonic()
        for sock in crowd:
            seconds_until_closed(sock, limit=5)
        assert time.monotonic() - started < 1.8  # idle 0.5 s (and the request timeout 2 s)
    finally:
        for sock in crowd:
            sock.close()
    assert fetch(server) == 200


@pytest.mark.parametrize(
    ("first", "trickle", "at_least"),
    [
        (b"GET /big/bzImage HTT", b"", 1.5),  # half a request line
        (b"GET /big/bzImage HTTP/1.1\r\nHost: x\r\n", b"", 1.5),  # headers never end
        (b"GET /big/bzImage HTTP/1.1\r\n", b"X-A: b\r\n", 1.5),  # slowloris: a header a time
        (b"POST /big/bzImage HTTP/1.1\r\nContent-Length: 100\r\n", b"X: y\r\n", 1.5),
        (b"\r\n", b"\r\n", 1.5),  # blank lines only (never a request line)
        (b"G", b"E", 0),  # a byte at a time (the parser may refuse the method earlier)
        (b"GET /", b"a", 0),  # a path a byte at a time
    ],
    ids=["half-line", "no-end-of-headers", "slowloris", "post", "blank-lines", "bytes", "path"],
)
def test_an_unfinished_request_is_closed_by_the_request_timeout(
    server: ServerThread, first: bytes, trickle: bytes, at_least: float
) -> None:
    """Bytes arriving do not make a connection idle, but they do not extend its deadline:
    closed at the request timeout (2 s), not at the idle one (0.5 s), nor later."""
    with connect(server) as sock:
        sock.sendall(first)
        assert at_least < seconds_until_closed(sock, limit=8, trickle=trickle) < 4.5
    assert fetch(server) == 200


@pytest.mark.parametrize("partial", [b"", b"GET /big/bzI", b"GET / HTTP/1.1\r\nHost: x\r\n"])
def test_a_half_open_connection_is_closed(server: ServerThread, partial: bytes) -> None:
    """The client sends (part of) a request, shuts its side and never reads again."""
    with connect(server) as sock:
        if partial:
            sock.sendall(partial)
        sock.shutdown(socket.SHUT_WR)
        assert seconds_until_closed(sock, limit=6) < 4.5
    deadline = time.monotonic() + 3
    while guard_of(server).open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not guard_of(server).open


def test_an_idle_keep_alive_connection_is_closed_soon(server: ServerThread) -> None:
    with connect(server) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /big/netboot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b"boot\n" not in reply:
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        sock.settimeout(0.2)
        assert seconds_until_closed(sock, limit=5) < 1.8


def test_requests_on_one_connection_each_get_their_deadline(server: ServerThread) -> None:
    """Keep-alive works: three requests, 0.3 s apart (less than the idle timeout)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/big/bzImage")
            response = conn.getresponse()
            assert response.status == 200 and len(response.read()) == 4096
            time.sleep(0.3)
        assert len(guard_of(server).open) == 1
    finally:
        conn.close()


def test_a_long_download_is_never_cut_by_the_deadlines(server: ServerThread) -> None:
    """Reading a 64 MiB initrd slowly takes longer than both deadlines."""
    with connect(server) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /big/initrd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = 0
        started = time.monotonic()
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
            if time.monotonic() - started < 3:
                time.sleep(0.05)
        assert received > BIG and time.monotonic() - started > 2.5


def test_a_client_that_stops_reading_a_download_is_dropped(root: Path) -> None:
    """The kernel drops a connection whose data stays unacknowledged (TCP_USER_TIMEOUT =
    the request timeout): a reader that stopped does not hold it for ever."""
    with ServerThread(root, request_timeout=1, idle_timeout=0.5) as srv:
        sock = connect(srv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big/initrd HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            deadline = time.monotonic() + 60
            time.sleep(0.5)
            assert guard_of(srv).open  # busy, sending
            while guard_of(srv).open and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not guard_of(srv).open
        finally:
            sock.close()
        assert fetch(srv) == 200


# --------------------------------------------------------------------------------------
# the cap


def test_a_crowd_of_idle_sockets_never_keeps_clients_out(root: Path) -> None:
    with ServerThread(root, request_timeout=30, idle_timeout=30, max_connections=8) as srv:
        crowd = [connect(srv) for _ in range(60)]
        slow = [connect(srv) for _ in range(20)]
        for sock in slow:
            sock.sendall(b"GET /big/bzImage HTTP/1.1\r\n")  # never finished
        try:
            statuses = [fetch(srv) for _ in range(30)]
            assert statuses == [200] * 30
            assert len(guard_of(srv).open) <= 8
            assert guard_of(srv).evicted >= 72
        finally:
            for sock in crowd + slow:
                sock.close()


def test_when_every_connection_is_busy_one_more_gets_503(root: Path) -> None:
    with ServerThread(root, request_timeout=30, idle_timeout=30, max_connections=2) as srv:
        busy = []
        for _ in range(2):
            sock = connect(srv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /big/initrd HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append(sock)
        time.sleep(0.5)
        try:
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as extra:
                    extra.sendall(REQUEST)
                    reply = extra.recv(4096)
                    assert reply.startswith(b"HTTP/1.1 503 "), reply
                    assert b"Server: plasmaboot\r\n" in reply
            assert guard_of(srv).refused == 5
        finally:
            for sock in busy:
                sock.close()
        deadline = time.monotonic() + 10
        while guard_of(srv).open and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fetch(srv) == 200


def test_the_default_cap_follows_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit, expected in [(1024, 256), (4096, 256), (512, 168), (256, 72), (128, 24)]:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
            if limit <= hard:
                assert default_connection_limit() == expected, limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------------------
# accept() without descriptors: a subprocess with a low RLIMIT_NOFILE


def serve_process(
    root: Path, log: Path, nofile: int, *options: str
) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "plasmaboot", "serve", "--root", str(root)]
    argv += ["--listen", f"127.0.0.1:{port}", *options]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stderr=sink, stdout=sink, preexec_fn=limit)
    deadline = time.monotonic() + 60
    while b"serving" not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc, port


def get_status(port: int, path: str = "/big/bzImage") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def open_many(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def test_accept_failures_are_one_line_and_service_returns(root: Path, tmp_path: Path) -> None:
    """A cap above what the descriptors allow: accept() fails with EMFILE for seconds."""
    log = tmp_path / "serve.log"
    options = ("--max-connections", "1000", "--idle-timeout", "60", "--request-timeout", "60")
    proc, port = serve_process(root, log, 64, *options)
    try:
        # about 55 accepted before EMFILE, then the (small, 8) backlog takes what accept() cannot
        crowd = open_many(port, 60)
        time.sleep(4)  # asyncio retries accept() every second: four failures at least
        for sock in crowd:
            sock.close()
        deadline = time.monotonic() + 20
        statuses: list[int | str] = []
        while time.monotonic() < deadline:
            try:
                statuses.append(get_status(port))
                break
            except OSError as exc:
                statuses.append(type(exc).__name__)
                time.sleep(0.5)
        assert statuses[-1] == 200, statuses
        assert [get_status(port) for _ in range(10)] == [200] * 10
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text()
    refusals = [line for line in text.splitlines() if "cannot accept connections" in line]
    assert 1 <= len(refusals) <= 2, text
    assert "Too many open files" in refusals[0] and "errno 24" in refusals[0]
    assert "Traceback" not in text and len(text) < 20_000, text[:2000]


def test_under_a_low_descriptor_limit_the_default_cap_prevents_emfile(
    root: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    proc, port = serve_process(root, log, 256, "--idle-timeout", "60")
    try:
        crowd = open_many(port, 400)
        try:
            time.sleep(1)
            assert [get_status(port) for _ in range(20)] == [200] * 20
        finally:
            for sock in crowd:
                sock.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text()
    assert "cannot accept" not in text and "Traceback" not in text, text[:2000]


def test_serve_refuses_bad_connection_options(root: Path) -> None:
    argv = [sys.executable, "-m", "plasmaboot", "serve", "--root", str(root)]
    for option, value in [
        ("--max-connections", "0"),
        ("--max-connections", "x"),
        ("--idle-timeout", "0"),
        ("--menu-timeout", "0"),
    ]:
        proc = subprocess.run(
            [*argv, option, value], capture_output=True, text=True, env=os.environ
        )
        assert proc.returncode == 2 and option in proc.stderr, (option, proc.stderr)
