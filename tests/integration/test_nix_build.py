"""Real Nix builds: `plasmaboot build --backend nix` through the command line (against the
fixture flake: a complete set, the cache, --plasmacloud, a failing build and a profile the
flake lacks leave the previous set), and (slow) a real NixOS netboot image where nixpkgs
can be fetched."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from nix_flakes import (
    copy_fixture_flake,
    copy_flake_sources,
    fixture_initrd_text,
    needs_nix,
    nix_build,
)
from plasmaboot.artifacts.layout import SET_FILES, sha256_file
from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.image.backend import BuildRequest
from plasmaboot.image.backends.nix import NixBackend, NixOptions
from plasmaboot.log import Log
from plasmaboot.nix import nix_command
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.run import run

NIXPKGS = "github:NixOS/nixpkgs/nixos-24.05"


@pytest.fixture
def nix_env(tmp_path: Path, offline_nix: None) -> dict[str, str]:
    """The environment of a CLI build: the offline nix settings plus a private cache."""
    return {"PLASMABOOT_CACHE": str(tmp_path / "cache")}


def publish_previous(out: Path, label: str) -> dict[str, str]:
    """A set already published for `label`; returns its link and files' hashes."""
    src = out.parent / f"previous-{label}"
    src.mkdir()
    for name in ("bzImage", "initrd"):
        (src / name).write_bytes(name.encode() * 100)
    (src / "netboot.ipxe").write_text(render_netboot_script("base", ["console=ttyS0"]))
    publish_atomically(src, out, label, ("bzImage", "initrd", "netboot.ipxe"))
    return snapshot(out, label)


def snapshot(out: Path, label: str) -> dict[str, str]:
    link = out / label
    return {"link": os.readlink(link), **{p.name: sha256_file(p) for p in link.iterdir()}}


@needs_nix
@pytest.mark.nix
def test_cli_builds_a_complete_set_and_then_hits_the_cache(
    tmp_path: Path, nix_env: dict[str, str]
) -> None:
    flake = copy_fixture_flake(tmp_path / "flake")
    out = tmp_path / "artifacts"
    proc = nix_build(flake, out, nix_env, "--profile", "base")
    assert proc.returncode == 0, proc.stderr
    (summary,) = json.loads(proc.stdout)
    assert (summary["backend"], summary["cache_hit"]) == ("nix", False)
    assert summary["kernel_version"] == "6.1.0-fixture"

    current = out / "base"
    assert current.is_symlink()
    assert sorted(p.name for p in current.iterdir()) == sorted(SET_FILES)
    assert (current / "bzImage").read_bytes()[0x202:0x206] == b"HdrS"
    assert fixture_initrd_text(current / "initrd") == "fixture initrd base\n"

    manifest = read_manifest(current)
    assert (manifest.backend, manifest.distro) == ("nix", "nixos 24.05")
    assert manifest.kernel_version == "6.1.0-fixture"
    for name, record in manifest.files.items():
        assert sha256_file(current / name) == record.sha256, name

    # the profile's parameters first, then the real init of the built system
    kernel_line = next(
        line for line in (current / "netboot.ipxe").read_text().splitlines()
        if line.startswith("kernel ")
    )  # fmt: skip
    params = kernel_line.split()[2:]
    profile = ProfileStore().resolve("base")
    assert params[: len(profile.kernel.params) + 1] == ["initrd=initrd", *profile.kernel.params]
    (init,) = [p for p in params if p.startswith("init=")]
    assert re.fullmatch(r"init=/nix/store/[a-z0-9]{32}-nixos-system-base-[^/]+/init", init)
    assert params.index(init) > params.index(profile.kernel.params[-1])
    assert init in manifest.kernel_params
    assert Path(init.removeprefix("init=")).is_file()

    log = (current / "build.log").read_text()
    assert "netboot-base.config.system.build.netbootRamdisk" in log
    assert "packing the initrd of base" in log  # nix's build output, via --print-build-logs
    assert "plasmacloud input: fixture stub" in log

    again = nix_build(flake, out, nix_env, "--profile", "base")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["cache_hit"] is True
    assert read_manifest(out / "base").files == manifest.files


