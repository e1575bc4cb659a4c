from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.report.history import (
    HISTORY,
    append_history,
    history_record,
    layer_sizes,
    read_history,
)
from report_sets import MIB, make_manifest


def test_record_holds_what_the_report_plots(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "set", packages={"a": "1", "b": "2"})
    record = history_record(manifest, "worker-0123", True, 12.3456, "2026-01-02T03:04:05+00:00")
    assert record["profile"] == "worker"
    assert record["backend"] == "debian"
    assert record["content_hash"] == manifest.content_hash
    assert record["set"] == "worker-0123"
    assert record["seconds"] == 12.346
    assert record["steps"] == {"mmdebstrap": 100.0, "initrd": 5.0}
    assert record["sizes"]["kernel"] == 8 * MIB
    assert record["sizes"]["initrd"] == 100 * MIB
    assert record["sizes"]["layers"] == {}
    assert record["sizes"]["total"] == 108 * MIB + 300
    assert record["packages"] == 2
    assert record["cache"] == "hit"
    assert record["version"]


def test_layer_sizes_come_from_the_manifests_layer_records(tmp_path: Path) -> None:
    layers = [
        {"name": n, "kind": k, "file": "initrd", "offset": o, "size": z, "sha256": "0" * 64}
        for n, k, o, z in [("stage1", "segment", 0, 5), ("10-packages", "squashfs", 512, 90),
                           ("50-profile", "segment", 1024, 10)]
    ]  # fmt: skip
    layered = make_manifest(tmp_path / "a", layers=layers)
    assert layer_sizes(read_manifest(tmp_path / "a")) == {
        "stage1": 5, "10-packages": 90, "50-profile": 10,
    }  # fmt: skip
    assert layer_sizes(layered) == layer_sizes(read_manifest(tmp_path / "a"))
    assert layer_sizes(make_manifest(tmp_path / "b")) == {}  # a set without layers


def test_append_then_read_in_order(tmp_path: Path) -> None:
    for index in range(3):
        append_history(tmp_path, {"profile": "worker", "n": index})
    assert [r["n"] for r in read_history(tmp_path)] == [0, 1, 2]
    lines = (tmp_path / HISTORY).read_text().splitlines()
    assert all(json.loads(line)["profile"] == "worker" for line in lines)


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    big = "x" * 20_000  # longer than a pipe buffer: one write(2) per line still holds
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: append_history(tmp_path, {"profile": big, "n": n}), range(64)))
    records = read_history(tmp_path)
    assert sorted(r["n"] for r in records) == list(range(64))


def test_history_is_bounded_by_rotation(tmp_path: Path) -> None:
    for index in range(50):
        append_history(tmp_path, {"profile": "w", "n": index, "pad": "p" * 100}, max_bytes=1000)
    current = tmp_path / HISTORY
    rotated = tmp_path / (HISTORY + ".1")
    assert current.stat().st_size <= 1000
    assert rotated.stat().st_size <= 1000
    numbers = [r["n"] for r in read_history(tmp_path)]
    assert numbers == sorted(numbers)
    assert numbers[-1] == 49
    assert len(numbers) < 50  # older generations are gone


def test_damaged_lines_are_skipped(tmp_path: Path) -> None:
    append_history(tmp_path, {"profile": "a"})
    with (tmp_path / HISTORY).open("a") as handle:
        handle.write('{"profile": "cut in the midd\n[1, 2]\n{"no": "profile"}\n')
    append_history(tmp_path, {"profile": "b"})
    assert [r["profile"] for r in read_history(tmp_path)] == ["a", "b"]


def test_no_history_is_empty(tmp_path: Path) -> None:
    assert read_history(tmp_path / "missing") == []
    os.mkdir(tmp_path / HISTORY)
    assert read_history(tmp_path) == []
