"""The Debian backend without a build: its options, the mmdebstrap command line it makes,
root's authorized_keys, stage-1's entries and the shared .deb cache."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.image.backend import BuildRequest
from plasmaboot.image.backends.debian.backend import (
    DPKG_EXCLUDES,
    DebianBackend,
    DebianOptions,
    WorkDir,
    authorized_keys,
    debian_packages,
    stage1_entries,
    store_new_debs,
)
from plasmaboot.image.backends.debian.contract import INSIDE_OUT, INSIDE_PLAN, HookResult
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

# --------------------------------------------------------------------------------------
# Options


def test_default_options_pass() -> None:
    DebianOptions().check()
    assert DebianOptions().given() == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DebianOptions(release="../../escape"), "--release: expected a Debian release name"),
        (DebianOptions(mirror="ftp://mirror/debian"), "--mirror: expected an http(s)://"),
        (DebianOptions(mirror="http:///debian"), "--mirror: expected an http(s)://"),
        (DebianOptions(mirror="https://u:secret@mirror/debian"), "carries credentials"),
        (DebianOptions(squashfs_level=23), "--squashfs-level: expected 1 to 22, got 23"),
    ],
)
def test_bad_options_are_refused(options: DebianOptions, message: str) -> None:
    with pytest.raises(UserError) as caught:
        DebianBackend(options).check_options()
    assert message in caught.value.message
    assert "secret" not in caught.value.message


def test_file_mirrors_and_other_releases_pass() -> None:
    DebianOptions(release="trixie", mirror="file:///srv/mirror/debian").check()


def test_cache_inputs_follow_the_options(tmp_path: Path) -> None:
    request = make_request(tmp_path, ProfileStore().resolve("base"))
    default = DebianBackend().cache_inputs(request)
    level = DebianBackend(DebianOptions(squashfs_level=15)).cache_inputs(request)
    mirror = DebianBackend(DebianOptions(mirror="http://mirror.example/debian"))
    assert default["squashfs_level"] == "9" and level["squashfs_level"] == "15"
    assert mirror.cache_inputs(request)["mirror"] == "http://mirror.example/debian"
    assert default["code"] == level["code"]  # the code's fingerprint, the same for both


# --------------------------------------------------------------------------------------
# The mmdebstrap command


def make_request(tmp_path: Path, profile: Profile, cache: Path | None = None) -> BuildRequest:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return BuildRequest(profile=profile, staging=staging, log=Log(), cache_dir=cache)


def command(
    tmp_path: Path, profile: Profile, options: DebianOptions | None = None, cache: bool = False
) -> list[str]:
    request = make_request(tmp_path, profile, tmp_path / "cache" if cache else None)
    work = WorkDir(tmp_path / "work")
    work.path.mkdir()
    packages, _ = debian_packages(profile)
    return DebianBackend(options).mmdebstrap_command(request, packages, work)


def test_mmdebstrap_command(tmp_path: Path) -> None:
    profile = ProfileStore().resolve("worker")
    argv = command(tmp_path, profile, DebianOptions(release="trixie", mirror="http://m/debian"))
    mode = "root" if os.geteuid() == 0 else "unshare"
    assert argv[:4] == ["mmdebstrap", f"--mode={mode}", "--variant=minbase", "--components=main"]
    assert argv[-3:] == ["trixie", "/dev/null", "http://m/debian"]  # no tarball: hooks only
    (include,) = [a for a in argv if a.startswith("--include=")]
    names = include.removeprefix("--include=").split(",")
    assert {"linux-image-amd64", "systemd", "openssh-server"} <= set(names)
    assert '--aptopt=APT::Install-Recommends "false"' in argv
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr" in argv
    assert any("update-initramfs" in a for a in argv if a.startswith("--essential-hook="))
    # documentation is left out while packages install (the profile does not want it)
    assert [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES] == [
        a for a in argv if a.startswith("--dpkgopt=path-exclude=")
    ]
    # the hook: the plan goes in, the hook runs with this Python, the outputs come out
    work = tmp_path / "work"
    hooks = [a for a in argv if a.startswith("--customize-hook=")][-3:]
    assert hooks == [
        f"--customize-hook=upload {work / 'plasmaboot-plan.json'} {INSIDE_PLAN}",
        f'--customize-hook={sys.executable} -m plasmaboot.image.backends.debian.hook "$1"',
        f"--customize-hook=sync-out {INSIDE_OUT} {work / 'out'}",
    ]
    assert not [a for a in argv if "sync-in" in a]  # no cache given: no .deb sync


def test_firmware_and_documentation_change_the_command(tmp_path: Path) -> None:
    base = ProfileStore().resolve("base")
    kernel = base.kernel.model_copy(update={"firmware": ["firmware-bnx2"]})
    system = base.system.model_copy(update={"documentation": True})
    profile = base.model_copy(update={"kernel": kernel, "system": system})
    argv = command(tmp_path, profile)
    assert "--components=main,non-free-firmware" in argv
    assert not [a for a in argv if a.startswith("--dpkgopt=path-exclude=")]


def test_the_deb_cache_is_synced_in_and_out(tmp_path: Path) -> None:
    argv = command(tmp_path, ProfileStore().resolve("base"), cache=True)
    debs = tmp_path / "cache" / "debs" / "bookworm"
    assert debs.is_dir()
    assert f"--setup-hook=sync-in {debs} /var/cache/apt/archives/" in argv
    new_debs = tmp_path / "work" / "new-debs"
    assert f"--customize-hook=sync-out /var/cache/apt/archives {new_debs}" in argv
    assert new_debs.is_dir()


def test_service_debs_are_uploaded_and_installed(tmp_path: Path) -> None:
    worker = ProfileStore().resolve("worker")
    services = dict(worker.services)
    services["novanet"] = services["novanet"].model_copy(
        update={"package_file": "/srv/debs/novanet_1.0_all.deb"}
    )
    argv = command(tmp_path, worker.model_copy(update={"services": services}))
    inside = "/tmp/plasmaboot-0-novanet_1.0_all.deb"
    assert f"--customize-hook=upload /srv/debs/novanet_1.0_all.deb {inside}" in argv
    (install,) = [a for a in argv if "apt-get install" in a]
    assert install.endswith(f"--no-install-recommends {inside}")


# --------------------------------------------------------------------------------------
# authorized_keys, stage-1, the .deb cache


def test_authorized_keys_come_from_the_profile_and_ssh_keys_once_each(tmp_path: Path) -> None:
    profile_key = tmp_path / "profile.pub"
    profile_key.write_text("# ops\nssh-ed25519 AAAA one\n\nssh-ed25519 AAAA two\n")
    extra = tmp_path / "extra.pub"
    extra.write_text("ssh-ed25519 AAAA two\nssh-ed25519 AAAA three\n")
    base = ProfileStore().resolve("base")
    ssh = base.ssh.model_copy(update={"authorized_keys": [str(profile_key)]})
    profile = base.model_copy(update={"ssh": ssh})
    request = BuildRequest(profile=profile, staging=tmp_path, log=Log(), ssh_keys=(extra,))
    assert authorized_keys(request) == (
        "ssh-ed25519 AAAA one\nssh-ed25519 AAAA two\nssh-ed25519 AAAA three\n"
    )


def test_stage1_entries(tmp_path: Path) -> None:
    modules = [tmp_path / "squashfs.ko", tmp_path / "loop.ko"]
    hook = HookResult(
        kernel=tmp_path / "bzImage",
        kernel_version="6.1.0-99-amd64",
        root_squashfs=tmp_path / "root.squashfs",
        stage1_modules=tuple(modules),
        stage1_order=tmp_path / "stage1-modules.txt",
        packages={},
        steps={},
    )
    entries = {entry.name: entry for entry in stage1_entries(hook)}
    assert entries["init"].source is not None and entries["init"].source.is_file()
    assert entries["etc/stage1-modules"].source == hook.stage1_order
    assert entries["lib/modules/loop.ko"].source == tmp_path / "loop.ko"
    assert {"dev/console", "proc", "sys", "sysroot", "bin/busybox"} <= set(entries)


def test_parallel_builds_store_the_same_new_debs_at_once(tmp_path: Path) -> None:
    """--jobs N builds run in threads of one process; two of them may download the same
    .deb and store it in the shared cache at the same moment."""
    names = [f"pkg{i}_1.0_amd64.deb" for i in range(40)]
    new_debs = []
    for job in range(6):
        new = tmp_path / f"work{job}" / "new-debs"
        new.mkdir(parents=True)
        for name in names:
            (new / name).write_bytes(name.encode() * 2000)
        new_debs.append(new)
    (tmp_path / "cache" / "debs" / "bookworm").mkdir(parents=True)
    barrier = threading.Barrier(len(new_debs))

    def store(new: Path) -> None:
        barrier.wait()
        store_new_debs(new, tmp_path / "cache", "bookworm")

    with ThreadPoolExecutor(len(new_debs)) as pool:
        for future in [pool.submit(store, new) for new in new_debs]:
            future.result()  # raises what the thread raised
    stored = sorted(p.name for p in (tmp_path / "cache" / "debs" / "bookworm").iterdir())
    assert stored == sorted(names)  # no temporary files left behind
    for name in names:
        assert (tmp_path / "cache/debs/bookworm" / name).read_bytes() == name.encode() * 2000
