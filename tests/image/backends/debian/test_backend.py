"""The Debian backend without a build: its options, the mmdebstrap command line it makes,
root's authorized_keys, stage-1's entries and the shared .deb cache."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.image.backend import BuildRequest
from plasmaboot.image.backends.debian import archive
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
from plasmaboot.image.backends.debian.contract import INSIDE_OUT, INSIDE_PLAN, HookPlan, HookResult
from plasmaboot.image.backends.debian.package_layer import package_layer_key
from plasmaboot.image.cache import cache_key
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
        (DebianOptions(release="bookworm\n"), "--release: expected a Debian release name"),
        (DebianOptions(mirror="ftp://mirror/debian"), "--mirror: expected an http(s)://"),
        (DebianOptions(mirror="http:///debian"), "--mirror: expected an http(s)://"),
        (DebianOptions(mirror="https://u:secret@mirror/debian"), "carries credentials"),
        (DebianOptions(squashfs_level=23), "--squashfs-level: expected 1 to 22, got 23"),
        (
            DebianOptions(squashfs_compression="lz4"),
            "--squashfs-compression: expected zstd or xz, got 'lz4'",
        ),
        *(
            (
                DebianOptions(squashfs_block_size=size),
                f"--squashfs-block-size: expected a power of two from 4K to 1M (like 128K or"
                f" 1M), got {size!r}",
            )
            for size in ("2M", "2K", "96K", "1G", "128 K", "", "-1M", "131073")
        ),
        (DebianOptions(mirror="http://m/debian\nx"), "--mirror: expected a URL with no spaces"),
        (DebianOptions(mirror="http://m/deb ian"), "--mirror: expected a URL with no spaces"),
        (DebianOptions(security_mirror="ftp://s/"), "--security-mirror: expected an http(s)"),
        (DebianOptions(security_mirror="http://u:secret@s/"), "carries credentials"),
        (DebianOptions(snapshot="2026-11-01"), "--snapshot: expected a snapshot.debian.org"),
        (DebianOptions(snapshot="20261101T000000"), "--snapshot: expected a snapshot"),
        (DebianOptions(snapshot="20261101T000000Z\n"), "--snapshot: expected a snapshot"),
        (
            DebianOptions(snapshot="20261101T000000Z", mirror="http://m/debian"),
            "cannot be combined with --mirror",
        ),
        (
            DebianOptions(snapshot="20261101T000000Z", security_mirror="none"),
            "cannot be combined with --mirror or --security-mirror",
        ),
    ],
)
def test_bad_options_are_refused(options: DebianOptions, message: str) -> None:
    with pytest.raises(UserError) as caught:
        DebianBackend(options).check_options()
    assert message in caught.value.message
    assert "secret" not in caught.value.message


@pytest.mark.parametrize(
    ("size", "expected"), [("4K", 4096), ("128k", 131072), ("1M", 1048576), ("262144", 262144)]
)
def test_block_sizes_are_read_as_mksquashfs_reads_them(size: str, expected: int) -> None:
    options = DebianOptions(squashfs_block_size=size)
    options.check()
    assert options.block_size() == expected


def test_the_package_layers_key_follows_the_squashfs_settings(
    tmp_path: Path, archive_dates: object
) -> None:
    """Compressor and block size are in the plan, so a layer made with others is not reused."""
    profile = ProfileStore().resolve("base")

    def key(options: DebianOptions) -> str:
        backend = DebianBackend(options)
        plan = HookPlan.for_profile(
            profile, options.squashfs_level, options.squashfs_compression, options.block_size()
        )
        return package_layer_key(backend.package_inputs(profile, ["openssh-server"], plan))

    keys = {
        key(DebianOptions()),
        key(DebianOptions(squashfs_block_size="128K")),
        key(DebianOptions(squashfs_compression="xz")),
        key(DebianOptions(squashfs_compression="xz", squashfs_block_size="128K")),
    }
    assert len(keys) == 4
    assert key(DebianOptions(squashfs_block_size="1M")) == key(DebianOptions())


def test_file_mirrors_and_other_releases_pass() -> None:
    DebianOptions(release="trixie", mirror="file:///srv/mirror/debian").check()
    DebianOptions(security_mirror="none").check()
    DebianOptions(snapshot="20261101T000000Z").check()


def test_cache_inputs_follow_the_options(tmp_path: Path, archive_dates: object) -> None:
    request = make_request(tmp_path, ProfileStore().resolve("base"))
    default = DebianBackend().cache_inputs(request)
    level = DebianBackend(DebianOptions(squashfs_level=15)).cache_inputs(request)
    mirror = DebianBackend(DebianOptions(mirror="http://mirror.example/debian"))
    assert default["squashfs_level"] == "19" and level["squashfs_level"] == "15"
    assert (
        "deb http://mirror.example/debian bookworm main"
        in mirror.cache_inputs(request)["sources"].splitlines()
    )
    assert default["code"] == level["code"]  # the code's fingerprint, the same for both
    xz = DebianBackend(DebianOptions(squashfs_compression="xz")).cache_inputs(request)
    assert default["squashfs_compression"] == "zstd" and xz["squashfs_compression"] == "xz"
    # the block size: the compressor's own unless given (1 MiB under both)
    assert default["squashfs_block_size"] == str(1024 * 1024)
    assert xz["squashfs_block_size"] == str(1024 * 1024)
    given = DebianOptions(squashfs_block_size="128K")
    assert DebianBackend(given).cache_inputs(request)["squashfs_block_size"] == str(128 * 1024)
    no_security = DebianBackend(DebianOptions(security_mirror="none")).cache_inputs(request)
    assert "bookworm-security" in default["sources"]
    assert "bookworm-security" not in no_security["sources"]


RELEASE = "http://deb.debian.org/debian/dists/bookworm/Release"
SECURITY_RELEASE = "http://deb.debian.org/debian-security/dists/bookworm-security/Release"


def test_the_cache_key_follows_the_archives_state(
    tmp_path: Path, archive_dates: dict[str, datetime]
) -> None:
    """A security update (a new bookworm-security Release) misses the cache; the same state
    hits it; the newest suite's date is the build's SOURCE_DATE_EPOCH."""
    profile = ProfileStore().resolve("base")
    request = make_request(tmp_path, profile)

    def key() -> str:
        return cache_key(profile, DebianBackend().cache_inputs(request), [])

    archive_dates[RELEASE] = datetime(2026, 7, 11, 10, 16, 37, tzinfo=UTC)
    archive_dates[SECURITY_RELEASE] = datetime(2026, 11, 30, 0, 22, 33, tzinfo=UTC)
    before = key()
    assert key() == before
    assert DebianBackend().source_date_epoch() == str(
        int(datetime(2026, 11, 30, 0, 22, 33, tzinfo=UTC).timestamp())
    )
    archive_dates[SECURITY_RELEASE] = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)
    after = key()
    assert after != before
    archive_dates[RELEASE] = datetime(2026, 12, 2, tzinfo=UTC)
    assert key() not in {before, after}
    assert (
        "bookworm-security=2026-12-01T08:00:00Z"
        in DebianBackend().cache_inputs(request)["archive"].split()
    )


def test_a_caller_given_source_date_epoch_wins(
    archive_dates: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert DebianBackend().source_date_epoch() == "1700000000"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "not a number")
    assert DebianBackend().source_date_epoch() == str(
        int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    )


def test_a_snapshot_pins_the_sources_and_the_key_without_reading_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str) -> datetime:
        raise AssertionError(f"read {url}")

    monkeypatch.setattr(archive, "fetch_release_date", offline)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    profile = ProfileStore().resolve("base")
    options = DebianOptions(snapshot="20261101T000000Z")
    inputs = DebianBackend(options).cache_inputs(make_request(tmp_path, profile))
    later = DebianBackend(DebianOptions(snapshot="20261102T000000Z"))
    assert later.cache_inputs(make_request(tmp_path, profile)) != inputs
    assert DebianBackend(options).source_date_epoch() == str(
        int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
    )
    argv = command(tmp_path, profile, options)
    assert argv[-4:] == [
        "deb http://snapshot.debian.org/archive/debian/20261101T000000Z bookworm main",
        "deb http://snapshot.debian.org/archive/debian/20261101T000000Z bookworm-updates main",
        "deb http://snapshot.debian.org/archive/debian/20261101T000000Z bookworm-backports main",
        "deb http://snapshot.debian.org/archive/debian-security/20261101T000000Z"
        " bookworm-security main",
    ]
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in argv


BACKPORTS_RELEASE = "http://deb.debian.org/debian/dists/bookworm-backports/Release"


def with_kernel(profile: Profile, **kernel: str) -> Profile:
    return profile.model_copy(update={"kernel": profile.kernel.model_copy(update=kernel)})


def test_a_backports_kernel_is_asked_from_backports_and_keys_on_its_state(
    tmp_path: Path, archive_dates: dict[str, datetime]
) -> None:
    """base takes its kernel from -backports: apt is asked for it there, and a new
    backports Release (a new kernel) misses the cache and dates the build; a profile
    with the release's kernel neither names nor reads -backports."""
    backports = ProfileStore().resolve("base")
    release = with_kernel(backports, suite="release")
    assert backports.kernel.suite == "backports"
    assert debian_packages(backports, "bookworm")[0][0] == "linux-image-amd64/bookworm-backports"
    assert debian_packages(release, "bookworm")[0][0] == "linux-image-amd64"
    other = with_kernel(release, package="linux-image-rt-amd64")
    assert debian_packages(other, "bookworm")[0][0] == "linux-image-rt-amd64"

    def inputs(profile: Profile) -> dict[str, str]:
        return DebianBackend().cache_inputs(make_request(tmp_path, profile))

    assert "bookworm-backports" not in inputs(release)["sources"]
    before = inputs(backports)
    assert "deb http://deb.debian.org/debian bookworm-backports main" in before["sources"]
    archive_dates[BACKPORTS_RELEASE] = datetime(2026, 12, 1, 2, 21, 41, tzinfo=UTC)
    after = inputs(backports)
    assert "bookworm-backports=2026-12-01T02:21:41Z" in after["archive"].split()
    assert after != before
    assert DebianBackend().source_date_epoch(backports) == str(
        int(datetime(2026, 12, 1, 2, 21, 41, tzinfo=UTC).timestamp())
    )
    assert DebianBackend().source_date_epoch(release) == str(
        int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    )