@needs_nix
@pytest.mark.nix
def test_cli_passes_plasmacloud_to_nix(tmp_path: Path, nix_env: dict[str, str]) -> None:
    flake = copy_fixture_flake(tmp_path / "flake")
    plasmacloud = tmp_path / "plasmacloud"
    plasmacloud.mkdir()
    (plasmacloud / "flake.nix").write_text('{ outputs = _: { name = "tenant overlay"; }; }\n')
    out = tmp_path / "artifacts"
    ref = f"path:{plasmacloud}"
    proc = nix_build(flake, out, nix_env, "--profile", "base", "--plasmacloud", ref)
    assert proc.returncode == 0, proc.stderr
    log = (out / "base" / "build.log").read_text()
    assert f"--override-input plasmacloud {ref}" in log
    assert "plasmacloud input: tenant overlay" in log
    # another plasmacloud input is another image: not served from the cache
    default = nix_build(flake, out, nix_env, "--profile", "base")
    assert json.loads(default.stdout)[0]["cache_hit"] is False
    assert "plasmacloud input: fixture stub" in (out / "base" / "build.log").read_text()


@needs_nix
@pytest.mark.nix
def test_cli_failing_nix_build_keeps_the_previous_set(
    tmp_path: Path, nix_env: dict[str, str]
) -> None:
    flake = copy_fixture_flake(tmp_path / "flake")
    out = tmp_path / "artifacts"
    before = publish_previous(out, "base-debug")
    proc = nix_build(flake, out, nix_env, "--profile", "base", "--variant", "debug")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("failed: ")
    assert "the initrd of base-debug failed to build" in proc.stderr
    assert snapshot(out, "base-debug") == before
    assert "failed to build" in (out / "base-debug.failed.log").read_text()
    assert not [p for p in (out / ".sets").iterdir() if p.name.startswith(".staging-")]


@needs_nix
@pytest.mark.nix
def test_cli_profile_missing_from_the_flake(tmp_path: Path, nix_env: dict[str, str]) -> None:
    flake = copy_fixture_flake(tmp_path / "flake")
    out = tmp_path / "artifacts"
    before = publish_previous(out, "worker")
    proc = nix_build(flake, out, nix_env, "--profile", "worker")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: flake ")
    assert "has no nixosConfigurations.netboot-worker; it has: base, base-debug" in first
    assert "git add" in proc.stderr
    assert snapshot(out, "worker") == before


# ---------------------------------------------------------------------------------------
# The real thing: a NixOS netboot image, where nixpkgs can be fetched


def nixpkgs_unreachable() -> str | None:
    """Why nixpkgs cannot be fetched here, or None if it can."""
    proc = run(
        nix_command("flake", "metadata", "--json", NIXPKGS),
        check=False,
        timeout=60,
    )
    if proc.returncode == 0:
        return None
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1] if errors else f"`nix flake metadata` exit code {proc.returncode}"


@needs_nix
@pytest.mark.nix
@pytest.mark.slow
def test_full_nixos_netboot_build(tmp_path: Path) -> None:
    reason = nixpkgs_unreachable()
    if reason is not None:
        pytest.skip(f"nixpkgs ({NIXPKGS}) is unreachable from this machine: {reason}")
    flake = tmp_path / "plasmaboot"
    copy_flake_sources(flake)
    staging = tmp_path / "staging"
    staging.mkdir()
    request = BuildRequest(
        profile=ProfileStore().resolve("base"),
        staging=staging,
        log=Log(staging / "build.log"),
    )
    with request.log:
        result = NixBackend(NixOptions(flake=flake)).build(request)
    with (staging / "bzImage").open("rb") as handle:
        handle.seek(0x202)
        assert handle.read(4) == b"HdrS"  # the x86 boot protocol header
    assert (staging / "initrd").stat().st_size > 10_000_000
    init = Path(result.extra_kernel_params[0].removeprefix("init="))
    assert init.is_file()
    assert result.distro == "nixos 24.05"
