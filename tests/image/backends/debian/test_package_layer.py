"""The package layer's cache (package_layer) and the Debian backend around it, with a
stand-in mmdebstrap that leaves the hook's outputs: the layer's key follows exactly the
packages, release, mirror, module globs and documentation setting; a config-only change
reuses the stored layer and rebuilds only the profile layer; the initrd's layers are where
the build's records say; a damaged entry is a miss."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD, KERNEL, PACKAGE_LAYER
from plasmaboot.formats.cpio import Compression, read_segments
from plasmaboot.image.backend import BuildRequest, BuildResult
from plasmaboot.image.backends.debian.backend import DebianBackend, DebianOptions, debian_packages
from plasmaboot.image.backends.debian.contract import (
    ACCOUNT_FILES,
    HookOutputs,
    HookPlan,
    Output,
    UnitInstall,
)
from plasmaboot.image.backends.debian.package_layer import PackageLayerCache, package_layer_key
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

from conftest import make_kernel

LIB = "/usr/lib/systemd/system"
FAKE_MMDEBSTRAP = """\
#!{python}
import shutil, sys
with open("{record}", "a") as calls:
    calls.write("mmdebstrap\\n")
for arg in sys.argv:
    if arg.startswith("--customize-hook=sync-out /tmp/plasmaboot-out "):
        shutil.copytree("{template}", arg.split(" ", 2)[2], dirs_exist_ok=True)