def test_a_backports_kernel_on_a_release_without_backports_is_refused() -> None:
    profile = ProfileStore().resolve("base")
    with pytest.raises(UserError, match=r"kernel.suite = \"backports\", but sid has no") as err:
        debian_packages(profile, "sid")
    assert err.value.hint is not None and 'kernel.suite = "release"' in err.value.hint


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
    release = (options or DebianOptions()).release
    packages, _ = debian_packages(profile, release)
    return DebianBackend(options).mmdebstrap_command(request, packages, work)


def test_mmdebstrap_command(tmp_path: Path) -> None:
    profile = ProfileStore().resolve("worker")
    argv = command(tmp_path, profile, DebianOptions(release="trixie", mirror="http://m/debian"))
    mode = "root" if os.geteuid() == 0 else "unshare"
    assert argv[:4] == ["mmdebstrap", f"--mode={mode}", "--variant=minbase", "--components=main"]
    assert argv[-6:] == [  # no tarball: hooks only; the release, its updates, its security
        "trixie",
        "/dev/null",
        "deb http://m/debian trixie main",
        "deb http://m/debian trixie-updates main",
        "deb http://m/debian trixie-backports main",  # base's kernel comes from there
        "deb http://deb.debian.org/debian-security trixie-security main",
    ]
    assert not [a for a in argv if "Check-Valid-Until" in a]
    (include,) = [a for a in argv if a.startswith("--include=")]
    names = include.removeprefix("--include=").split(",")
    assert {"linux-image-amd64/trixie-backports", "systemd", "openssh-server"} <= set(names)
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
    assert (
        "deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware" in argv
    )
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
