"""The Nix side resolves profiles as the Python side does: every .nix file parses,
nix/lib/profiles.nix gives every profile and variant the same settings (every field of the
model), its defaults file is the model's, and a drift on either is reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nix_flakes import needs_nix
from plasmaboot.cli import main
from plasmaboot.errors import WorkError
from plasmaboot.profiles.model import Profile, setting_defaults
from plasmaboot.profiles.nixparity import (
    DEFAULTS_FILE,
    NIX_LIB,
    compared_fields,
    defaults_file_problem,
    nix_files,
    nix_profiles,
    parse_nix_files,
    profile_differences,
    python_profiles,
)
from plasmaboot.profiles.store import ProfileStore
from profile_files import write_custom_profiles

from conftest import REPO


def copy_lib(target: Path) -> Path:
    """nix/lib/profiles.nix and its defaults file in `target`; returns the .nix file."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / DEFAULTS_FILE, target / DEFAULTS_FILE.name)
    return Path(shutil.copy(REPO / NIX_LIB, target / NIX_LIB.name))


def custom_profiles(tmp_path: Path) -> Path:
    profiles = tmp_path / "profiles"
    shutil.copytree(REPO / "profiles", profiles)
    write_custom_profiles(profiles)
    return profiles


# ---------------------------------------------------------------------------------------
# What is compared, and the defaults the Nix side fills in


def test_every_field_of_the_resolved_profile_is_compared_but_the_python_only_ones() -> None:
    assert "sources" in Profile.model_fields
    assert compared_fields(Profile) == [k for k in Profile.model_fields if k != "sources"]
    assert {"ssh", "kernel", "network", "console", "system", "services"} <= set(
        compared_fields(Profile)
    )

    class Wider(Profile):
        new_setting: int = 0

    assert "new_setting" in compared_fields(Wider)


def test_the_nix_defaults_file_is_the_models() -> None:
    assert defaults_file_problem(REPO) is None
    written = json.loads((REPO / DEFAULTS_FILE).read_text())
    assert written["profile"]["network"]["dhcp"] is True
    assert written["service"]["enable"] is False


def test_a_stale_defaults_file_is_reported(tmp_path: Path) -> None:
    stale = setting_defaults()
    stale["profile"]["console"]["baud"] = 9600
    (tmp_path / DEFAULTS_FILE).parent.mkdir(parents=True)
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps(stale))
    problem = defaults_file_problem(tmp_path)
    assert problem == f"{tmp_path / DEFAULTS_FILE}: not the defaults of the profile model"
    assert "cannot read" in str(defaults_file_problem(tmp_path / "elsewhere"))


