"""verify.kernel: the bzImage's header, version (against the manifest) and size."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from artifact_sets import check_of, failures, rehash, run_verify
from plasmaboot.artifacts.layout import KERNEL, MANIFEST

from conftest import KERNEL_VERSION


def test_a_text_file_as_kernel_fails_its_header(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / KERNEL).write_text("#!/bin/sh\necho not a kernel\n" * 1000)
    rehash(directory)  # so only the damage itself is reported, not the changed hash
    assert failures(directory) == {"bzImage.header"}
    _, report, _ = run_verify(directory)
    assert check_of(report, "bzImage.version")["result"] == "skip"


def test_a_kernel_of_another_release_than_the_manifest_says_fails(
    make_set: Callable[..., Path],
) -> None:
    directory = make_set()
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["kernel_version"] = "6.1.0-1-amd64"
    (directory / MANIFEST).write_text(json.dumps(manifest))
    # stage-1's modules are built for the kernel the set has, not the one the manifest names
    assert failures(directory) == {"bzImage.version", "initrd.stage1-modules"}
    _, report, _ = run_verify(directory)
    release = KERNEL_VERSION.split()[0]
    detail = f"kernel is {release}, manifest.json says 6.1.0-1-amd64"
    assert check_of(report, "bzImage.version")["detail"] == detail
    modules = check_of(report, "initrd.stage1-modules")["detail"]
    assert modules.startswith(f"squashfs.ko is built for '{release} SMP mod_unload'")
