"""verify.store and the image checks of a NixOS store image: the system the kernel line
boots is found, its /etc laid out and its accounts read, and the Debian image's rules hold
there: a forged store fails exactly the named check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from artifact_sets import (
    NIX_SSHD_CONFIG,
    NIX_SYSTEM,
    NIX_USERS,
    check_of,
    failures,
    make_nix_set,
    run_verify,
    store_path,
    write_files,
)

StoreEdit = Callable[[Path], None]
ROOT = {"name": "root", "uid": 0}
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----\n"
)


def etc(store: Path) -> Path:
    return store / store_path("etc") / "etc"


def units(store: Path) -> Path:
    return store / store_path("system-units")


def sshd_config(text: str) -> StoreEdit:
    return lambda store: (store / store_path("sshd.conf-final")).write_text(text)


def users(*changed: dict[str, Any]) -> StoreEdit:
    """users-groups.json with the given users replacing (by name) or added to the good ones."""
    by_name = {user["name"]: user for user in NIX_USERS} | {u["name"]: u for u in changed}
    spec = {"mutableUsers": True, "users": list(by_name.values()), "groups": []}
    return lambda store: (store / store_path("users-groups.json")).write_text(json.dumps(spec))


def new_unit(name: str, text: str, target: str = "multi-user.target") -> StoreEdit:
    """A unit NixOS would make: its own store path, linked from the units and wanted."""

    def edit(store: Path) -> None:
        unit_dir = store_path(f"unit-{name.replace('/', '-')}")
        write_files(store, {f"{unit_dir}/unit": text})
        link = units(store) / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"/nix/store/{unit_dir}/unit")
        if target and name.endswith(".service"):
            (units(store) / f"{target}.wants").mkdir(exist_ok=True)
            (units(store) / f"{target}.wants" / name).symlink_to(f"../{name}")

    return edit


def etc_file(name: str, text: str) -> StoreEdit:
    def edit(store: Path) -> None:
        write_files(store, {store_path(name.replace("/", "-")): text})
        (etc(store) / name).symlink_to(f"/nix/store/{store_path(name.replace('/', '-'))}")

    return edit


GETTY_OVERRIDE = f"{store_path('unit-getty-.service')}/getty@.service"
FORGED: dict[str, tuple[StoreEdit, set[str]]] = {
    "password-login": (
        sshd_config(
            NIX_SSHD_CONFIG.replace("PasswordAuthentication no", "PasswordAuthentication yes")
        ),
        {"image.sshd"},
    ),
    "root-login-with-password": (
        sshd_config("PermitRootLogin yes\n" + NIX_SSHD_CONFIG),
        {"image.sshd"},
    ),
    "password-in-match": (
        sshd_config(NIX_SSHD_CONFIG + "Match Address 10.0.0.0/8\n  PasswordAuthentication yes\n"),
        {"image.sshd"},
    ),
    "keys-file-elsewhere": (
        sshd_config("AuthorizedKeysFile /tmp/keys\n" + NIX_SSHD_CONFIG),
        {"image.login-paths"},
    ),
    "keys-file-added": (
        sshd_config(
            NIX_SSHD_CONFIG.replace(
                "/etc/ssh/authorized_keys.d/%u", "/etc/ssh/authorized_keys.d/%u /srv/k"
            )
        ),
        {"image.login-paths"},
    ),
    "keys-command": (
        sshd_config(NIX_SSHD_CONFIG + "AuthorizedKeysCommand /bin/cat\n"),
        {"image.login-paths"},
    ),
    "host-key-in-etc": (
        etc_file("ssh/ssh_host_ed25519_key", PRIVATE_KEY),
        {"image.private-keys", "image.host-keys"},
    ),
    "private-key-copied-into-the-store": (
        lambda store: write_files(store, {store_path("deploy"): PRIVATE_KEY}),
        {"image.private-keys"},
    ),
    "host-key-name-deep-in-the-store": (
        lambda store: write_files(store, {f"{store_path('keys')}/a/b/ssh_host_rsa_key": "x"}),
        {"image.private-keys"},
    ),
    "host-key-as-a-store-path": (
        lambda store: write_files(store, {store_path("ssh_host_ecdsa_key"): "x"}),
        {"image.private-keys"},
    ),
    "private-key-in-an-etc-file": (
        etc_file("deploy.conf", "key = '''\n" + PRIVATE_KEY + "'''\n"),
        {"image.private-keys"},
    ),
    "root-empty-hash": (users({**ROOT, "initialHashedPassword": ""}), {"image.root-password"}),
    "root-empty-password": (users({**ROOT, "password": ""}), {"image.root-password"}),
    "root-clear-text": (users({**ROOT, "initialPassword": "nixos"}), {"image.root-password"}),
    "root-hash": (users({**ROOT, "hashedPassword": "$6$salt$hash"}), {"image.root-password"}),
    "root-password-file": (
        users({**ROOT, "hashedPasswordFile": "/run/secrets/root"}),
        {"image.root-password"},
    ),
    "root-hash-over-locked-initial": (
        users({**ROOT, "initialHashedPassword": "!", "hashedPassword": "$6$x$y"}),
        {"image.root-password"},
    ),
    "second-uid-0": (users({"name": "toor", "uid": 0}), {"image.login-paths"}),
    "user-empty-initial-password": (
        users({"name": "guest", "uid": 1000, "initialPassword": ""}),
        {"image.login-paths"},
    ),
    "user-empty-hash": (users({"name": "nixos", "hashedPassword": ""}), {"image.login-paths"}),
    "getty-autologin": (
        lambda store: (store / GETTY_OVERRIDE).write_text(
            "[Service]\nExecStart=\nExecStart=@/bin/agetty agetty --autologin root %I $TERM\n"
        ),
        {"image.login-paths"},
    ),
    "serial-getty-autologin": (
        new_unit(
            "serial-getty@ttyS0.service",
            "[Service]\nExecStart=-/bin/agetty -a root --keep-baud 115200 %I\n",
            "getty.target",
        ),
        {"image.login-paths"},
    ),
    "sshd-other-config": (
        lambda store: (store / store_path("unit-sshd.service") / "sshd.service").write_text(
            "[Service]\nExecStart=/bin/sshd -D -f /etc/ssh/other_config\n"
        ),
        {"image.login-paths"},
    ),
    "sshd-option": (
        lambda store: (store / store_path("unit-sshd.service") / "sshd.service").write_text(
            "[Service]\nExecStart=/bin/sshd -D -f /etc/ssh/sshd_config -o PermitEmptyPasswords=1\n"
        ),
        {"image.login-paths"},
    ),
    "no-root-keys": (
        lambda store: (store / store_path("root-authorized_keys")).write_text("\n"),
        {"image.authorized-keys"},
    ),
    "bad-root-key": (
        lambda store: (store / store_path("root-authorized_keys")).write_text(
            "ssh-ed25519 AAAA x\n"
        ),
        {"image.authorized-keys"},
    ),
    "enabled-service-not-wanted": (
        lambda store: (units(store) / "multi-user.target.wants/x.service").unlink(),
        {"image.service:x"},
    ),
    "enabled-service-missing": (
        lambda store: (units(store) / "x.service").unlink(),
        {"image.service:x"},
    ),
    "disabled-service-wanted": (
        new_unit("y.service", "[Service]\nExecStart=/bin/y\n"),
        {"image.service:y"},
    ),
    "system-without-etc": (
        lambda store: (store / NIX_SYSTEM / "etc").unlink(),
        {"image.system"},
    ),
    "users-spec-missing": (
        lambda store: (store / store_path("users-groups.json")).unlink(),
        {"image.root-password", "image.login-paths"},
    ),
    "users-spec-not-json": (
        lambda store: (store / store_path("users-groups.json")).write_text("[1, 2"),
        {"image.root-password", "image.login-paths"},
    ),
}


def test_a_good_nix_set_passes_every_image_check(tmp_path: Path) -> None:
    code, report, _ = run_verify(make_nix_set(tmp_path))
    assert code == 0, report
    results = {c["name"]: (c["result"], c["detail"]) for c in report["checks"]}
    image = {name: result for name, (result, _) in results.items() if name.startswith("image.")}
    assert set(image.values()) == {"pass"}, results
    assert set(image) == {
        "image.read", "image.init", "image.system", "image.private-keys", "image.host-keys",
        "image.root-password", "image.sshd", "image.authorized-keys", "image.login-paths",
        "image.service:x", "image.service:y",
    }  # fmt: skip
    assert "initialHashedPassword" in results["image.root-password"][1]
    assert results["image.service:y"][1].startswith("no unit, not enabled")


@pytest.mark.parametrize("forgery", FORGED)
def test_a_forged_nix_store_fails_the_named_check(tmp_path: Path, forgery: str) -> None:
    edit, expected = FORGED[forgery]
    assert failures(make_nix_set(tmp_path, edit=edit)) == expected


def test_accounts_made_another_way_are_skipped_and_said(tmp_path: Path) -> None:
    def edit(store: Path) -> None:
        (store / NIX_SYSTEM / "activate").write_text("#!/bin/sh\nsystemd-sysusers\n")

    code, report, _ = run_verify(make_nix_set(tmp_path, edit=edit))
    assert code == 0, report
    root = check_of(report, "image.root-password")
    assert root["result"] == "skip"
    assert "names no users-groups.json" in root["detail"]
    assert "not checked" in check_of(report, "image.login-paths")["detail"]


def test_an_unreadable_nix_store_skips_the_image_checks(tmp_path: Path) -> None:
    other = "zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-worker-24.05.20240101.abcdef"
    code, report, _ = run_verify(make_nix_set(tmp_path, init_system=other))
    assert code == 1
    assert check_of(report, "image.init")["result"] == "fail"
    for name in ("image.system", "image.sshd", "image.service:x"):
        assert check_of(report, name)["result"] == "skip"
        assert "not in the image" in check_of(report, name)["detail"]


def test_the_root_key_is_read_from_nixos_authorized_keys_dir(tmp_path: Path) -> None:
    _, report, _ = run_verify(make_nix_set(tmp_path))
    assert check_of(report, "image.authorized-keys")["detail"] == "1 key (ssh-ed25519)"


def test_an_etc_of_links_that_multiply_is_cut_off(tmp_path: Path) -> None:
    """Each directory links twice to the next: laid out whole, 2^20 entries."""

    def edit(store: Path) -> None:
        for depth in range(20):
            here = store / store_path(f"d{depth}")
            here.mkdir()
            for name in ("a", "b"):
                (here / name).symlink_to(f"/nix/store/{store_path(f'd{depth + 1}')}")
        (store / store_path("d20")).mkdir()
        (etc(store) / "bomb").symlink_to(f"/nix/store/{store_path('d0')}")
        (etc(store) / "loop").symlink_to(".")

    directory = make_nix_set(tmp_path, edit=edit)
    assert failures(directory) == {"image.system"}
    _, report, _ = run_verify(directory)
    assert "more than 100000 entries" in check_of(report, "image.system")["detail"]
