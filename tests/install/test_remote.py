"""install.remote: the host key is pinned unless first use is asked for; data never on the
command line; a key mismatch is named."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import pytest

from plasmaboot.errors import WorkError
from plasmaboot.install.remote import SshRemote, control_parent
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


def test_without_a_shared_connection_every_command_is_its_own(tmp_path: Path) -> None:
    argv = SshRemote("10.0.0.5", Path("id"), tmp_path / "k").argv("true")
    assert "ControlMaster=no" in argv and "ControlPath=none" in argv


def fake_master(calls: Path) -> str:
    """A fake ssh's body that plays the master: every call recorded in `calls`, and the
    socket file made where ControlPath says."""
    return (
        f'echo "$@" >> {calls}\n'
        'for a in "$@"; do case "$a" in ControlPath=*) touch "${a#ControlPath=}";; esac; done'
    )


def test_a_shared_connection_lives_in_a_private_directory_and_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    body = fake_master(calls)
    monkeypatch.setenv("PATH", f"{fake_ssh(tmp_path, body)}:/usr/bin:/bin")
    remote = SshRemote("10.0.0.5", Path("id"), tmp_path / "k")
    with remote.shared_connection() as shared:
        assert shared is remote and remote.control is not None
        control = remote.control
        assert stat.S_IMODE(control.parent.stat().st_mode) == 0o700
        remote.sh("true")
        remote.sh("true")
        argv = remote.argv("true")
        assert "ControlMaster=auto" in argv and f"ControlPath={control}" in argv
    assert remote.control is None and not control.parent.exists()
    lines = calls.read_text().splitlines()
    assert len(lines) == 3 and all(f"ControlPath={control}" in line for line in lines)
    assert "-O exit root@10.0.0.5" in lines[-1]


def test_a_shared_connection_is_closed_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    body = (
        fake_master(calls) + '\ncase "$*" in *"-O exit"*) exit 0;; esac\n'
        "echo 'Connection to 10.0.0.5 closed by remote host.' >&2; exit 255"
    )
    monkeypatch.setenv("PATH", f"{fake_ssh(tmp_path, body)}:/usr/bin:/bin")
    remote = SshRemote("10.0.0.5", Path("id"), tmp_path / "k")
    with pytest.raises(WorkError, match="lost the SSH connection"), remote.shared_connection():
        remote.sh("cp -a /a /b")
    assert "-O exit" in calls.read_text().splitlines()[-1]
    assert remote.control is None


@pytest.mark.parametrize(
    "tmpdir", ["/tmp/a b", "/tmp/%h%p", "/tmp/" + "x" * 80, "/tmp/ctl\nProxyCommand=x"]
)
def test_the_control_socket_never_lands_under_a_path_ssh_would_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpdir: str
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", tmpdir)
    assert control_parent() == "/tmp"


def test_a_plain_temporary_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", "/var/tmp")
    assert control_parent() == "/var/tmp"
