"""`plasmaboot serve`: bad arguments exit 2 with one line, and the command serves a root
until Ctrl-C, logging each request. The server itself: tests/serve/."""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot.artifacts.layout import INITRD
from plasmaboot.cli import main
from published_sets import Published, publish


@pytest.fixture
def published(tmp_path: Path) -> Published:
    return publish(tmp_path, tmp_path / "root", seed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nonsense"], "expected HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "out of range"),
        (["--listen", "example.com:80"], "not an IP address"),
        (["--listen", "0.0.0.0:8080"], "--allow-remote"),
        (["--listen", "[::]:8080"], "--allow-remote"),
        (["--public-url", "ftp://x"], "--public-url"),
        (["--token-ttl", "0"], "--token-ttl"),
        (["--token-ttl", "forever"], "--token-ttl"),
    ],
)
def test_serve_bad_arguments_exit_2(published: Published, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--root", str(published.root), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_serve_missing_root_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--root", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "no such directory" in " ".join(result.output.split())


def test_serve_command_serves_and_stops_on_ctrl_c(published: Published) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plasmaboot",
            "serve",
            "--root",
            str(published.root),
            "--listen",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/ \(labels: cp\)", first)
        assert match, first
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
        conn.request("GET", f"/cp/{INITRD}")
        assert conn.getresponse().read() == published.files[INITRD]
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        rest = proc.stderr.read()
        assert "GET /cp/initrd 200" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_command_takes_the_node_and_menu_options(published: Published) -> None:
    """--operator-files serves manifest.json (404 without it); --menu-timeout reaches the
    menu; --max-connections and --idle-timeout are accepted."""
    for extra, manifest_status, timeout_ms in [
        ([], 404, "10000"),
        (["--operator-files", "--menu-timeout", "3", "--max-connections", "4",
          "--idle-timeout", "2"], 200, "3000"),
    ]:  # fmt: skip
        argv = [sys.executable, "-m", "plasmaboot", "serve", "--root", str(published.root)]
        proc = subprocess.Popen(
            [*argv, "--listen", "127.0.0.1:0", *extra], stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stderr is not None
            match = re.search(r":(\d+)/ \(labels", proc.stderr.readline())
            assert match
            conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
            conn.request("GET", "/cp/manifest.json")
            assert conn.getresponse().status == manifest_status
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
            conn.request("GET", "/boot.ipxe")
            assert f"choose --timeout {timeout_ms} " in conn.getresponse().read().decode()
            conn.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)


def test_admin_listen_moves_the_status_page_and_metrics(published: Published) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "plasmaboot", "serve", "--root", str(published.root)),
            *("--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )

    def get(port: int, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    try:
        assert proc.stderr is not None
        boot_line = proc.stderr.readline()
        proc.stderr.readline()  # the boot menu's URL
        admin_line = proc.stderr.readline()
        boot = re.search(r"at http://127\.0\.0\.1:(\d+)/", boot_line)
        admin = re.search(r"status page: http://127\.0\.0\.1:(\d+)/ ", admin_line)
        assert boot and admin, (boot_line, admin_line)
        boot_port, admin_port = int(boot.group(1)), int(admin.group(1))
        assert boot_port != admin_port
        assert get(boot_port, f"/cp/{INITRD}")[0] == 200
        assert get(boot_port, "/")[0] == 404
        assert get(boot_port, "/metrics")[0] == 404
        status, page = get(admin_port, "/")
        assert status == 200 and b"Published (1)" in page
        status, text = get(admin_port, "/metrics")
        assert status == 200
        assert b'plasmaboot_http_requests_total{file="initrd",status="200"} 1.0' in text
        assert get(admin_port, f"/cp/{INITRD}")[0] == 404  # no images on the admin address
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_admin_listen_is_checked_like_listen(published: Published) -> None:
    args = ["serve", "--root", str(published.root), "--admin-listen", "0.0.0.0:9100"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--admin-listen 0.0.0.0" in result.output and "--allow-remote" in result.output
