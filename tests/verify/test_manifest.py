"""verify.manifest: manifest.json must parse, and every file must have the size and
sha256 it records."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from artifact_sets import check_of, damage_superblock, failures, run_verify
from plasmaboot.artifacts.layout import IPXE, KERNEL, MANIFEST
from plasmaboot.verify.manifest import check_manifest


def test_a_wrong_hash_or_size_in_the_manifest_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][KERNEL]["sha256"] = "0" * 64
    manifest["files"][IPXE]["size"] += 1
    (directory / MANIFEST).write_text(json.dumps(manifest))
    assert failures(directory) == {"file:bzImage", "file:netboot.ipxe"}


def test_changed_bytes_without_a_new_manifest_fail_the_hash(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    damage_superblock(directory)
    assert failures(directory) == {"file:initrd", "initrd.squashfs"}


def test_a_manifest_that_does_not_parse_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / MANIFEST).write_text('{"label": 3}')
    code, report, _ = run_verify(directory)
    assert code == 1 and check_of(report, "manifest")["result"] == "fail"
    assert check_of(report, "file:initrd")["result"] == "skip"
    assert check_of(report, "image.sshd")["result"] == "pass"


def test_a_file_without_a_record_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["files"][KERNEL]
    (directory / MANIFEST).write_text(json.dumps(manifest))
    checks, parsed = check_manifest(directory)
    assert parsed is not None
    (kernel,) = [c for c in checks if c.name == "file:bzImage"]
    assert kernel.failed and kernel.detail == "manifest.json has no record of bzImage"
