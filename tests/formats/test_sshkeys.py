"""formats.sshkeys: the one rule for public key lines and key files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from plasmaboot.formats import FormatError
from plasmaboot.formats.sshkeys import public_key_type, read_public_keys

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x@y"


@pytest.mark.parametrize(
    ("line", "key_type"),
    [
        (ED25519, "ssh-ed25519"),
        (f'from="10.0.0.0/8",no-pty {ED25519}', "ssh-ed25519"),
        ("ssh-ed25519 AAAAnotakey", None),  # base64 that is not an ed25519 key blob
        ("ssh-ed25519 AAAAC3NzaC1yc2EAAAADAQAB", None),  # an ssh-rsa blob under another type
        ("ssh-ed25519", None),
        ("hello world", None),
        ("ssh-ed25519 AAAA!!!!", None),
    ],
)
def test_public_key_type(line: str, key_type: str | None) -> None:
    assert public_key_type(line) == key_type


def test_read_public_keys_of_a_real_key(tmp_path: Path) -> None:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    lines = read_public_keys(key.with_suffix(".pub"))
    assert len(lines) == 1 and lines[0].startswith("ssh-ed25519 AAAA")
    with pytest.raises(FormatError, match="private key"):
        read_public_keys(key)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no public key"),
        ("# only a comment\n\n", "no public key"),
        (f"{ED25519}\nssh-ed25519 AAAAnotakey\n", "line 2 is not a valid"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n", "private key"),
    ],
)
def test_read_public_keys_refuses(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.pub"
    path.write_text(text)
    with pytest.raises(FormatError, match=message):
        read_public_keys(path)


def test_read_public_keys_refuses_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.pub"
    path.write_text((ED25519 + "\n") * 20000)  # > 1 MiB
    with pytest.raises(FormatError, match="larger than"):
        read_public_keys(path)
