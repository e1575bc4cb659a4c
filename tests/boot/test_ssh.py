"""boot.ssh: the SSH probe, against a real listening socket on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from plasmaboot.boot.ssh import Greeting, Ssh


@contextmanager
def ssh_port(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose one accepted connection is handed to `handle`."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            handle(connection)
            done.wait(10)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join()
        server.close()


def test_greeting_is_the_banner_a_reset_or_silence() -> None:
    identity = Path("/nonexistent")
    with ssh_port(lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")) as port:
        assert Ssh(port, identity).greeting(5) is Greeting.BANNER
    with ssh_port(lambda c: c.close()) as port:
        assert Ssh(port, identity).greeting(5) is Greeting.CLOSED
    with ssh_port(lambda c: None) as port:
        started = time.monotonic()
        assert Ssh(port, identity).greeting(0.5) is Greeting.SILENT
        assert 0.5 <= time.monotonic() - started < 3


def test_a_silent_probe_gives_up_when_asked() -> None:
    with ssh_port(lambda c: None) as port:
        started = time.monotonic()
        answer = Ssh(port, Path("/nonexistent")).greeting(30, give_up=lambda: True)
        assert answer is Greeting.SILENT
        assert time.monotonic() - started < 2
