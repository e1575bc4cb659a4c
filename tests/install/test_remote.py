"""install.remote: the host key is pinned unless first use is asked for; data never on the
command line; a key mismatch is named."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from plasmaboot.errors import WorkError
from plasmaboot.install.remote import SshRemote
from plasmaboot.log import Log


def test_the_host_key_is_pinned(tmp_path: Path) -> None:
    argv = SshRemote("10.0.0.5", Path("id"), tmp_path / "known").argv("true")
    assert "StrictHostKeyChecking=yes" in argv
    assert f"UserKnownHostsFile={tmp_path / 'known'}" in argv
    assert argv[-2:] == ["root@10.0.0.5", "sh -euc true"]


def test_first_use_only_when_asked(tmp_path: Path) -> None:
    argv = SshRemote("10.0.0.5", Path("id"), tmp_path / "k", first_use=True).argv("true")
    assert "StrictHostKeyChecking=accept-new" in argv


def fake_ssh(tmp_path: Path, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(f"#!/bin/sh\n{body}\n")
    ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_stdin_carries_the_data_and_the_log_never_sees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_ssh(tmp_path, f"cat > {tmp_path / 'received'}")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with Log(tmp_path / "log") as log:
        SshRemote("10.0.0.5", Path("id"), tmp_path / "k", log=log).sh("cat > x", input=b"SECRET")
    assert (tmp_path / "received").read_bytes() == b"SECRET"
    assert "SECRET" not in (tmp_path / "log").read_text()


def test_a_changed_host_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_ssh(tmp_path, "echo 'Host key verification failed.'; exit 255")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with pytest.raises(WorkError, match="its SSH host key is not the one in"):
        SshRemote("10.0.0.5", Path("id"), tmp_path / "k").sh("true")


def test_a_lost_connection_is_named_with_the_way_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_ssh(tmp_path, "echo 'Timeout, server 10.0.0.5 not responding.' >&2; exit 255")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with pytest.raises(WorkError) as caught:
        SshRemote("10.0.0.5", Path("id"), tmp_path / "k").sh("cp -a /a /b")
    assert caught.value.message == (
        "lost the SSH connection to 10.0.0.5 during `cp -a /a /b`: "
        "Timeout, server 10.0.0.5 not responding."
    )
    assert caught.value.hint is not None and "--wipe" in caught.value.hint
