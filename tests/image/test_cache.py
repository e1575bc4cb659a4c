"""The set cache: the key follows every input (and key contents, not paths), a stored set is
found again, a damaged entry is a miss, and concurrent writers of one key leave one whole
entry."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import (
    HASHED_FILES,
    INSTALLED_INITRD,
    MANIFEST,
    SET_FILES,
    present_files,
)
from plasmaboot.artifacts.manifest import Manifest, file_records, write_manifest
from plasmaboot.image.cache import SetCache, cache_key
from plasmaboot.profiles.store import ProfileStore


def make_set(directory: Path, content: str) -> Path:
    """A finished set: its files, and a manifest that records their hashes (and those of
    the optional files `directory` already holds)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in SET_FILES:
        if name != MANIFEST:
            (directory / name).write_text(f"{name}:{content}")
    manifest = Manifest(
        profile="base", label="base", content_hash="x", cache_key="k", backend="debian",
        distro="debian bookworm", kernel_version="6.1", kernel_params=[],
        files=file_records(directory, present_files(directory, HASHED_FILES)), packages={},
        services={}, steps={}, built_at="2026-01-01T00:00:00+00:00",
        plasmaboot_version="0.1.0", resolved_profile=ProfileStore().resolve("base"),
    )  # fmt: skip
    write_manifest(directory, manifest)
    return directory


@pytest.fixture
def cache(tmp_path: Path) -> SetCache:
    return SetCache(tmp_path / "cache" / "sets")


def test_the_key_follows_every_input(tmp_path: Path) -> None:
    base, worker = ProfileStore().resolve("base"), ProfileStore().resolve("worker")
    key = tmp_path / "a.pub"
    key.write_text("ssh-ed25519 AAAA a\n")
    same_key_elsewhere = tmp_path / "elsewhere.pub"
    same_key_elsewhere.write_text("ssh-ed25519 AAAA a\n")
    other_key = tmp_path / "b.pub"
    other_key.write_text("ssh-ed25519 AAAA b\n")
    inputs = {"backend": "debian", "release": "bookworm"}
    reference = cache_key(base, inputs, [key])
    assert cache_key(base, dict(inputs), [key]) == reference
    assert cache_key(base, inputs, [same_key_elsewhere]) == reference  # contents, not paths
    assert cache_key(worker, inputs, [key]) != reference
    assert cache_key(base, {**inputs, "release": "trixie"}, [key]) != reference
    assert cache_key(base, inputs, [other_key]) != reference
    assert cache_key(base, inputs, []) != reference


def test_a_stored_set_is_found(cache: SetCache, tmp_path: Path) -> None:
    assert cache.lookup("k") is None
    cache.store(make_set(tmp_path / "staged", "one"), "k")
    hit = cache.lookup("k")
    assert hit == cache.root / "k"
    assert sorted(p.name for p in hit.iterdir()) == sorted(SET_FILES)
    assert (hit / "initrd").read_text() == "initrd:one"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "initrd").write_text("initrd:two"),  # same size, other bytes
        lambda d: (d / "bzImage").write_text("short"),
        lambda d: (d / "netboot.ipxe").unlink(),
        lambda d: (d / MANIFEST).unlink(),
        lambda d: (d / MANIFEST).write_text("{not json"),
    ],
)
def test_a_damaged_entry_is_a_miss(cache: SetCache, tmp_path: Path, damage: object) -> None:
    cache.store(make_set(tmp_path / "staged", "one"), "k")
    assert callable(damage)
    damage(cache.root / "k")
    assert cache.lookup("k") is None
    cache.store(make_set(tmp_path / "rebuilt", "one"), "k")  # the rebuild replaces it
    assert cache.lookup("k") == cache.root / "k"


def test_a_no_cache_rebuild_replaces_the_entry(cache: SetCache, tmp_path: Path) -> None:
    for content in ("old", "new"):
        cache.store(make_set(tmp_path / content, content), "k")
    assert (cache.root / "k" / "initrd").read_text() == "initrd:new"
    # the entry, and the record of the lookup's check beside it; no temporary left
    assert [p.name for p in cache.root.iterdir()] == ["k"]  # no temporary leftovers


def test_concurrent_stores_of_one_key_leave_one_whole_entry(
    cache: SetCache, tmp_path: Path
) -> None:
    """--jobs builds are threads: two profiles with the same key may finish together."""
    staged = [make_set(tmp_path / f"staged{i}", "same") for i in range(8)]
    barrier = threading.Barrier(len(staged))

    def store(directory: Path) -> None:
        barrier.wait()
        cache.store(directory, "k")

    with ThreadPoolExecutor(len(staged)) as pool:
        for future in [pool.submit(store, directory) for directory in staged]:
            future.result()
    assert cache.lookup("k") == cache.root / "k"
    # the entry, and the record of the lookup's check beside it; no temporary left
    assert sorted(p.name for p in cache.root.iterdir()) == [".checked-k.json", "k"]
    for directory in staged:  # the builds' own sets are untouched
        assert (directory / "initrd").read_text() == "initrd:same"


def age(directory: Path, seconds: int = 60) -> None:
    """Make the entry's files look written a while ago (older than any racy window)."""
    import os
    import time

    old = time.time_ns() - seconds * 1_000_000_000
    for path in directory.iterdir():
        if not path.name.startswith("."):
            os.utime(path, ns=(old, old))


def test_a_lookup_hashes_only_files_changed_since_the_last_check(
    cache: SetCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plasmaboot.image import cache as cache_module

    cache.store(make_set(tmp_path / "staged", "one"), "k")
    age(cache.root / "k")
    hashed: list[str] = []
    real = cache_module.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(cache_module, "sha256_file", counting)
    assert cache.lookup("k") is not None
    assert sorted(hashed) == sorted(HASHED_FILES)  # the first lookup hashes every file
    hashed.clear()
    assert cache.lookup("k") is not None
    assert hashed == []  # unchanged since: trusted
    (cache.root / "k" / "initrd").write_text("initrd:two")  # same size, other bytes
    assert cache.lookup("k") is None
    assert hashed == ["initrd"]


def test_a_file_written_close_to_its_check_is_hashed_again(
    cache: SetCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write in the same clock tick as the check keeps the mtime: such files are not
    trusted on their record (git's racily clean rule)."""
    from plasmaboot.image import cache as cache_module

    cache.store(make_set(tmp_path / "staged", "one"), "k")
    assert cache.lookup("k") is not None  # checked now, files written just before
    hashed: list[str] = []
    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    assert cache.lookup("k") is not None
    assert sorted(hashed) == sorted(HASHED_FILES)


def test_a_sets_installed_initrd_is_kept_and_checked(cache: SetCache, tmp_path: Path) -> None:
    """The Debian set's optional installed-initrd travels with the set through the cache;
    recorded in the manifest, a damaged one makes the entry a miss."""
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / INSTALLED_INITRD).write_text("initramfs")
    cache.store(make_set(staged, "x"), "k")
    hit = cache.lookup("k")
    assert hit is not None and (hit / INSTALLED_INITRD).read_text() == "initramfs"
    (hit / INSTALLED_INITRD).write_text("initramfX")
    assert cache.lookup("k") is None
