"""The nix backend: the flake exposes a configuration per profile and variant, its image
module reads the resolved profile, and the driver really runs `nix build` (against a small
fixture flake with no inputs). That the Nix side resolves profiles as Python does is
tests/profiles/test_nixparity.py; real builds through the command line are
tests/integration/test_nix_build.py."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from nix_flakes import (
    copy_fixture_flake,
    copy_flake_sources,
    fixture_initrd_text,
    needs_nix,
)
from plasmaboot.errors import UserError, WorkError
from plasmaboot.image.backend import BuildRequest
from plasmaboot.image.backends.nix import NixBackend, NixOptions
from plasmaboot.log import Log
from plasmaboot.nix import nix_command
from plasmaboot.profiles.nixparity import python_profiles
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.run import run
from profile_files import write_custom_profiles

from conftest import REPO


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
    assert edge["kernelParams"] == [
        "console=ttyS0,115200",
        "console=tty0",
        "rootfstype=ramfs",
        "quiet",
    ]
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


@needs_nix
@pytest.mark.nix
@pytest.mark.usefixtures("offline_nix")
def test_the_cache_key_holds_the_code_that_makes_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # our code pads the initrd and writes the manifest around nix's output: a change to it
    # must miss the set cache like a change to the flake does
    from plasmaboot.image import cache
    from plasmaboot.image.backends import nix as nix_backend

    request = build_request(tmp_path, "base")
    backend = fixture_backend(tmp_path)
    inputs = backend.cache_inputs(request)
    assert inputs["code"] == nix_backend.nix_code_fingerprint()
    assert inputs["flake"].startswith("sha256-")
    package = tmp_path / "plasmaboot"
    shutil.copytree(cache.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE", package)
    assert backend.cache_inputs(request) == inputs  # the same code, copied: the same key
    with (package / "formats" / "cpio.py").open("a") as source:
        source.write("\n# a change to the cpio writer\n")
    changed = backend.cache_inputs(request)
    assert changed["code"] != inputs["code"]
    assert changed["flake"] == inputs["flake"]
