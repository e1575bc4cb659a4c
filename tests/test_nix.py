"""The nix backend: the flake exposes a configuration per profile and variant, and the
driver really runs `nix build` (against a small fixture flake with no inputs). That the Nix
side resolves profiles as Python does is tests/profiles/test_nixparity.py."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from plasmaboot.artifacts.layout import SET_FILES, sha256_file
from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.cli import main
from plasmaboot.errors import UserError, WorkError
from plasmaboot.image.backend import BuildRequest
from plasmaboot.image.backends.nix import NixBackend, NixOptions
from plasmaboot.log import Log
from plasmaboot.nix import nix_command, nix_works
from plasmaboot.profiles.nixparity import python_profiles
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.run import run
from profile_files import write_custom_profiles

from conftest import plasmaboot

REPO = Path(__file__).resolve().parents[1]
FIXTURE_FLAKE = REPO / "tests" / "fixtures" / "nixflake"
NIXPKGS = "github:NixOS/nixpkgs/nixos-24.05"

needs_nix = pytest.mark.skipif(shutil.which("nix") is None, reason="nix is not installed")


@pytest.fixture
def offline_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    """No binary cache (unreachable here: each build would wait on retries) and a static
    /bin/sh in the sandbox for the fixture's `builder = "/bin/sh"` derivations."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed (the fixture builds need a static /bin/sh)")
    monkeypatch.setenv("NIX_CONFIG", f"substituters =\nsandbox-paths = /bin/sh={busybox}")


def copy_flake_sources(target: Path) -> None:
    """The plasmaboot flake's files, outside git (so nix treats the copy as a path flake)."""
    for name in ("nix", "profiles", "catalog"):
        shutil.copytree(REPO / name, target / name)
    shutil.copy(REPO / "flake.nix", target / "flake.nix")


@needs_nix
@pytest.mark.nix
def test_flake_has_a_configuration_per_profile_and_variant(tmp_path: Path) -> None:
    """Evaluated with a stand-in nixpkgs (the real one is unreachable here): the names come
    from profiles/*.toml, so a new profile file appears without editing the flake."""
    flake = tmp_path / "plasmaboot"
    copy_flake_sources(flake)
    write_custom_profiles(flake / "profiles")
    fake_nixpkgs = tmp_path / "nixpkgs"
    fake_nixpkgs.mkdir()
    (fake_nixpkgs / "flake.nix").write_text(
        "{ outputs = _: { lib.nixosSystem = args: { inherit (args) system; }; }; }\n"
    )
    proc = run(
        nix_command(
            "eval",
            "--json",
            f"{flake}#nixosConfigurations",
            "--apply",
            "cs: builtins.mapAttrs (_: c: c.system) cs",
            "--override-input",
            "nixpkgs",
            f"path:{fake_nixpkgs}",
        )
    )
    configurations = json.loads(proc.stdout.decode().splitlines()[-1])
    labels = python_profiles(flake / "profiles")
    assert set(configurations) == {f"netboot-{label}" for label in labels}
    assert "netboot-edge-debug" in configurations
    assert set(configurations.values()) == {"x86_64-linux"}


# The image module with a stand-in lib and pkgs (nixpkgs is unreachable here): enough to
# prove it reads the resolved profile's sections, not to build anything.
IMAGE_MODULE_PROBE = """
{ repo, profilesDir, label }:
let
  profile = (import (repo + "/nix/lib/profiles.nix") { inherit profilesDir; }).all.${label};
  lib = {
    mkDefault = x: x;
    optionalAttrs = cond: attrs: if cond then attrs else { };
    optionalString = cond: text: if cond then text else "";
    optional = cond: x: if cond then [ x ] else [ ];
    inherit (builtins) filter attrNames attrValues mapAttrs concatMap;
  };
  names = profile.nixPackages ++ profile.kernel.firmware;
  pkgs = builtins.listToAttrs (map (name: { inherit name; value = name; }) names);
  config.services = builtins.mapAttrs (_: _: { package = null; }) profile.services;
  image = import (repo + "/nix/images/netboot-profile.nix") profile { inherit config lib pkgs; };
in
{
  # an attribute, so `nix eval --file` applies the --arg values
  image = {
    inherit (image.networking) useDHCP usePredictableInterfaceNames;
    inherit (image.boot) kernelParams kernelModules;
    inherit (image.i18n) supportedLocales;
    udevRules = image.services.udev.extraRules;
    getty = builtins.attrNames image.systemd.services;
    keyFiles = map toString image.users.users.root.openssh.authorizedKeys.keyFiles;
    chainfire = removeAttrs (image.services.chainfire or { }) [ "settings" ];
  };
}
"""