def test_schema_defaults_prints_the_defaults_file() -> None:
    result = CliRunner().invoke(main, ["schema", "--defaults"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((REPO / DEFAULTS_FILE).read_text())


# ---------------------------------------------------------------------------------------
# Nix sources


@needs_nix
@pytest.mark.nix
def test_every_nix_file_parses() -> None:
    files = nix_files(REPO)
    relative = {str(path.relative_to(REPO)) for path in files}
    assert {
        "flake.nix",
        "nix/lib/profiles.nix",
        "nix/images/netboot-base.nix",
        "nix/images/netboot-profile.nix",
        "nix/modules/default.nix",
        "nix/modules/service.nix",
        "tests/fixtures/nixflake/flake.nix",
    } <= relative
    parse_nix_files(files)


@needs_nix
@pytest.mark.nix
def test_a_syntax_error_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nix"
    broken.write_text("{ a = 1; b = ; }\n")
    with pytest.raises(WorkError, match=r"broken\.nix: not valid Nix"):
        parse_nix_files([broken])


# ---------------------------------------------------------------------------------------
# Profiles: both sides resolve them alike


@needs_nix
@pytest.mark.nix
def test_nix_resolves_builtin_profiles_like_python() -> None:
    python_side = python_profiles(REPO / "profiles")
    nix_side = nix_profiles(REPO / "profiles")
    store = ProfileStore()
    expected = {
        label
        for name in store.profile_names()
        for label in [name, *(f"{name}-{variant}" for variant in store.variant_names())]
    }
    assert set(nix_side) == set(python_side) == expected
    for label in expected:
        assert nix_side[label] == python_side[label], label
    # The comparison is about real content, not two empty sides.
    worker = nix_side["worker"]
    assert worker["sysctl"]["fs.file-max"] == 1000000
    assert worker["services"]["plasmavmc"]["ports"] == {"port": 8081}
    assert worker["services"]["novanet"]["memory_max"] == "512M"
    assert "qemu_kvm" in worker["nixPackages"] and "qemu" not in worker["nixPackages"]
    assert "qemu" in worker["packages"]
    assert worker["extends"] == ["base"]
    assert nix_side["control-plane"]["services"]["chainfire"]["ports"] == {
        "port": 2379,
        "raftPort": 2380,
        "gossipPort": 2381,
    }
    assert nix_side["all-in-one-minimal"]["services"] == {}
    assert "ddrescue" in nix_side["base-rescue"]["nixPackages"]
    assert "dnsutils" in nix_side["base-debug"]["nixPackages"]


@needs_nix
@pytest.mark.nix
def test_nix_resolves_custom_profiles_like_python(tmp_path: Path) -> None:
    profiles = custom_profiles(tmp_path)
    assert profile_differences(profiles) == []
    nix_side = nix_profiles(profiles)
    edge = nix_side["edge"]
    # "gdisk" maps to the gptfdisk attribute base already has: listed once
    assert edge["nixPackages"][-1] == "busybox" and edge["nixPackages"].count("gptfdisk") == 1
    assert "tcpdump" not in edge["packages"]
    assert edge["sysctl"] == {
        "net.ipv4.ip_forward": 1,
        "net.core.netdev_max_backlog": 5000,
        "vm.swappiness": 10,
    }
    assert edge["kernel"]["params"] == [
        "console=ttyS0,115200",
        "console=tty0",
        "rootfstype=ramfs",
        "quiet",
    ]
    assert "tun" not in edge["kernel"]["modules"] and "br_netfilter" in edge["kernel"]["modules"]
    assert edge["ssh"]["authorized_keys"] == [str((profiles / "keys" / "ops.pub").resolve())]
    assert edge["console"]["baud"] == 57600
    assert edge["network"] == {"dhcp": True, "predictable_names": True, "mtu": 9000}
    chainfire = edge["services"]["chainfire"]
    assert chainfire["enable"] is True
    assert chainfire["ports"] == {"port": 3379, "raftPort": 2380, "gossipPort": 2381}
    assert (chainfire["memory_max"], chainfire["cpu_quota"]) == ("1G", "80%")
    assert chainfire["settings"] == {"cluster": {"name": "edge"}}
    assert nix_side["edge-minimal"]["services"] == {}
    # unset of a service's port and of a console key: back to the catalog and the default
    lab = nix_side["edge-lab"]
    assert lab["services"]["chainfire"]["ports"]["port"] == 2379
    assert lab["console"]["baud"] == 115200
    assert lab["network"]["mtu"] is None
    # no parent at all: every setting is the model's default
    bare = nix_side["bare"]
    assert bare["network"] == {"dhcp": True, "predictable_names": True, "mtu": None}
    assert bare["system"] == {"locales": ["en_US.UTF-8"], "documentation": False}


@needs_nix
@pytest.mark.nix
def test_drift_between_the_two_sides_is_reported(tmp_path: Path) -> None:
    lib = copy_lib(tmp_path / "lib")
    source = lib.read_text()
    # A Nix side whose `unset` does nothing must not pass the comparison.
    drifted = source.replace("removeAttrs data [ head ]", "data")
    assert drifted != source
    lib.write_text(drifted)
    problems = profile_differences(REPO / "profiles", lib)
    assert "worker-minimal: services.plasmavmc: only the nix side has it" in problems


@needs_nix
@pytest.mark.nix
def test_a_drifted_default_is_reported(tmp_path: Path) -> None:
    lib = copy_lib(tmp_path / "lib")
    defaults = json.loads((lib.parent / DEFAULTS_FILE.name).read_text())
    defaults["profile"]["network"]["dhcp"] = False
    (lib.parent / DEFAULTS_FILE.name).write_text(json.dumps(defaults))
    problems = profile_differences(custom_profiles(tmp_path), lib)
    # only `bare` (and its variants) leaves dhcp to the default
    assert "bare: network.dhcp: python true != nix false" in problems
    assert all(
        p.startswith("bare") and p.endswith(": network.dhcp: python true != nix false")
        for p in problems
    )


@needs_nix
@pytest.mark.nix
def test_nix_throws_on_an_extends_cycle(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "a.toml").write_text('extends = "b"\n')
    (profiles / "b.toml").write_text('extends = "a"\n')
    with pytest.raises(WorkError, match=r"b\.toml: extends: cycle a -> b -> a"):
        nix_profiles(profiles)


# ---------------------------------------------------------------------------------------
# plasmaboot check


@needs_nix
@pytest.mark.nix
def test_check_command_compares_profiles() -> None:
    result = CliRunner().invoke(main, ["check", "--eval-only", "--flake", str(REPO)])
    assert result.exit_code == 0, result.output
    assert "nix/lib/profile-defaults.json: the defaults of the profile model" in result.output
    assert "resolve every profile and variant alike" in result.output
    assert "skipped (--eval-only)" in result.output


@needs_nix
@pytest.mark.nix
def test_check_command_names_a_stale_defaults_file(tmp_path: Path) -> None:
    for name in ("nix", "profiles"):
        shutil.copytree(REPO / name, tmp_path / name)
    (tmp_path / DEFAULTS_FILE).write_text("{}\n")
    result = CliRunner().invoke(main, ["check", "--eval-only", "--flake", str(tmp_path)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"failed: {tmp_path / DEFAULTS_FILE}: not the defaults of the profile model"
    assert (
        lines[1]
        == f"hint: regenerate it: plasmaboot schema --defaults > {tmp_path / DEFAULTS_FILE}"
    )
