"""Layers in a real build (slow): after the session's CI image, a config-only change (one
service port) rebuilds the profile layer and reuses the package layer (asserted on the
build's own report: --json, manifest.json and build.log, never on time), the rebuilt set
verifies, and it boots (boot-test, one boot over QEMU's user network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from plasmaboot.artifacts.manifest import read_manifest

from conftest import CI_PROFILE, CI_SERVICE, CiImage, plasmaboot

pytestmark = pytest.mark.slow
NEW_PORT = 8181


@pytest.fixture(scope="module")
def port_changed(ci_image: CiImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CI profile with its service on another port, built after the CI image."""
    base = tmp_path_factory.mktemp("port-changed")
    profiles = base / "profiles"
    shutil.copytree(ci_image.profiles_dir, profiles)
    with (profiles / f"{CI_PROFILE}.toml").open("a") as handle:
        handle.write(f"port = {NEW_PORT}\n")  # into [services.iam]
    artifacts = base / "artifacts"
    proc = plasmaboot(
        "--profiles-dir", str(profiles), "build", "--profile", CI_PROFILE,
        "--backend", "debian", "--output-dir", str(artifacts), "--json",
        env={"PLASMABOOT_CACHE": str(ci_image.cache)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (base / "summary.json").write_text(proc.stdout)
    return artifacts


def test_a_config_only_change_reuses_the_package_layer(
    ci_image: CiImage, port_changed: Path
) -> None:
    (summary,) = json.loads((port_changed.parent / "summary.json").read_text())
    assert summary["cache_hit"] is False
    assert summary["layers"] == {"stage1": "built", "10-packages": "reused", "50-profile": "built"}
    set_dir = port_changed / CI_PROFILE
    manifest = read_manifest(set_dir)
    layers = {layer.name: layer for layer in manifest.layers}
    assert layers["10-packages"].reused is True and layers["50-profile"].reused is False
    before = {layer.name: layer for layer in read_manifest(ci_image.set_dir).layers}
    assert layers["10-packages"].sha256 == before["10-packages"].sha256  # the same layer
    assert layers["50-profile"].sha256 != before["50-profile"].sha256  # the new port
    assert manifest.resolved_profile.services[CI_SERVICE].ports == {"port": NEW_PORT}
    log = (set_dir / "build.log").read_text()
    assert "layer 10-packages: reused" in log and "layer 50-profile: built" in log
    assert "$ mmdebstrap" not in log and "$ mksquashfs" not in log
    verify = plasmaboot("verify", str(set_dir), "--json")
    assert verify.returncode == 0, verify.stdout[-3000:]
    checks = {c["name"]: c for c in json.loads(verify.stdout)["checks"]}
    assert checks["initrd.layers"]["result"] == "pass"
    assert checks["image.sshd-node-keys"]["result"] == "pass"


def test_the_rebuilt_image_boots(ci_image: CiImage, port_changed: Path) -> None:
    report_path = port_changed / "boot-test.json"
    proc = plasmaboot(
        "--profiles-dir", str(ci_image.profiles_dir), "boot-test", CI_PROFILE,
        "--artifacts", str(port_changed), "--identity", str(ci_image.identity),
        "--memory", "1024", "--boots", "1", "--report", str(report_path), "--json",
    )  # fmt: skip
    report = json.loads(report_path.read_text())
    failed = [c for c in report["checks"] if c["result"] != "pass"]
    assert proc.returncode == 0, f"{failed}\n{proc.stderr[-3000:]}"
    names = {c["name"] for c in report["checks"]}
    assert {"systemd is running", "no failed units", f"service {CI_SERVICE}"} <= names
