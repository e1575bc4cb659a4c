"""The pipeline's steps with a stand-in backend registered beside the real ones (it writes
a small kernel and initrd at once): a complete set with its manifest, a cache hit, options
reaching the backend, parallel jobs, publishing, and a failed build leaving the previous
set. The real backends through the same pipeline: tests/integration/test_debian_build.py,
tests/integration/test_nix_build.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from plasmaboot.artifacts.layout import INSTALLED_INITRD, SET_FILES, sha256_file
from plasmaboot.artifacts.manifest import LayerRecord, read_manifest
from plasmaboot.errors import UserError, WorkError
from plasmaboot.image import backends
from plasmaboot.image.backend import (
    BackendOptions,
    BackendType,
    BuildRequest,
    BuildResult,
    Suitability,
    option,
)
from plasmaboot.image.pipeline import BuildOptions, build_profiles
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.report.history import read_history

from conftest import make_kernel

BUILDS: list[str] = []  # the labels the stand-in built, in order


@dataclass(frozen=True)
class StandInOptions(BackendOptions):
    flavour: str = option("plain", help="what the stand-in writes into its initrd")
    fail: bool = option(False, help="fail the build")


class StandInBackend:
    name = "stand-in"
    takes_ssh_keys = True

    def __init__(self, options: StandInOptions) -> None:
        self.options = options

    def check_options(self) -> None:
        self.options.check()

    def check_available(self) -> None:
        pass

    def suitability(self) -> Suitability:
        return Suitability(usable=True)

    def cache_inputs(self, request: BuildRequest) -> dict[str, str]:
        return {"flavour": self.options.flavour}

    def build(self, request: BuildRequest) -> BuildResult:
        BUILDS.append(request.profile.label)
        with request.log.step("stand-in build"):
            request.log.info(f"flavour {self.options.flavour}")
        if self.options.fail:
            raise WorkError("the stand-in failed as asked")
        make_kernel(request.staging / "bzImage", size=2 << 20)
        flavour = self.options.flavour.encode()
        (request.staging / "initrd").write_bytes(b"\x1f\x8b" + flavour + bytes(5 << 20))
        if self.options.flavour == "installed":  # the Debian backend's optional file
            (request.staging / INSTALLED_INITRD).write_bytes(b"initramfs")
            (request.staging / INSTALLED_INITRD).chmod(0o600)
        return BuildResult(
            kernel_version="6.1.0-99-amd64",
            distro="stand-in 1",
            extra_kernel_params=("init=/sbin/init",),
            packages={"bash": "5.2"},
            layers=STAND_IN_LAYERS if self.options.flavour == "layered" else (),
        )


STAND_IN_LAYERS = tuple(
    LayerRecord(
        name=name,
        kind="segment",
        file="initrd",
        offset=offset,
        size=2,
        sha256="0" * 64,
        reused=reused,
    )
    for name, offset, reused in [("10-packages", 0, True), ("50-profile", 4, False)]
)


@pytest.fixture(autouse=True)
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-in registered (for this test only), and a cache of this test's own."""
    backends.backend_names()
    monkeypatch.setattr(backends, "_registry", dict(backends._registry))
    backends.register(
        BackendType(name="stand-in", options=StandInOptions, make=StandInBackend, auto_rank=0)
    )
    monkeypatch.setenv("PLASMABOOT_CACHE", str(tmp_path / "cache"))
    BUILDS.clear()
    yield
    BUILDS.clear()


def resolve(name: str, variant: str | None = None) -> Profile:
    return ProfileStore().resolve(name, variant)


def options(tmp_path: Path, stand_in: StandInOptions | None = None, **changes: Any) -> BuildOptions:
    """Build with the stand-in into tmp_path/artifacts."""
    built = BuildOptions(
        output_dir=tmp_path / "artifacts",
        backend="stand-in",
        backend_options={"stand-in": stand_in or StandInOptions()},
        allow_no_keys=True,  # the stand-in image is never logged into
    )
    return replace(built, **changes)


def test_a_build_makes_a_complete_set(tmp_path: Path) -> None:
    announced: list[str] = []
    (outcome,) = build_profiles([resolve("worker")], options(tmp_path), on_backend=announced.append)
    assert announced == ["stand-in (asked for)"]
    assert BUILDS == ["worker"]
    current = tmp_path / "artifacts" / "worker"
    assert current.is_symlink() and outcome.path == current
    assert sorted(p.name for p in current.iterdir()) == sorted(SET_FILES)
    manifest = read_manifest(current)
    assert (manifest.backend, manifest.distro) == ("stand-in", "stand-in 1")
    assert manifest.resolved_profile == resolve("worker")
    assert manifest.content_hash == resolve("worker").content_hash()
    assert manifest.packages == {"bash": "5.2"}
    assert manifest.kernel_params[-1] == "init=/sbin/init"  # after the profile's own
    assert "stand-in build" in manifest.steps and "check outputs" in manifest.steps
    for name, record in manifest.files.items():
        assert sha256_file(current / name) == record.sha256
    assert "init=/sbin/init" in (current / "netboot.ipxe").read_text()
    log = (current / "build.log").read_text()
    assert "building worker with stand-in" in log and "flavour plain" in log
    assert (outcome.cache_hit, outcome.backend, outcome.kernel_version) == (
        False,
        "stand-in",
        "6.1.0-99-amd64",
    )
    assert outcome.initrd_size == (current / "initrd").stat().st_size
    # the stand-in's initrd is 5 MiB + 7 bytes: the set's ends 4-byte aligned (formats.cpio)
    assert outcome.initrd_size == (5 << 20) + 8
    assert "initrd: padded with 1 NUL byte(s) to end 4-byte aligned" in log


