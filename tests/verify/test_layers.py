"""verify on a layered set (docs/layers.md): the layers manifest.json names match the
initrd byte for byte (initrd.layers), and the image checks read the package squashfs with
the directory layers stacked above it, as stage-1 stacks them."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_sets import (
    STAGE1_MODULE,
    check_of,
    failures,
    make_ipxe,
    make_squashfs,
    make_tree,
    overwrite_initrd,
    rehash,
    run_verify,
    write_files,
)
from plasmaboot.artifacts.layout import INITRD, KERNEL, PACKAGE_LAYER
from plasmaboot.artifacts.manifest import LayerRecord, read_manifest, write_manifest
from plasmaboot.formats.cpio import Compression, Entry, read_segments, write_segment
from plasmaboot.image.backends.debian.backend import write_initrd
from plasmaboot.image.backends.debian.profile_layer import layer_entries

from conftest import make_kernel

SSHD_NODE_KEYS = "AuthorizedKeysFile .ssh/authorized_keys /etc/plasmaboot/node/authorized_keys\n"
LayeredSet = Callable[..., Path]


@pytest.fixture
def make_layered_set(tmp_path: Path, keypair: tuple[str, str]) -> LayeredSet:
    """A set as the Debian build now leaves it: stage-1, the package squashfs, then the
    profile layer's directory, with each layer recorded in manifest.json. The root's keys,
    the services' units and links and the sshd drop-in are in the profile layer only."""

    def build(edit: Callable[[Path], None] | None = None) -> Path:
        tree = make_tree(tmp_path / "tree", keypair[0])
        profile = tmp_path / "profile"
        for relpath in (
            "root/.ssh/authorized_keys",
            "etc/systemd/system/x.service",
            "etc/systemd/system/y.service",
            "etc/systemd/system/multi-user.target.wants/x.service",
            "etc/ssh/sshd_config.d/plasmaboot.conf",
        ):
            (profile / relpath).parent.mkdir(parents=True, exist_ok=True)
            (tree / relpath).rename(profile / relpath)
        with (profile / "etc/ssh/sshd_config.d/plasmaboot.conf").open("a") as handle:
            handle.write(SSHD_NODE_KEYS)
        if edit is not None:
            edit(profile)
        squashfs = make_squashfs(tree, tmp_path / "packages.squashfs")
        directory = tmp_path / "set"
        directory.mkdir()
        stage1, profile_segment = tmp_path / "stage1.cpio.gz", tmp_path / "profile.cpio.gz"
        write_segment([Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n"),
                       Entry("etc/stage1-modules", stat.S_IFREG | 0o644, data=b"loop.ko\n"),
                       Entry("lib/modules/loop.ko", stat.S_IFREG | 0o644, data=STAGE1_MODULE)],
                      stage1, Compression.GZIP)  # fmt: skip
        write_segment(layer_entries(profile), profile_segment, Compression.GZIP)
        package_entry = Entry(PACKAGE_LAYER, stat.S_IFREG | 0o444, source=squashfs)
        write_initrd(directory / INITRD, [stage1, [package_entry], profile_segment])
        make_kernel(directory / KERNEL)
        make_ipxe(directory)
        rehash(directory)
        manifest = read_manifest(directory)
        write_manifest(directory, manifest.model_copy(update={"layers": records(directory)}))
        return directory

    return build


def records(directory: Path) -> list[LayerRecord]:
    initrd = (directory / INITRD).read_bytes()
    stage1, packages, profile = read_segments(directory / INITRD)
    member = packages.members[-1]

    def record(name: str, offset: int, size: int, kind: str = "segment") -> LayerRecord:
        digest = hashlib.sha256(initrd[offset : offset + size]).hexdigest()
        return LayerRecord(name=name, kind=kind, file=INITRD, offset=offset, size=size,
                           sha256=digest)  # fmt: skip

    return [
        record("stage1", stage1.offset, stage1.end - stage1.offset),
        record("10-packages", member.offset, member.size, "squashfs"),
        record("50-profile", profile.offset, profile.end - profile.offset),
    ]


def test_a_layered_set_passes_with_its_layers_stacked(make_layered_set: LayeredSet) -> None:
    directory = make_layered_set()
    code, report, _ = run_verify(directory)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 0 and all(c["result"] == "pass" for c in checks.values()), checks
    assert checks["initrd.layers"]["detail"].startswith("3 layers match manifest.json")
    assert "/layers/10-packages.squashfs" in checks["initrd.squashfs"]["detail"]
    assert "above it 50-profile" in checks["initrd.squashfs"]["detail"]
    assert "(with 50-profile above)" in checks["image.read"]["detail"]
    # these are in the profile layer only: verify read it
    assert checks["image.authorized-keys"]["detail"].startswith("1 key")
    assert "enabled in multi-user.target.wants" in checks["image.service:x"]["detail"]
    assert "/etc/plasmaboot/node/authorized_keys" in checks["image.sshd-node-keys"]["detail"]


def test_a_changed_byte_in_a_layer_fails_its_hash(make_layered_set: LayeredSet) -> None:
    directory = make_layered_set()
    profile = next(x for x in read_manifest(directory).layers if x.name == "50-profile")
    overwrite_initrd(directory, profile.offset + profile.size - 4, b"\xff\xff\xff\xff")
    rehash(directory)  # the file's own record agrees: only the layer's hash can tell
    _, report, _ = run_verify(directory)
    detail = check_of(report, "initrd.layers")["detail"]
    assert check_of(report, "initrd.layers")["result"] == "fail"
    assert detail.startswith("50-profile: sha256 ") and "manifest.json says" in detail


def test_an_upper_layer_hides_the_package_layers_file(make_layered_set: LayeredSet) -> None:
    """The profile layer's /etc/shadow is the one a node sees, so it is the one judged."""
    directory = make_layered_set(
        lambda profile: write_files(profile, {"etc/shadow": "root:$6$salt$hash:19000::::::\n"})
    )
    assert failures(directory) == {"image.root-password"}


def test_a_private_key_in_the_profile_layer_is_found(
    make_layered_set: LayeredSet, keypair: tuple[str, str]
) -> None:
    directory = make_layered_set(
        lambda profile: write_files(profile, {"etc/plasmaboot/stray": keypair[1]})
    )
    assert failures(directory) == {"image.private-keys"}


def test_sshd_must_read_the_nodes_own_keys(make_layered_set: LayeredSet) -> None:
    def drop_line(profile: Path) -> None:
        drop_in = profile / "etc/ssh/sshd_config.d/plasmaboot.conf"
        drop_in.write_text(drop_in.read_text().replace(SSHD_NODE_KEYS, ""))

    directory = make_layered_set(drop_line)
    assert failures(directory) == {"image.sshd-node-keys"}
    _, report, _ = run_verify(directory)
    assert "AuthorizedKeysFile is not set" in check_of(report, "image.sshd-node-keys")["detail"]


def test_a_set_without_layers_skips_the_layer_check(make_set: Callable[..., Path]) -> None:
    _, report, _ = run_verify(make_set())
    check = check_of(report, "initrd.layers")
    assert check["result"] == "skip" and "no layers" in check["detail"]