def evaluate_image_module(profiles: Path, label: str) -> dict[str, Any]:
    probe = profiles.parent / "probe.nix"
    probe.write_text(IMAGE_MODULE_PROBE)
    proc = run(
        nix_command(
            "eval",
            "--json",
            "--file",
            str(probe),
            "--arg",
            "repo",
            str(REPO),
            "--argstr",
            "profilesDir",
            str(profiles),
            "--argstr",
            "label",
            label,
            "image",
        )
    )
    body: dict[str, Any] = json.loads(proc.stdout.decode().splitlines()[-1])
    return body


@needs_nix
@pytest.mark.nix
def test_image_module_reads_the_resolved_profile(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    shutil.copytree(REPO / "profiles", profiles)
    write_custom_profiles(profiles)

    edge = evaluate_image_module(profiles, "edge")
    assert edge["useDHCP"] is True and edge["usePredictableInterfaceNames"] is True
    assert edge["kernelParams"] == ["console=ttyS0,115200", "console=tty0", "quiet"]
    assert "br_netfilter" in edge["kernelModules"]
    assert edge["supportedLocales"] == ["en_US.UTF-8/UTF-8"]
    assert edge["getty"] == ["serial-getty@ttyS0"]
    assert edge["keyFiles"] == [str((profiles / "keys" / "ops.pub").resolve())]
    assert edge["chainfire"] == {
        "enable": True,
        "port": 3379,
        "raftPort": 2380,
        "gossipPort": 2381,
        "memoryMax": "1G",
        "cpuQuota": "80%",
    }
    # network.mtu = 9000: a udev rule gives it to every physical Ethernet NIC
    assert edge["udevRules"].strip() == (
        'ACTION=="add", SUBSYSTEM=="net", ATTR{type}=="1", DEVPATH!="/devices/virtual/*", '
        'ATTR{mtu}="9000"'
    )
    # unset again: the NICs keep their default
    assert evaluate_image_module(profiles, "edge-lab")["udevRules"] == ""


# ---------------------------------------------------------------------------------------
# The driver: real `nix build` of the fixture flake


def copy_fixture_flake(target: Path) -> Path:
    """A copy of the fixture flake with a fresh nonce, so nix really builds it."""
    shutil.copytree(FIXTURE_FLAKE, target)
    (target / "nonce").write_text(secrets.token_hex(8))
    return target


def fixture_initrd_text(path: Path) -> str:
    """The fixture initrd: one gzip member, then zero padding."""
    return zlib.decompressobj(wbits=31).decompress(path.read_bytes()).decode()


def build_request(tmp_path: Path, name: str, variant: str | None = None) -> BuildRequest:
    staging = tmp_path / "staging"
    staging.mkdir()
    copy_fixture_flake(tmp_path / "flake")
    return BuildRequest(
        profile=ProfileStore().resolve(name, variant),
        staging=staging,
        log=Log(staging / "build.log"),
    )


def fixture_backend(tmp_path: Path) -> NixBackend:
    """The backend building the fixture flake that build_request copied."""
    return NixBackend(NixOptions(flake=tmp_path / "flake"))


@needs_nix
@pytest.mark.nix
@pytest.mark.usefixtures("offline_nix")
def test_driver_builds_the_fixture_flake(tmp_path: Path) -> None:
    request = build_request(tmp_path, "base")
    with request.log:
        result = fixture_backend(tmp_path).build(request)
    staging = request.staging
    # the out-links into /nix/store are gone: only the copies stay in the set
    assert sorted(p.name for p in staging.iterdir()) == ["build.log", "bzImage", "initrd"]
    assert fixture_initrd_text(staging / "initrd") == "fixture initrd base\n"
    assert (staging / "bzImage").read_bytes()[0x202:0x206] == b"HdrS"
    assert not (staging / "initrd").is_symlink()
    (param,) = result.extra_kernel_params
    assert param.startswith("init=/nix/store/") and param.endswith("/init")
    assert "*" not in param
    init = Path(param.removeprefix("init="))
    assert f"--out-link {staging / 'toplevel-link'}" in (staging / "build.log").read_text()
    assert init.stat().st_mode & stat.S_IXUSR
    assert result.kernel_version == "6.1.0-fixture"
    assert result.distro == "nixos 24.05"
    log = (staging / "build.log").read_text()
    assert "netboot-base.config.system.build.netbootRamdisk" in log
    assert "--print-build-logs" in log
    assert "packing the initrd of base" in log  # the builder's own output, via nix
    assert "building the kernel" in log


@needs_nix
@pytest.mark.nix
@pytest.mark.usefixtures("offline_nix")
def test_driver_reports_a_failing_derivation(tmp_path: Path) -> None:
    request = build_request(tmp_path, "base", "debug")
    with request.log, pytest.raises(WorkError) as caught:
        fixture_backend(tmp_path).build(request)
    assert caught.value.exit_code == 1
    assert "fixture: the initrd of base-debug failed to build" in caught.value.message
    assert "netboot-base-debug.config.system.build.netbootRamdisk" in caught.value.message
    assert "failed to build" in (request.staging / "build.log").read_text()
    assert not (request.staging / "initrd").exists()


@needs_nix
@pytest.mark.nix
@pytest.mark.usefixtures("offline_nix")
def test_driver_names_a_profile_missing_from_the_flake(tmp_path: Path) -> None:
    request = build_request(tmp_path, "worker")
    with request.log, pytest.raises(UserError) as caught:
        fixture_backend(tmp_path).build(request)
    assert "no nixosConfigurations.netboot-worker" in caught.value.message
    assert "base, base-debug" in caught.value.message
    assert caught.value.hint is not None and "git add" in caught.value.hint


def test_driver_rejects_a_directory_without_a_flake(tmp_path: Path) -> None:
    request = BuildRequest(
        profile=ProfileStore().resolve("base"),
        staging=tmp_path,
        log=Log(None),
    )
    with pytest.raises(UserError, match=r"no flake\.nix there"):
        NixBackend(NixOptions(flake=tmp_path)).build(request)


# ---------------------------------------------------------------------------------------
# The pipeline: `plasmaboot build --backend nix` through the real command line


@pytest.fixture
def nix_env(tmp_path: Path, offline_nix: None) -> dict[str, str]:
    """The environment of a CLI build: the offline nix settings plus a private cache."""
    return {"PLASMABOOT_CACHE": str(tmp_path / "cache")}


def nix_build(
    flake: Path, out: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return plasmaboot(
        "build",
        "--backend",
        "nix",
        "--flake",
        str(flake),
        "--output-dir",
        str(out),
        "--json",
        *args,
        env=env,
    )


def publish_previous(out: Path, label: str) -> dict[str, str]:
    """A set already published for `label`; returns its link and files' hashes."""
    src = out.parent / f"previous-{label}"
    src.mkdir()
    for name in ("bzImage", "initrd", "netboot.ipxe"):
        (src / name).write_bytes(name.encode() * 100)
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


@needs_nix
@pytest.mark.nix
def test_cli_rejects_a_flake_directory_without_flake_nix(tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    proc = nix_build(tmp_path, out, {}, "--profile", "base")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: --flake {tmp_path}: no flake.nix there")
    assert not out.exists() or not any(out.iterdir())


def test_cli_refuses_plasmacloud_with_the_debian_backend(tmp_path: Path) -> None:
    proc = plasmaboot(
        "build", "--backend", "debian", "--profile", "base", "--plasmacloud", "path:/x",
        "--output-dir", str(tmp_path / "artifacts"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --plasmacloud applies only to the nix backend")
    assert not (tmp_path / "artifacts").exists()


def test_build_help_documents_the_nix_options() -> None:
    result = CliRunner().invoke(main, ["build", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--plasmacloud FLAKE_REF" in result.output
    assert "--override-input plasmacloud" in result.output
    assert "--flake" in result.output


# ---------------------------------------------------------------------------------------
# Availability: missing nix, old nix, the `auto` probe, `plasmaboot check`


def test_missing_nix_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nix_works() is False
    with pytest.raises(UserError) as caught:
        NixBackend().check_available()
    assert caught.value.exit_code == 2
    assert caught.value.hint is not None and "apt-get install nix-bin" in caught.value.hint
    result = CliRunner().invoke(main, ["check", "--flake", str(REPO)])
    assert result.exit_code == 2
    assert "nix is not installed" in result.output


def test_too_old_nix_names_the_flakes_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix before 2.4 cannot be installed here; a `nix` that reports 2.3 stands in for it."""
    old_nix = tmp_path / "nix"
    old_nix.write_text("#!/bin/sh\necho 'nix (Nix) 2.3.16'\n")
    old_nix.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(UserError) as caught:
        NixBackend().check_available()
    assert "2.3.16 is too old" in caught.value.message
    assert caught.value.hint is not None
    assert "experimental-features = nix-command flakes in /etc/nix/nix.conf" in caught.value.hint
    assert nix_works() is False


@needs_nix
@pytest.mark.nix
def test_nix_works_here() -> None:
    NixBackend().check_available()
    assert nix_works() is True


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
