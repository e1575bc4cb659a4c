"""Reproducible builds (slow): two `--no-cache` builds of control-plane from the same inputs
(the same archive state, hence the same SOURCE_DATE_EPOCH) give bit-identical bzImage,
initrd (every segment: the squashfs with its times and order) and netboot.ipxe. Their
manifests differ only in when the build ran and how long its steps took. The .deb cache is
shared (the packages are the same bytes whether downloaded or not)."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from pathlib import Path

import pytest

from plasmaboot.formats.cpio import read_segments

from conftest import plasmaboot

pytestmark = pytest.mark.slow

PROFILE = "control-plane"
# When the build ran and how long its steps took: the only fields allowed to differ.
TIMING_FIELDS = {"built_at", "steps"}


def build(output_dir: Path, cache: str) -> Path:
    proc = plasmaboot(
        "build",
        "--profile",
        PROFILE,
        "--backend",
        "debian",
        "--no-cache",
        "--no-ssh-key",  # nobody logs in: the bytes are what is compared
        "--output-dir",
        str(output_dir),
        env={"PLASMABOOT_CACHE": cache},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return output_dir / PROFILE


def squashfs_listing(set_dir: Path, scratch: Path) -> list[str]:
    """`unsquashfs -lls` of the set's root squashfs: what to read when the initrds differ."""
    segments = read_segments(set_dir / "initrd")
    member = next(m for m in segments[-1].members if m.name == "root.squashfs")
    image = scratch / f"{set_dir.parent.name}.squashfs"
    image.write_bytes(segments[-1].payload[member.offset : member.offset + member.size])
    proc = subprocess.run(
        ["unsquashfs", "-lls", "-UTC", str(image)], check=True, capture_output=True, text=True
    )
    return proc.stdout.splitlines()


def test_two_builds_from_the_same_inputs_are_bit_identical(tmp_path: Path) -> None:
    cache = os.environ.get("PLASMABOOT_TEST_CACHE") or str(tmp_path / "cache")
    first, second = build(tmp_path / "a", cache), build(tmp_path / "b", cache)
    for name in ("bzImage", "netboot.ipxe"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    if (first / "initrd").read_bytes() != (second / "initrd").read_bytes():
        diff = difflib.unified_diff(
            squashfs_listing(first, tmp_path), squashfs_listing(second, tmp_path), lineterm=""
        )
        pytest.fail("the initrds differ; the squashfs listings:\n" + "\n".join(list(diff)[:60]))
    manifests = [json.loads((s / "manifest.json").read_text()) for s in (first, second)]
    differing = {key for key in manifests[0].keys() | manifests[1].keys()} - {
        key for key in manifests[0] if manifests[0].get(key) == manifests[1].get(key)
    }
    assert differing <= TIMING_FIELDS, differing
    assert manifests[0]["steps"].keys() == manifests[1]["steps"].keys()
