"""verify.initrd: the initrd's segments, its /init and the root squashfs superblock."""

from __future__ import annotations

import json
import lzma
import os
import stat
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from artifact_sets import check_of, damage_superblock, failures, make_nix_set, rehash, run_verify
from plasmaboot.artifacts.layout import INITRD
from plasmaboot.checks import Outcome
from plasmaboot.formats.cpio import Compression, Entry, concatenate, read_segments, write_segment
from plasmaboot.verify.initrd import check_stage1_modules


def truncate_initrd(directory: Path) -> None:
    data = (directory / INITRD).read_bytes()
    (directory / INITRD).write_bytes(data[: len(data) // 2])


def remove_initrd(directory: Path) -> None:
    (directory / INITRD).unlink()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (truncate_initrd, {"initrd.segments"}),
        (damage_superblock, {"initrd.squashfs"}),
        (remove_initrd, {"file:initrd", "initrd.segments", "ipxe.files"}),
    ],
)
def test_damage_is_a_named_failure(
    make_set: Callable[..., Path], damage: Callable[[Path], None], expected: set[str]
) -> None:
    directory = make_set()
    damage(directory)
    rehash(directory)  # so only the damage itself is reported, not the changed hash
    assert failures(directory) == expected


def test_an_init_that_is_not_executable_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    data = (directory / INITRD).read_bytes()
    root_segment = read_segments(directory / INITRD)[1].offset
    write_segment([Entry("init", stat.S_IFREG | 0o644, data=b"#!/bin/sh\n")],
                  directory / "stage1", Compression.GZIP)  # fmt: skip
    (directory / "root").write_bytes(data[root_segment:])
    concatenate([directory / "stage1", directory / "root"], directory / INITRD)  # aligned
    (directory / "stage1").unlink()
    (directory / "root").unlink()
    rehash(directory)
    assert failures(directory) == {"initrd.init"}
    _, report, _ = run_verify(directory)
    assert check_of(report, "initrd.init")["detail"] == "/init is not an executable file (100644)"


def test_an_initrd_without_either_squashfs_fails(tmp_path: Path) -> None:
    directory = make_nix_set(tmp_path)
    write_segment([Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n")],
                  directory / INITRD, Compression.GZIP)  # fmt: skip
    rehash(directory)
    code, report, _ = run_verify(directory)
    assert code == 1
    squashfs = check_of(report, "initrd.squashfs")
    assert squashfs["detail"] == (
        "no /layers/10-packages.squashfs, /root.squashfs or /nix-store.squashfs in any segment"
    )


def test_an_initrd_that_ends_unaligned_fails(make_set: Callable[..., Path]) -> None:
    """Three NULs more (the kernel skips them) and the initrd still unpacks, but an initrd a
    UEFI loader appends after it (the per-node layer) would start unaligned and be lost."""
    directory = make_set()
    with (directory / INITRD).open("ab") as out:
        out.write(b"\0" * 3)
    rehash(directory)
    assert failures(directory) == {"initrd.segments"}
    _, report, _ = run_verify(directory)
    assert "not a multiple of 4" in check_of(report, "initrd.segments")["detail"]


# --------------------------------------------------------------------------------------
# initrd.stage1-modules: what stage-1's busybox insmod will be given

KERNEL = "6.12.95+deb12-amd64"


def fake_module(vermagic: str = KERNEL) -> bytes:
    return b"\x7fELF\x02\x01\x01" + b"\0" * 64 + f"\0vermagic={vermagic} SMP mod_unload\0".encode()


def stage1_segments(tmp_path: Path, modules: dict[str, bytes], listed: list[str]) -> list[Any]:
    listing = "".join(f"{name}\n" for name in listed).encode()
    entries = [
        Entry("etc/stage1-modules", stat.S_IFREG | 0o644, data=listing),
        *[
            Entry(f"lib/modules/{name}", stat.S_IFREG | 0o644, data=body)
            for name, body in modules.items()
        ],
    ]
    write_segment(entries, tmp_path / "stage1.cpio.gz", Compression.GZIP)
    return read_segments(tmp_path / "stage1.cpio.gz")


def test_plain_modules_built_for_the_kernel_pass(tmp_path: Path) -> None:
    segments = stage1_segments(tmp_path, {"loop.ko": fake_module()}, ["loop.ko"])
    check = check_stage1_modules(segments, KERNEL)
    assert check.passed, check.detail
    assert check.detail == f"1 plain ELF modules for {KERNEL}: loop.ko"


@pytest.mark.parametrize(
    ("modules", "detail"),
    [
        # a backports kernel's module copied as shipped: insmod cannot read it
        ({"loop.ko": lzma.compress(fake_module())}, "loop.ko is not a plain ELF module"),
        ({"loop.ko": fake_module("6.1.0-57-amd64")}, "loop.ko is built for '6.1.0-57-amd64"),
        ({"loop.ko": b"\x7fELF no modinfo"}, "loop.ko is built for None"),
        ({}, "/etc/stage1-modules names loop.ko, not in the initrd"),
    ],
)
def test_a_module_insmod_would_refuse_fails(
    tmp_path: Path, modules: dict[str, bytes], detail: str
) -> None:
    check = check_stage1_modules(stage1_segments(tmp_path, modules, ["loop.ko"]), KERNEL)
    assert not check.passed
    assert check.detail.startswith(detail), check.detail


def test_an_initrd_without_a_debian_stage1_skips_the_module_check(tmp_path: Path) -> None:
    write_segment([Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n")],
                  tmp_path / "nix.cpio.gz", Compression.GZIP)  # fmt: skip
    check = check_stage1_modules(read_segments(tmp_path / "nix.cpio.gz"), KERNEL)
    assert check.result == Outcome.SKIP


def test_a_forged_module_list_is_shown_escaped(tmp_path: Path) -> None:
    """The list comes from the set: a name with a terminal escape or a path is named in
    the detail as a quoted, escaped value, never raw."""
    for hostile in ["\x1b[2Jloop.ko", "../../etc/shadow"]:
        check = check_stage1_modules(stage1_segments(tmp_path, {}, [hostile]), KERNEL)
        assert not check.passed
        assert "\x1b" not in check.detail
        assert check.detail.startswith(f"/etc/stage1-modules names {json.dumps(hostile)}, not in")


def test_the_root_squashfs_is_never_held_in_memory_whole(make_set: Callable[..., Path]) -> None:
    # a real root image is ~90 MB: verify copies it out of the mapped initrd a block at a
    # time for unsquashfs, and reads only the superblock itself
    size = 24 << 20

    def add_blob(tree: Path) -> None:
        (tree / "usr/share/blob").parent.mkdir(parents=True, exist_ok=True)
        (tree / "usr/share/blob").write_bytes(os.urandom(size))  # does not compress

    directory = make_set(add_blob)
    assert (directory / INITRD).stat().st_size > size
    tracemalloc.start()
    try:
        code, report, _ = run_verify(directory)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, failures(directory)
    assert check_of(report, "image.read")["result"] == "pass"
    assert peak < size // 2, f"verify held {peak >> 20} MiB at its peak"
