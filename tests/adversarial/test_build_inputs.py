"""Adversarial probe of the command line's file and directory inputs: `build --mirror`,
`--release`, `--ssh-key` (devices, FIFOs, huge files), an image no key can log into, the
directories a build writes (`/`, inside the cache, `--pxe-dir` overlapping `--output-dir`)
and `serve --access-log`. Each is one line, exit 2, before any work; the build itself is
replaced by a tripwire, so a check that let a case through fails the test instead of
starting mmdebstrap."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.image import pipeline
from plasmaboot.image.backends.debian.backend import DebianOptions
from profile_files import invoke

from conftest import make_keypair


class Tripwire(Exception):
    """The build was reached: every input check passed."""


@pytest.fixture(autouse=True)
def no_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def build_one(*args: object) -> None:
        raise Tripwire

    monkeypatch.setattr(pipeline, "build_one", build_one)
    monkeypatch.setenv("PLASMABOOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        "plasmaboot.image.backends.debian.backend.DebianBackend.check_available", lambda self: None
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return make_keypair(tmp_path).with_suffix(".pub")


def refused(*args: str) -> str:
    started = time.monotonic()
    result = invoke("build", "--backend", "debian", "-p", "worker", *args)
    assert time.monotonic() - started < 10
    assert not isinstance(result.exception, Tripwire), "the build was started"
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 2, lines
    return lines[0]


def started(*args: str) -> bool:
    result = invoke("build", "--backend", "debian", "-p", "worker", *args)
    return isinstance(result.exception, Tripwire)


HOSTILE_MIRRORS = [
    "http://deb.debian.org/debian\ndeb http://evil/ x main",
    "http://deb.debian.org/debian\r", "http://deb.debian.org/de bian", "http://deb.debian.org/\tx",
    "http://deb.debian.org/\x00", "http://deb.debian.org/\x85", "http://deb.debian.org/\u2028",
    "\nhttp://deb.debian.org/debian", "http://deb.debian.org/debian\n",
]  # fmt: skip


@pytest.mark.parametrize("mirror", HOSTILE_MIRRORS)
def test_a_mirror_that_is_not_one_word_is_refused(mirror: str, key: Path) -> None:
    with pytest.raises(UserError, match="--mirror: expected a URL with no spaces or control"):
        DebianOptions(mirror=mirror).check()
    assert refused("--ssh-key", str(key), "--mirror", mirror).startswith("error: --mirror: ")


@pytest.mark.parametrize("release", ["bookworm\n", "bookworm\nx", "book worm", "bookworm;x", ""])
def test_a_release_that_is_not_a_name_is_refused(release: str) -> None:
    with pytest.raises(UserError, match="--release: expected a Debian release name"):
        DebianOptions(release=release).check()


def test_good_mirrors_and_the_default_are_taken(key: Path) -> None:
    for mirror in ("http://deb.debian.org/debian", "https://m.example:8443/d", "file:///srv/m"):
        DebianOptions(mirror=mirror).check()
    assert started("--ssh-key", str(key), "--output-dir", str(key.parent / "out"))


# ------------------------------------------------------------------------------------------
# An image no key can log into


def test_a_build_with_no_key_at_all_is_refused(tmp_path: Path) -> None:
    first = refused("--output-dir", str(tmp_path / "out"))
    assert "worker: no SSH key" in first and "nobody could log into the image" in first


def test_no_key_is_built_only_when_asked_for(tmp_path: Path, key: Path) -> None:
    assert started("--no-ssh-key", "--output-dir", str(tmp_path / "out"))
    first = refused("--no-ssh-key", "--ssh-key", str(key))
    assert first.startswith("error: --no-ssh-key: expected no --ssh-key with it")


def test_a_profile_with_its_own_keys_needs_no_option(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ops.pub").write_bytes(
        make_keypair(tmp_path).with_suffix(".pub").read_bytes()
    )
    (tmp_path / "keyed.toml").write_text(
        'extends = "base"\n[ssh]\nauthorized_keys = ["keys/ops.pub"]\n'
    )
    result = invoke(
        "--profiles-dir", str(tmp_path), "build", "--backend", "debian", "-p", "keyed",
        "--output-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert isinstance(result.exception, Tripwire), result.output
    # and the same directory's keyless profile beside it is still refused
    (tmp_path / "bare.toml").write_text('extends = "base"\n')
    result = invoke("--profiles-dir", str(tmp_path), "build", "--backend", "debian", "--all")
    assert result.exit_code == 2 and "no SSH key" in result.output


# ------------------------------------------------------------------------------------------
# Key files that are not files


@pytest.mark.parametrize(
    "path", ["/dev/zero", "/dev/urandom", "/dev/null", "/proc/self/fd", "fifo", "huge", "dir"]
)
def test_a_key_file_that_is_no_small_regular_file_is_refused_at_once(
    tmp_path: Path, path: str
) -> None:
    os.mkfifo(tmp_path / "fifo")
    with (tmp_path / "huge").open("wb") as handle:
        handle.truncate(3 << 30)  # sparse: 3 GiB, never read whole
    (tmp_path / "dir").mkdir()
    target = path if path.startswith("/") else str(tmp_path / path)
    first = refused("--ssh-key", target)
    assert first.startswith("error: --ssh-key "), first


# ------------------------------------------------------------------------------------------
# Where a build writes


def test_the_filesystem_root_is_no_output_directory(key: Path) -> None:
    first = refused("--ssh-key", str(key), "--output-dir", "/")
    assert "--output-dir /: expected a directory of its own, got the filesystem's root" in first
    assert not Path("/.sets").exists()


@pytest.mark.parametrize("inside", ["", "sets", "a/b"])
def test_an_output_directory_in_the_cache_is_refused(
    tmp_path: Path, key: Path, inside: str
) -> None:
    (tmp_path / "cache").mkdir()
    first = refused("--ssh-key", str(key), "--output-dir", str(tmp_path / "cache" / inside))
    assert "expected a directory outside the build cache" in first, first


@pytest.mark.parametrize(
    ("output", "pxe"),
    [("out", "out"), ("out", "out/pxe"), ("out/a/..", "out"), ("pxe/out", "pxe"),
     ("out", "link-to-out"), ("out/", "./out")],
)  # fmt: skip
def test_a_pxe_directory_overlapping_the_output_directory_is_refused(
    tmp_path: Path, key: Path, output: str, pxe: str
) -> None:
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "link-to-out").symlink_to(tmp_path / "out")
    first = refused(
        "--ssh-key", str(key), "--output-dir", str(tmp_path / output),
        "--pxe-dir", str(tmp_path / pxe),
    )  # fmt: skip
    assert "--pxe-dir" in first and "got the same directory or one inside the other" in first


def test_separate_directories_are_taken(tmp_path: Path, key: Path) -> None:
    assert started(
        "--ssh-key", str(key), "--output-dir", str(tmp_path / "out"),
        "--pxe-dir", str(tmp_path / "output-pxe"),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------
# serve --access-log


# /proc/version: os.open for appending succeeds, but the stream's seek to its end does not
@pytest.mark.parametrize(
    "log", ["fifo", "missing/dir/log", "/proc/self/nope/log", "sock", "/proc/version"]
)
def test_an_access_log_that_cannot_take_lines_is_one_line_at_start(
    tmp_path: Path, log: str
) -> None:
    os.mkfifo(tmp_path / "fifo")

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    target = log if log.startswith("/") else str(tmp_path / log)
    proc = subprocess.run(
        [sys.executable, "-m", "plasmaboot", "serve", "--root", str(tmp_path),
         "--listen", "127.0.0.1:0", "--access-log", target],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    sock.close()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"error: --access-log {target}: "), lines
    assert len(lines) == 2 and "Traceback" not in proc.stderr
