"""verify.image: what the root image holds (keys, passwords, sshd, authorized_keys, the
built profile's services), and a NixOS store image checked for the system it boots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_sets import (
    NIX_SYSTEM,
    SSHD_DROP_IN,
    check_of,
    failures,
    make_nix_set,
    overwrite_initrd,
    profile_with_services,
    rehash,
    run_verify,
    squashfs_offset,
    write_files,
)
from plasmaboot.artifacts.layout import INITRD
from plasmaboot.artifacts.manifest import read_manifest, write_manifest
from plasmaboot.verify.image import AUTHORIZED_KEYS_FILE


def damage_tables(directory: Path) -> None:
    # the metadata (inodes, directories, ids) sits at the end of the image
    start = squashfs_offset(directory)
    data = (directory / INITRD).read_bytes()
    bytes_used = int.from_bytes(data[start + 40 : start + 48], "little")
    inode_table = int.from_bytes(data[start + 64 : start + 72], "little")
    overwrite_initrd(directory, start + inode_table, b"\xff" * (bytes_used - inode_table))


def test_damaged_image_tables_fail_the_read(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    damage_tables(directory)
    rehash(directory)  # so only the damage itself is reported, not the changed hash
    assert failures(directory) == {"image.read"}
    _, report, _ = run_verify(directory)
    assert check_of(report, "image.sshd")["result"] == "skip"


def add_private_key(tree: Path, private_key: str) -> None:
    write_files(tree, {"root/.ssh/id_ed25519": private_key})


def test_a_private_key_in_the_image_fails(
    make_set: Callable[..., Path], keypair: tuple[str, str]
) -> None:
    directory = make_set(lambda tree: add_private_key(tree, keypair[1]))
    assert failures(directory) == {"image.private-keys"}


def test_ssh_host_keys_in_the_image_fail(
    make_set: Callable[..., Path], keypair: tuple[str, str]
) -> None:
    def edit(tree: Path) -> None:
        write_files(
            tree,
            {
                "etc/ssh/ssh_host_ed25519_key": keypair[1],
                "etc/ssh/ssh_host_ed25519_key.pub": keypair[0],
            },
        )

    assert failures(make_set(edit)) == {"image.private-keys", "image.host-keys"}


@pytest.mark.parametrize(
    "shadow_root",
    ["root:$6$salt$hash:19000:0:99999:7:::", "root::19000:0:99999:7:::"],
)
def test_a_usable_root_password_fails(make_set: Callable[..., Path], shadow_root: str) -> None:
    directory = make_set(lambda tree: write_files(tree, {"etc/shadow": shadow_root + "\n"}))
    assert failures(directory) == {"image.root-password"}


def test_a_root_hash_in_passwd_fails(make_set: Callable[..., Path]) -> None:
    def edit(tree: Path) -> None:
        write_files(tree, {"etc/passwd": "root:$6$salt$hash:0:0:root:/root:/bin/bash\n"})

    assert failures(make_set(edit)) == {"image.root-password"}


@pytest.mark.parametrize(
    "drop_in",
    [
        SSHD_DROP_IN.replace("PasswordAuthentication no", "PasswordAuthentication yes"),
        SSHD_DROP_IN.replace("PasswordAuthentication no\n", ""),  # sshd's default is yes
        SSHD_DROP_IN.replace("prohibit-password", "yes"),
        SSHD_DROP_IN + "Match User root\n  PasswordAuthentication yes\n",
    ],
)
def test_sshd_that_allows_passwords_fails(make_set: Callable[..., Path], drop_in: str) -> None:
    def edit(tree: Path) -> None:
        write_files(tree, {"etc/ssh/sshd_config.d/plasmaboot.conf": drop_in})

    assert failures(make_set(edit)) == {"image.sshd"}


def test_missing_authorized_keys_fail(make_set: Callable[..., Path]) -> None:
    def edit(tree: Path) -> None:
        write_files(tree, {"root/.ssh/authorized_keys": "# no keys\nssh-ed25519 AAAAnotakey x\n"})

    assert failures(make_set(edit)) == {"image.authorized-keys"}


def test_services_must_be_enabled_as_the_manifest_says(make_set: Callable[..., Path]) -> None:
    def edit(tree: Path) -> None:
        wants = tree / "etc/systemd/system/multi-user.target.wants"
        (wants / "x.service").unlink()
        (wants / "y.service").symlink_to("/etc/systemd/system/y.service")

    assert failures(make_set(edit)) == {"image.service:x", "image.service:y"}


def test_a_missing_unit_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set(lambda tree: (tree / "etc/systemd/system/y.service").unlink())
    assert failures(directory) == {"image.service:y"}


def test_the_services_checked_are_those_of_the_built_profile(
    make_set: Callable[..., Path],
) -> None:
    directory = make_set()
    manifest = read_manifest(directory)
    profile = profile_with_services({"x": True, "z": False})
    write_manifest(directory, manifest.model_copy(update={"resolved_profile": profile}))
    assert failures(directory) == {"image.service:z"}
    _, report, _ = run_verify(directory)
    assert "image.service:y" not in {c["name"] for c in report["checks"]}
    detail = check_of(report, "image.service:z")["detail"]
    assert detail == "/etc/systemd/system/z.service is missing"


def test_a_nix_store_image_is_checked_for_its_init(tmp_path: Path) -> None:
    code, report, _ = run_verify(make_nix_set(tmp_path))
    assert code == 0, report
    results = {c["name"]: (c["result"], c["detail"]) for c in report["checks"]}
    assert results["initrd.squashfs"][0] == "pass"
    assert "/nix-store.squashfs: squashfs 4.0, zstd" in results["initrd.squashfs"][1]
    assert results["image.read"][0] == "pass"
    assert results["image.init"] == ("pass", f"/nix/store/{NIX_SYSTEM}/init is in the store image")
    # the image checks read the system's /etc: tests/verify/test_store.py
    assert results["image.sshd"][0] == "pass"


def test_a_nix_set_whose_init_is_not_in_the_store_image_fails(tmp_path: Path) -> None:
    other = "zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-worker-24.05.20240101.abcdef"
    assert failures(make_nix_set(tmp_path, init_system=other)) == {"image.init"}


PASSWD = "root:x:0:0:root:/root:/bin/bash\n"
LOGIN_PATHS = {
    "keys-file-elsewhere": {"etc/ssh/sshd_config.d/zz.conf": "AuthorizedKeysFile /tmp/keys\n"},
    "keys-file-added": {
        "etc/ssh/sshd_config.d/zz.conf": "AuthorizedKeysFile .ssh/authorized_keys /srv/k\n"
    },
    "keys-file-in-match": {
        "etc/ssh/sshd_config.d/zz.conf": "Match User root\n  AuthorizedKeysFile /tmp/k\n"
    },
    "keys-command": {
        "etc/ssh/sshd_config.d/zz.conf": "AuthorizedKeysCommand /bin/cat\n"
        "AuthorizedKeysCommandUser nobody\n"
    },
    "principals-file": {"etc/ssh/sshd_config.d/zz.conf": "AuthorizedPrincipalsFile /tmp/p\n"},
    "second-uid-0": {"etc/passwd": PASSWD + "toor:x:0:0::/root:/bin/sh\n"},
    "second-uid-0-spaced": {"etc/passwd": PASSWD + "toor:x: 0:0::/root:/bin/sh\n"},
    "empty-passwd-field": {"etc/passwd": PASSWD + "guest::1000:1000::/home/g:/bin/sh\n"},
    "empty-shadow-field": {"etc/shadow": "root:*:19000:0:99999:7:::\nguest::19000::::::\n"},
    "getty-autologin": {
        "etc/systemd/system/getty@tty1.service.d/autologin.conf": "[Service]\nExecStart=\n"
        "ExecStart=-/sbin/agetty --autologin root --noclear %I $TERM\n"
    },
    "serial-getty-autologin": {
        "etc/systemd/system/serial-getty@ttyS0.service.d/override.conf": "[Service]\n"
        "ExecStart=\nExecStart=-/sbin/agetty -o '-p -- \\\\u' -a root --keep-baud 115200 %I\n"
    },
    "sshd-other-config": {
        "etc/systemd/system/ssh.service.d/override.conf": "[Service]\nExecStart=\n"
        "ExecStart=/usr/sbin/sshd -D -f /etc/ssh/other_config\n"
    },
    "sshd-opts": {"etc/default/ssh": 'SSHD_OPTS="-f /tmp/sshd_config"\n'},
    "sshd-unit-replaced": {
        "etc/systemd/system/ssh.service": "[Service]\n"
        "ExecStart=/usr/sbin/sshd -D -o PasswordAuthentication=yes\n"
    },
}


@pytest.mark.parametrize("login_path", LOGIN_PATHS)
def test_another_way_in_fails_the_login_paths(
    make_set: Callable[..., Path], login_path: str
) -> None:
    assert failures(make_set(lambda tree: write_files(tree, LOGIN_PATHS[login_path]))) == {
        "image.login-paths"
    }


@pytest.mark.parametrize(
    "files",
    [
        {"etc/ssh/sshd_config.d/zz.conf": "AuthorizedKeysFile " + AUTHORIZED_KEYS_FILE + "\n"},
        {"etc/ssh/sshd_config.d/zz.conf": "AuthorizedKeysCommand none\n"},
        {"etc/systemd/system/getty@tty1.service.d/x.conf": "[Service]\nTTYVTDisallocate=no\n"},
        {"etc/passwd": PASSWD + "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"},
        {"etc/default/ssh": 'SSHD_OPTS=""\n'},
        {"etc/systemd/system/ssh.service": "[Service]\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\n"},
    ],
)
def test_the_image_plasmaboot_writes_keeps_to_root_keys(
    make_set: Callable[..., Path], files: dict[str, str]
) -> None:
    assert failures(make_set(lambda tree: write_files(tree, files))) == set()
