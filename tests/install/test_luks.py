"""install.luks: the layout's key files checked where they enter, and the initramfs's
key configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.install import luks
from plasmaboot.install.layout import builtin_layouts_dir, load_layout
from plasmaboot.install.packages import system_packages
from plasmaboot.install.secrets import list_secrets

LVM_LUKS = builtin_layouts_dir() / "lvm-luks.toml"


def secrets_with_key(tmp_path: Path, data: bytes) -> Path:
    root = tmp_path / "cp1"
    (root / "etc/plasmaboot/luks").mkdir(parents=True)
    (root / "etc/plasmaboot/luks/root.key").write_bytes(data)
    (root / "etc/iam").mkdir(parents=True)
    (root / "etc/iam/token").write_text("t")
    return root


def test_the_key_files_are_the_secrets_the_layout_names(tmp_path: Path) -> None:
    root = secrets_with_key(tmp_path, bytes(range(64)))
    found = luks.key_files(load_layout(LVM_LUKS), "l.toml", list_secrets(root), root)
    assert [(p.name, s.path, s.owner, s.mode) for p, s in found] == [
        ("root.key", "/etc/plasmaboot/luks/root.key", "root", 0o600)
    ]


@pytest.mark.parametrize("size", [0, 31, 8193])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    root = secrets_with_key(tmp_path, b"k" * size)
    with pytest.raises(UserError) as caught:
        luks.key_files(load_layout(LVM_LUKS), "l.toml", list_secrets(root), root)
    assert caught.value.message.startswith("l.toml: disks[0].partitions[3].luks.key: ")
    assert f"holds {size} bytes" in caught.value.message
    assert "head -c 64 /dev/urandom" in str(caught.value.hint)


def test_a_key_a_services_user_would_own_is_refused(tmp_path: Path) -> None:
    """Under a service's config directory a secret lands owned by its user (secrets.py):
    a LUKS key there would be readable by that service."""
    root = secrets_with_key(tmp_path, bytes(range(64)))
    (root / "etc/iam/root.key").write_bytes(bytes(range(64)))
    layout = load_layout(LVM_LUKS)
    disk = layout.disks[0]
    part = disk.partitions[3]
    assert part.luks is not None
    moved = part.model_copy(
        update={"luks": part.luks.model_copy(update={"key": "etc/iam/root.key"})}
    )
    parts = [*disk.partitions[:3], moved, *disk.partitions[4:]]
    layout = layout.model_copy(update={"disks": [disk.model_copy(update={"partitions": parts})]})
    with pytest.raises(UserError) as caught:
        luks.key_files(layout, "l.toml", list_secrets(root), root)
    assert caught.value.message.startswith("l.toml: disks[0].partitions[3].luks.key: ")
    assert "owned by iam" in caught.value.message


def test_an_unreadable_key_is_named_before_any_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = secrets_with_key(tmp_path, bytes(range(64)))
    secrets, layout = list_secrets(root), load_layout(LVM_LUKS)

    def denied(path: Path, *args: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "open", denied)  # as root, chmod 000 would not stop it
    with pytest.raises(UserError) as caught:
        luks.key_files(layout, "l.toml", secrets, root)
    assert caught.value.message == (
        f"l.toml: disks[0].partitions[3].luks.key: {root}/etc/plasmaboot/luks/root.key: "
        "cannot read it (Permission denied)"
    )


def test_no_layout_key_means_no_key_file(tmp_path: Path) -> None:
    root = secrets_with_key(tmp_path, b"x")  # not a key of this layout: not checked
    layout = load_layout(builtin_layouts_dir() / "default.toml")
    assert luks.key_files(layout, "l.toml", list_secrets(root), root) == []


def test_the_initramfs_takes_the_early_keys_only_when_a_root_is_encrypted() -> None:
    assert "KEYFILE_PATTERN='/*'" in luks.conf_hook()
    assert system_packages(load_layout(LVM_LUKS))[-1] == "cryptsetup-initramfs"
    default = load_layout(builtin_layouts_dir() / "default.toml")
    assert "cryptsetup-initramfs" not in system_packages(default)
