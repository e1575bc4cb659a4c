"""The report's figures from a real Debian build (the session's CI image): package and
module sizes in the manifest, the history line, the report and a diff of the set with
itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.report.history import read_history

from conftest import CiImage, plasmaboot

pytestmark = pytest.mark.slow


def test_manifest_has_package_and_module_sizes(ci_image: CiImage) -> None:
    manifest = read_manifest(ci_image.set_dir)
    assert set(manifest.package_sizes) == set(manifest.packages)
    assert manifest.package_sizes["openssh-server"] > 0
    assert sum(manifest.package_sizes.values()) > 50 << 20
    assert any(tree.startswith("drivers/") for tree in manifest.module_sizes)
    assert all(size > 0 for size in manifest.module_sizes.values())


def test_the_build_is_in_the_history_and_the_report(ci_image: CiImage, tmp_path: Path) -> None:
    records = [r for r in read_history(ci_image.artifacts) if r["label"] == ci_image.label]
    first = records[0]  # the shared image's build (other tests rebuild it later: cache hits)
    assert first["cache"] == ("hit" if ci_image.summary["cache_hit"] else "miss")
    assert first["set"] == ci_image.set_dir.resolve().name
    assert first["sizes"]["initrd"] == (ci_image.set_dir / "initrd").stat().st_size
    assert "mmdebstrap" in first["steps"] or first["cache"] == "hit"
    assert all(r["set"] == first["set"] for r in records)  # rebuilds of the same inputs
    proc = plasmaboot(
        "report", "--artifacts", str(ci_image.artifacts), "--output", str(tmp_path), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    image = json.loads(proc.stdout)["images"][ci_image.label]
    assert image["top_packages"] and image["module_trees"]
    assert (tmp_path / json.loads(proc.stdout)["plots"]["bytes"][ci_image.label]).is_file()
    same = plasmaboot("diff", str(ci_image.set_dir), str(ci_image.set_dir))
    assert same.returncode == 0 and "packages: unchanged" in same.stdout
