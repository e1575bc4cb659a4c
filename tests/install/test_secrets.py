"""install.secrets: the tree as it lands, owners by service config directory, 0600, and
nothing but regular files."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.install.secrets import list_secrets, secrets_tar


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "secrets" / "cp1"
    (root / "etc/iam").mkdir(parents=True)
    (root / "etc/iam/token").write_text("s3cret-iam")
    (root / "etc/plasmaboot").mkdir(parents=True)
    (root / "etc/plasmaboot/cluster.key").write_text("s3cret-cluster")
    return root


def test_files_land_where_they_are_owned_by_their_service(tmp_path: Path) -> None:
    found = [secret.as_json() for _, secret in list_secrets(tree(tmp_path))]
    assert found == [
        {"path": "/etc/iam/token", "owner": "iam", "mode": "0600"},
        {"path": "/etc/plasmaboot/cluster.key", "owner": "root", "mode": "0600"},
    ]


def test_the_stream_has_files_only_mode_0600_and_owner_names(tmp_path: Path) -> None:
    data = secrets_tar(list_secrets(tree(tmp_path)))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
        assert [(m.name, m.mode, m.uname, m.isfile()) for m in members] == [
            ("etc/iam/token", 0o600, "iam", True),
            ("etc/plasmaboot/cluster.key", 0o600, "root", True),
        ]
        extracted = archive.extractfile(members[0])
        assert extracted is not None and extracted.read() == b"s3cret-iam"


def test_a_symlink_in_the_tree_is_refused(tmp_path: Path) -> None:
    root = tree(tmp_path)
    os.symlink("/etc/shadow", root / "etc/link")
    with pytest.raises(UserError, match="etc/link is not a regular file"):
        list_secrets(root)


def test_a_machine_without_secrets_has_none(tmp_path: Path) -> None:
    assert list_secrets(tmp_path / "secrets" / "nobody") == []


def test_an_unreadable_secret_is_named_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path)
    token = root / "etc/iam/token"
    opened = Path.open

    def denied(path: Path, *args: object, **kwargs: object) -> object:
        if path == token:  # as root, chmod 000 would not stop the read
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(UserError) as caught:
        list_secrets(root)
    assert caught.value.message == f"--secrets: {token}: cannot read it (Permission denied)"
    assert caught.value.hint is not None and "readable" in caught.value.hint


def test_a_directory_that_cannot_be_listed_is_named_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rglob skips a directory it cannot list without a word: its secrets would be missing
    root = tree(tmp_path)
    from plasmaboot.install import secrets

    real_access = os.access
    monkeypatch.setattr(
        secrets.os, "access", lambda p, mode: Path(p) != root / "etc/iam" and real_access(p, mode)
    )
    with pytest.raises(UserError, match=r"etc/iam: cannot read it \(Permission denied\)$"):
        list_secrets(root)


def test_a_secret_gone_after_listing_is_a_user_error(tmp_path: Path) -> None:
    root = tree(tmp_path)
    files = list_secrets(root)
    (root / "etc/plasmaboot/cluster.key").unlink()
    with pytest.raises(UserError, match=r"cluster.key: cannot read it \(No such file"):
        secrets_tar(files)
