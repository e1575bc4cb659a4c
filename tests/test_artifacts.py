"""Fast tests of the pieces the build stands on: atomic sets, the cpio writer, the iPXE
script and `plasmaboot publish`. The build's own steps are tested in tests/image/."""

from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import KEEP_GENERATIONS, clean_stale, sets_dir, staging_dir
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.cpio import Compression, Entry, read_members, write_cpio, write_segment
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.profiles.store import ProfileStore

NAMES = ("bzImage", "initrd", "netboot.ipxe")


def make_source(directory: Path, content: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (directory / name).write_text(f"{name}:{content}")
    return directory


# --- atomic sets -------------------------------------------------------------------------


def test_publish_makes_a_symlinked_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    final = publish_atomically(make_source(tmp_path / "a", "one"), out, "worker", NAMES)
    link = out / "worker"
    assert link.is_symlink()
    assert link.resolve() == final.resolve()
    assert (link / "initrd").read_text() == "initrd:one"
    assert stat.S_IMODE((final / "initrd").stat().st_mode) == 0o644


def test_republish_swaps_and_keeps_the_previous_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    first = publish_atomically(make_source(tmp_path / "a", "one"), out, "worker", NAMES)
    second = publish_atomically(make_source(tmp_path / "b", "two"), out, "worker", NAMES)
    assert first != second
    assert (out / "worker" / "bzImage").read_text() == "bzImage:two"
    # a node that fetched the old script can still finish downloading the old set
    assert (first / "initrd").read_text() == "initrd:one"


def test_identical_content_gives_the_same_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    first = publish_atomically(make_source(tmp_path / "a", "same"), out, "w", NAMES)
    again = publish_atomically(make_source(tmp_path / "b", "same"), out, "w", NAMES)
    assert first == again
    assert [p.name for p in sets_dir(out).iterdir()] == [first.name]


def test_old_sets_are_pruned(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    for index in range(5):
        publish_atomically(make_source(tmp_path / str(index), str(index)), out, "w", NAMES)
        publish_atomically(make_source(tmp_path / f"o{index}", str(index)), out, "other", NAMES)
    worker_sets = [p for p in sets_dir(out).iterdir() if p.name.startswith("w-")]
    assert len(worker_sets) == KEEP_GENERATIONS
    other_sets = [p for p in sets_dir(out).iterdir() if p.name.startswith("other-")]
    assert len(other_sets) == KEEP_GENERATIONS


def test_a_plain_directory_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    make_source(out / "worker", "hand-copied")
    publish_atomically(make_source(tmp_path / "a", "new"), out, "worker", NAMES)
    assert (out / "worker").is_symlink()
    assert (out / "worker" / "initrd").read_text() == "initrd:new"


def test_failed_copy_leaves_previous_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    publish_atomically(make_source(tmp_path / "a", "one"), out, "w", NAMES)
    broken = make_source(tmp_path / "b", "two")
    (broken / "initrd").unlink()
    with pytest.raises(FileNotFoundError):
        publish_atomically(broken, out, "w", NAMES)
    assert (out / "w" / "initrd").read_text() == "initrd:one"
    assert not [p for p in sets_dir(out).iterdir() if p.name.startswith(".staging-")]


def test_clean_stale_removes_leftovers_only(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    publish_atomically(make_source(tmp_path / "a", "one"), out, "w", NAMES)
    leftover = staging_dir(out, "w")
    (leftover / "initrd").write_text("half")
    clean_stale(out)
    assert not leftover.exists()
    assert (out / "w" / "initrd").read_text() == "initrd:one"


def test_clean_stale_keeps_a_running_builds_staging(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    sets = sets_dir(out)
    sets.mkdir(parents=True)
    alive = sets / f".staging-{os.getppid()}-w-abc"  # our parent: surely running
    dead = sets / ".staging-999999999-w-abc"  # no such process
    alive.mkdir()
    dead.mkdir()
    clean_stale(out)
    assert alive.exists()
    assert not dead.exists()


# --- cpio writer -------------------------------------------------------------------------


def sample_entries(tmp_path: Path) -> list[Entry]:
    script = tmp_path / "init"
    script.write_text("#!/bin/sh\necho hi\n")
    os.utime(script, (2_000_000_000, 2_000_000_000))
    return [
        Entry("lib/modules/loop.ko", stat.S_IFREG | 0o644, data=b"\x7fELF"),
        Entry("init", stat.S_IFREG | 0o755, source=script),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("bin/sh", stat.S_IFLNK | 0o777, link_target="busybox"),
    ]


def test_cpio_is_deterministic_sorted_and_owned_by_root(tmp_path: Path) -> None:
    first, second = io.BytesIO(), io.BytesIO()
    write_cpio(sample_entries(tmp_path), first, mtime=1234)
    write_cpio(list(reversed(sample_entries(tmp_path))), second, mtime=1234)
    assert first.getvalue() == second.getvalue()
    assert len(first.getvalue()) % 512 == 0
    members, _ = read_members(first.getvalue())
    names = [m.name for m in members]
    assert names == sorted(names)
    # parent directories are added so the kernel can create the files
    assert {"lib", "lib/modules", "dev", "bin"} <= set(names)
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 1234 for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["init"].is_executable
    assert by_name["bin/sh"].link_target == "busybox"
    init = by_name["init"]
    assert first.getvalue()[init.offset : init.offset + init.size] == b"#!/bin/sh\necho hi\n"


def test_cpio_mtime_defaults_to_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "777")
    out = io.BytesIO()
    write_cpio(sample_entries(tmp_path), out)
    members, _ = read_members(out.getvalue())
    assert {m.mtime for m in members} == {777}


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD, Compression.NONE])
def test_segments_are_detected_and_readable(tmp_path: Path, compression: Compression) -> None:
    path = tmp_path / "segment"
    write_segment(sample_entries(tmp_path), path, compression)
    data = path.read_bytes()
    assert Compression.detect(data[:8]) is compression
    if compression is Compression.GZIP:
        data = gzip.decompress(data)
    if compression is not Compression.ZSTD:
        members, _ = read_members(data)
        assert "init" in {m.name for m in members}


# --- iPXE script ---------------------------------------------------------------------


def test_netboot_script() -> None:
    script = render_netboot_script("worker", ["console=ttyS0,115200", "loglevel=4"])
    assert script.splitlines() == [
        "#!ipxe",
        "# plasmaboot: worker",
        "kernel ${boot-server}/worker/bzImage initrd=initrd console=ttyS0,115200 loglevel=4",
        "initrd --name initrd ${boot-server}/worker/initrd",
        "boot",
    ]


# --- plasmaboot publish -----------------------------------------------------------------


def built_set(tmp_path: Path, label: str = "worker") -> Path:
    """A set as a build leaves it: files plus a manifest that records their hashes."""
    from plasmaboot.artifacts.manifest import Manifest, file_records, write_manifest

    directory = make_source(tmp_path / "artifacts" / label, "v1")
    manifest = Manifest(
        profile=label, label=label, content_hash="x", cache_key="y", backend="debian",
        distro="debian bookworm", kernel_version="6.1", kernel_params=[],
        files=file_records(directory, NAMES), packages={}, services={}, steps={},
        built_at="2026-11-25T00:00:00+00:00", plasmaboot_version="0.1.0",
        resolved_profile=ProfileStore().resolve("worker"),
    )  # fmt: skip
    write_manifest(directory, manifest)
    return directory


def test_publish_command_copies_a_checked_set(tmp_path: Path) -> None:
    from conftest import plasmaboot

    directory = built_set(tmp_path)
    proc = plasmaboot("publish", str(directory), "--pxe-dir", str(tmp_path / "pxe"))
    assert proc.returncode == 0, proc.stderr
    published = tmp_path / "pxe" / "worker"
    assert sorted(p.name for p in published.iterdir()) == sorted(NAMES)
    assert (published / "initrd").read_text() == "initrd:v1"


def test_publish_command_refuses_a_damaged_set(tmp_path: Path) -> None:
    from conftest import plasmaboot

    directory = built_set(tmp_path)
    pxe = tmp_path / "pxe"
    assert plasmaboot("publish", str(directory), "--pxe-dir", str(pxe)).returncode == 0
    (directory / "initrd").write_text("initrd:v2")  # same size, other bytes
    proc = plasmaboot("publish", str(directory), "--pxe-dir", str(pxe))
    assert proc.returncode == 2
    assert "refusing to publish: file:initrd: sha256 " in proc.stderr
    assert "manifest.json says" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (pxe / "worker" / "initrd").read_text() == "initrd:v1"  # previous set untouched