"""


def key_of(profile: Profile, options: DebianOptions | None = None) -> str:
    backend = DebianBackend(options)
    packages, _ = debian_packages(profile, backend.options.release)
    plan = HookPlan.for_profile(profile, backend.options.squashfs_level)
    return package_layer_key(backend.package_inputs(profile, packages, plan))


def with_port(profile: Profile, port: int) -> Profile:
    name, service = next(iter(profile.services.items()))
    ports = {key: port for key in service.ports} or {"port": port}
    services = {**profile.services, name: service.model_copy(update={"ports": ports})}
    return profile.model_copy(update={"services": services})


# --------------------------------------------------------------------------------------
# The key


def test_profiles_with_the_same_packages_share_a_key() -> None:
    store = ProfileStore()
    worker, all_in_one = store.resolve("worker"), store.resolve("all-in-one")
    assert worker.services.keys() != all_in_one.services.keys()  # different profiles ...
    assert key_of(worker) == key_of(all_in_one)  # ... the same packages: one layer
    assert key_of(store.resolve("control-plane")) != key_of(worker)


def test_config_only_changes_keep_the_key() -> None:
    profile = ProfileStore().resolve("control-plane")
    changed = with_port(profile, 4242).model_copy(
        update={
            "sysctl": {"vm.swappiness": 1},
            "kernel": profile.kernel.model_copy(update={"params": ["console=ttyS1"]}),
        }
    )
    assert key_of(changed) == key_of(profile)


def test_what_the_package_layer_is_made_from_changes_the_key(archive_dates: object) -> None:
    profile = ProfileStore().resolve("control-plane")
    kernel = profile.kernel
    changes = [
        profile.model_copy(update={"packages": [*profile.packages, "strace"]}),
        profile.model_copy(
            update={"kernel": kernel.model_copy(update={"exclude_modules": ["sound/*"]})}
        ),
        profile.model_copy(
            update={"system": profile.system.model_copy(update={"documentation": True})}
        ),
    ]
    keys = {key_of(profile), *map(key_of, changes)}
    keys |= {key_of(profile, DebianOptions(release="trixie"))}
    keys |= {key_of(profile, DebianOptions(mirror="http://mirror.example/debian"))}
    keys |= {key_of(profile, DebianOptions(squashfs_level=15))}
    assert len(keys) == 7


def test_a_caller_given_source_date_epoch_changes_the_keys(
    archive_dates: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the date is in every mtime of the layer and the set: a layer made for another date
    # must not be handed to this one
    profile = ProfileStore().resolve("control-plane")
    request = BuildRequest(profile=profile, staging=tmp_path, log=Log())
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    unset = key_of(profile), DebianBackend().cache_inputs(request)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "not a number")  # ignored, as by the build
    assert (key_of(profile), DebianBackend().cache_inputs(request)) == unset
    dated = {}
    for epoch in ("1700000000", "1700000001"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        dated[epoch] = key_of(profile), DebianBackend().cache_inputs(request)
        assert dated[epoch][1]["source_date_epoch"] == epoch
    assert len({unset[0], *(key for key, _ in dated.values())}) == 3
    assert unset[1] not in [inputs for _, inputs in dated.values()]


# --------------------------------------------------------------------------------------
# Builds with a stand-in mmdebstrap


@pytest.fixture
def template(tmp_path: Path) -> Path:
    """The outputs the hook would leave, with a real (tiny) squashfs."""
    outputs = HookOutputs(tmp_path / "template")
    outputs.directory.mkdir()
    make_kernel(outputs.path(Output.KERNEL))
    outputs.write_kernel_version("6.1.0-99-amd64")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("plasmaboot\n")
    subprocess.run(
        ["mksquashfs", tree, outputs.path(Output.ROOT_SQUASHFS), "-quiet", "-no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (outputs.stage1_dir() / "loop.ko").write_bytes(b"\x7fELF")
    outputs.write_stage1_order(["loop.ko"])
    outputs.write_packages({"systemd": "252.30-1"})
    outputs.write_steps({"make_squashfs": 0.5})
    units = {
        name: UnitInstall(path=f"{LIB}/{name}", wanted_by=(target,))
        for name, target in [
            ("systemd-networkd.service", "multi-user.target"),
            ("systemd-resolved.service", "multi-user.target"),
            ("serial-getty@.service", "getty.target"),
        ]
    }
    outputs.write_units(units)
    for name in ACCOUNT_FILES:
        (outputs.accounts_dir() / name).write_text("root:x:0:0:root:/root:/bin/sh\n")
    return outputs.directory


@pytest.fixture
def mmdebstrap_calls(tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "mmdebstrap-calls"
    script = bin_dir / "mmdebstrap"
    script.write_text(
        FAKE_MMDEBSTRAP.format(python=sys.executable, record=record, template=template)
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return record


def build(tmp_path: Path, profile: Profile, name: str, use_cache: bool = True) -> BuildResult:
    staging = tmp_path / name
    staging.mkdir()
    request = BuildRequest(
        profile=profile, staging=staging, log=Log(), cache_dir=tmp_path / "cache",
        use_cache=use_cache,
    )  # fmt: skip
    return DebianBackend().build(request)


def calls(record: Path) -> int:
    return len(record.read_text().splitlines()) if record.exists() else 0


def states(result: BuildResult) -> dict[str, bool]:
    return {layer.name: layer.reused for layer in result.layers}


def test_a_config_only_change_reuses_the_package_layer(
    tmp_path: Path, mmdebstrap_calls: Path
) -> None:
    profile = ProfileStore().resolve("worker")
    first = build(tmp_path, profile, "first")
    assert calls(mmdebstrap_calls) == 1
    assert states(first) == {"stage1": False, "10-packages": False, "50-profile": False}
    second = build(tmp_path, with_port(profile, 4242), "second")
    assert calls(mmdebstrap_calls) == 1  # no mmdebstrap: the stored layer is reused
    assert states(second) == {"stage1": False, "10-packages": True, "50-profile": False}
    packages = {layer.name: layer for layer in second.layers}["10-packages"]
    assert packages.sha256 == {layer.name: layer for layer in first.layers}["10-packages"].sha256
    profiles = [{x.name: x for x in r.layers}["50-profile"].sha256 for r in (first, second)]
    assert profiles[0] != profiles[1]  # the port is in the profile layer
    assert len(PackageLayerCache.under(tmp_path / "cache").entries()) == 1
    assert (tmp_path / "second" / KERNEL).is_file()
    # --no-cache rebuilds the layer (and refreshes the entry)
    third = build(tmp_path, profile, "third", use_cache=False)
    assert calls(mmdebstrap_calls) == 2 and states(third)["10-packages"] is False


def test_the_initrd_holds_the_layers_where_the_records_say(
    tmp_path: Path, mmdebstrap_calls: Path, template: Path
) -> None:
    result = build(tmp_path, ProfileStore().resolve("worker"), "set")
    initrd = (tmp_path / "set" / INITRD).read_bytes()
    segments = read_segments(tmp_path / "set" / INITRD)
    assert [s.compression for s in segments] == [
        Compression.GZIP, Compression.NONE, Compression.GZIP,
    ]  # fmt: skip
    assert [m.name for m in segments[1].members] == ["layers", PACKAGE_LAYER]
    assert segments[2].members[0].name == "layers"
    assert {m.name for m in segments[2].members[1:]} >= {
        "layers/50-profile/root/.ssh/authorized_keys",
        "layers/50-profile/etc/ssh/sshd_config.d/10-plasmaboot.conf",
    }
    squashfs = (template / Output.ROOT_SQUASHFS).read_bytes()
    for layer in result.layers:
        body = initrd[layer.offset : layer.offset + layer.size]
        assert hashlib.sha256(body).hexdigest() == layer.sha256, layer.name
    packages = {layer.name: layer for layer in result.layers}["10-packages"]
    assert initrd[packages.offset : packages.offset + packages.size] == squashfs
    assert stat.S_IMODE(segments[1].members[1].mode) == 0o444


def test_a_damaged_layer_is_a_miss_and_is_replaced(tmp_path: Path, mmdebstrap_calls: Path) -> None:
    profile = ProfileStore().resolve("worker")
    build(tmp_path, profile, "first")
    (entry,) = PackageLayerCache.under(tmp_path / "cache").entries()
    squashfs = entry / Output.ROOT_SQUASHFS
    data = bytearray(squashfs.read_bytes())
    data[-1] ^= 0xFF
    squashfs.write_bytes(bytes(data))
    again = build(tmp_path, profile, "again")
    assert calls(mmdebstrap_calls) == 2 and states(again)["10-packages"] is False
    record = json.loads((entry / "layer.json").read_text())
    assert hashlib.sha256(squashfs.read_bytes()).hexdigest() == record["sha256"]
    assert record["inputs"]["release"] == "bookworm"


@pytest.mark.parametrize(
    "damaged",
    [Output.KERNEL.value, Output.INSTALLED_INITRD.value, f"{Output.STAGE1_MODULES}/loop.ko"],
)
def test_any_damaged_or_missing_file_of_a_layer_is_a_miss(
    tmp_path: Path, mmdebstrap_calls: Path, template: Path, damaged: str
) -> None:
    # the installed system's initramfs goes into every set made from the layer, hashed
    # there as it is: a damaged cached copy must not get a fresh, valid hash
    (template / Output.INSTALLED_INITRD).write_bytes(b"070701" + bytes(4096))
    profile = ProfileStore().resolve("worker")
    build(tmp_path, profile, "first")
    (entry,) = PackageLayerCache.under(tmp_path / "cache").entries()
    record = json.loads((entry / "layer.json").read_text())
    assert set(record["files"]) >= {
        Output.ROOT_SQUASHFS.value, Output.KERNEL.value, Output.INSTALLED_INITRD.value,
        f"{Output.STAGE1_MODULES}/loop.ko", Output.PACKAGES.value,
    }  # fmt: skip
    assert "layer.json" not in record["files"]
    build(tmp_path, profile, "hit")
    assert calls(mmdebstrap_calls) == 1  # intact: found again
    target = entry / damaged
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))  # same size, other bytes
    build(tmp_path, profile, "after-damage")
    assert calls(mmdebstrap_calls) == 2
    target.unlink()
    build(tmp_path, profile, "after-loss")
    assert calls(mmdebstrap_calls) == 3
    again = json.loads((entry / "layer.json").read_text())
    assert again["files"][damaged] == record["files"][damaged]  # the rebuilt entry is whole
    assert (tmp_path / "after-loss" / Output.INSTALLED_INITRD).read_bytes() == (
        template / Output.INSTALLED_INITRD
    ).read_bytes()


@pytest.mark.parametrize("files", [None, [], {"../outside": {"size": 0, "sha256": ""}}])
def test_a_record_without_files_or_naming_others_is_a_miss(
    tmp_path: Path, mmdebstrap_calls: Path, files: object
) -> None:
    profile = ProfileStore().resolve("worker")
    build(tmp_path, profile, "first")
    (entry,) = PackageLayerCache.under(tmp_path / "cache").entries()
    record = json.loads((entry / "layer.json").read_text())
    if files is None:
        del record["files"]  # an entry recorded before files were
    elif isinstance(files, dict):
        record["files"] = {**record["files"], **files}
    else:
        record["files"] = files
    (entry / "layer.json").write_text(json.dumps(record))
    build(tmp_path, profile, "second")
    assert calls(mmdebstrap_calls) == 2
    assert "files" in json.loads((entry / "layer.json").read_text())


def test_no_cache_dir_builds_the_layer_in_the_staging_directory(
    tmp_path: Path, mmdebstrap_calls: Path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    request = BuildRequest(profile=ProfileStore().resolve("worker"), staging=staging, log=Log())
    result = DebianBackend().build(request)
    assert states(result)["10-packages"] is False
    assert sorted(p.name for p in staging.iterdir()) == [KERNEL, INITRD]


_ = shutil
