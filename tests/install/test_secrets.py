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