def test_a_sets_optional_file_is_committed_with_the_others(tmp_path: Path) -> None:
    """installed-initrd is hashed in the manifest and committed like the set's own files
    (synced, mode 0644), from a fresh build and from the cache."""
    for _ in range(2):
        (outcome,) = build_profiles(
            [resolve("base")], options(tmp_path, StandInOptions(flavour="installed"))
        )
        initrd = tmp_path / "artifacts" / "base" / INSTALLED_INITRD
        assert stat.S_IMODE(initrd.stat().st_mode) == 0o644
        record = read_manifest(initrd.parent).files[INSTALLED_INITRD]
        assert record.sha256 == sha256_file(initrd)
    assert outcome.cache_hit


def test_the_same_inputs_are_a_cache_hit(tmp_path: Path) -> None:
    (first,) = build_profiles([resolve("base")], options(tmp_path))
    link = os.readlink(tmp_path / "artifacts" / "base")
    (again,) = build_profiles([resolve("base")], options(tmp_path))
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert BUILDS == ["base"]  # built once
    assert os.readlink(tmp_path / "artifacts" / "base") == link  # the same set
    (rebuilt,) = build_profiles([resolve("base")], options(tmp_path, use_cache=False))
    assert rebuilt.cache_hit is False and BUILDS == ["base", "base"]


def test_the_backends_options_reach_it_and_change_the_key(tmp_path: Path) -> None:
    build_profiles([resolve("base")], options(tmp_path))
    spicy = options(tmp_path, stand_in=StandInOptions(flavour="spicy"))
    (outcome,) = build_profiles([resolve("base")], spicy)
    assert outcome.cache_hit is False
    assert b"spicy" in (tmp_path / "artifacts" / "base" / "initrd").read_bytes()[:16]


def test_a_failed_build_keeps_the_previous_set_and_its_log(tmp_path: Path) -> None:
    build_profiles([resolve("base")], options(tmp_path))
    current = tmp_path / "artifacts" / "base"
    before = (os.readlink(current), sha256_file(current / "initrd"))
    failing = options(tmp_path, stand_in=StandInOptions(fail=True), use_cache=False)
    with pytest.raises(WorkError, match="the stand-in failed as asked") as caught:
        build_profiles([resolve("base")], failing)
    assert (os.readlink(current), sha256_file(current / "initrd")) == before
    failed_log = tmp_path / "artifacts" / "base.failed.log"
    assert "flavour plain" in failed_log.read_text()
    assert caught.value.hint is not None and "base.failed.log" in caught.value.hint
    sets = tmp_path / "artifacts" / ".sets"
    assert not [p for p in sets.iterdir() if p.name.startswith(".staging-")]
    build_profiles([resolve("base")], options(tmp_path))
    assert not failed_log.exists()  # a good build tidies the old failure away


def test_parallel_jobs_and_publishing(tmp_path: Path) -> None:
    pxe = tmp_path / "pxe"
    outcomes = build_profiles(
        [resolve("base"), resolve("worker"), resolve("base", "debug")],
        options(tmp_path, jobs=2, pxe_dir=pxe),
    )
    assert sorted(BUILDS) == ["base", "base-debug", "worker"]
    assert [o.profile.label for o in outcomes] == ["base", "worker", "base-debug"]
    for outcome in outcomes:
        published = pxe / outcome.profile.label
        assert outcome.published is not None
        assert sorted(p.name for p in published.iterdir()) == ["bzImage", "initrd", "netboot.ipxe"]
        assert sha256_file(published / "initrd") == sha256_file(outcome.path / "initrd")


def test_bad_options_fail_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(UserError, match="--flake applies only to the nix backend"):
        build_profiles(
            [resolve("base")],
            options(
                tmp_path,
                output_dir=out,
                backend_options={"nix": backends.get("nix").options(flake=tmp_path)},
            ),
        )
    assert not out.exists() and BUILDS == []


def test_every_build_appends_to_the_history(tmp_path: Path) -> None:
    (first,) = build_profiles([resolve("base")], options(tmp_path))
    (again,) = build_profiles([resolve("base")], options(tmp_path))
    records = read_history(tmp_path / "artifacts")
    assert [r["cache"] for r in records] == ["miss", "hit"]
    assert [first.record, again.record] == records
    set_name = os.path.basename(os.readlink(tmp_path / "artifacts" / "base"))
    assert {r["set"] for r in records} == {set_name}
    assert records[0]["sizes"]["initrd"] == first.initrd_size
    assert "stand-in build" in records[0]["steps"]
    assert records[0]["packages"] == 1


def test_the_outcome_and_manifest_say_which_layers_were_built_or_reused(tmp_path: Path) -> None:
    layered = options(tmp_path, StandInOptions(flavour="layered"))
    (first,) = build_profiles([resolve("base")], layered)
    assert first.layers == {"10-packages": "reused", "50-profile": "built"}
    assert read_manifest(first.path).layers == list(STAND_IN_LAYERS)
    (again,) = build_profiles([resolve("base")], layered)
    assert again.cache_hit and again.layers == {"10-packages": "reused", "50-profile": "reused"}
    (plain,) = build_profiles([resolve("worker")], options(tmp_path))
    assert plain.layers == {} and read_manifest(plain.path).layers == []
