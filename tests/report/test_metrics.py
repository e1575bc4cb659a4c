from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plasmaboot.errors import UserError
from plasmaboot.report.history import history_record
from plasmaboot.report.metrics import build_metrics_text, check_metrics_file, write_metrics_file
from report_sets import MIB, make_manifest

PACKAGES_LAYER = {
    "name": "10-packages", "kind": "squashfs", "file": "initrd", "offset": 512, "size": 5,
    "sha256": "0" * 64,
}  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_build_figures_in_text_format(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "set", layers=[PACKAGES_LAYER])
    record = history_record(manifest, "worker-abc", False, 42.5, "2026-01-02T00:00:00+00:00")
    text = build_metrics_text([record])
    found = samples(text)
    key = (("backend", "debian"), ("profile", "worker"), ("variant", ""))
    assert found[("plasmaboot_build_duration_seconds", key)] == 42.5
    assert found[("plasmaboot_build_step_seconds", tuple(sorted((*key, ("step", "mmdebstrap")))))]
    assert (
        found[("plasmaboot_build_file_bytes", tuple(sorted((*key, ("file", "initrd")))))]
        == 100 * MIB
    )
    assert found[("plasmaboot_build_layer_bytes", tuple(sorted((*key, ("layer", "10-packages")))))]
    assert found[("plasmaboot_build_cache_hit", key)] == 0
    assert found[("plasmaboot_build_timestamp_seconds", key)] == 1767312000
    assert "# HELP plasmaboot_build_duration_seconds" in text
    assert "# TYPE plasmaboot_build_duration_seconds gauge" in text


def test_file_is_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "plasmaboot.prom"
    target.write_text("old\n")
    write_metrics_file(target, "new 1\n")
    assert target.read_text() == "new 1\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert os.listdir(tmp_path) == ["plasmaboot.prom"]  # no temporary file left


def test_bad_metrics_file_is_refused_before_the_build(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        check_metrics_file(tmp_path / "missing" / "x.prom")
    with pytest.raises(UserError, match="is a directory"):
        check_metrics_file(tmp_path)
    check_metrics_file(tmp_path / "ok.prom")


def test_build_command_writes_the_metrics_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from plasmaboot.cli import main
    from plasmaboot.image.pipeline import BuildOutcome
    from plasmaboot.profiles.store import ProfileStore

    manifest = make_manifest(tmp_path / "set")
    record = history_record(manifest, "worker-1", False, 3.0, "2026-01-02T00:00:00+00:00")
    outcome = BuildOutcome(
        profile=ProfileStore().resolve("worker"),
        backend="debian",
        kernel_version=manifest.kernel_version,
        kernel_size=8 * MIB,
        initrd_size=100 * MIB,
        seconds=3.0,
        cache_hit=False,
        path=tmp_path / "set",
        record=record,
    )
    calls: list[object] = []
    build_module = importlib.import_module("plasmaboot.cli.build")  # loaded on first use
    monkeypatch.setattr(
        build_module, "build_profiles", lambda *a, **k: calls.append(a) or [outcome]
    )
    target = tmp_path / "plasmaboot.prom"
    args = ["build", "-p", "worker", "--json", "--metrics-file"]
    result = CliRunner().invoke(main, [*args, str(target)])
    assert result.exit_code == 0, result.output
    assert "plasmaboot_build_duration_seconds" in target.read_text()
    result = CliRunner().invoke(main, [*args, str(tmp_path / "missing" / "x.prom")])
    assert result.exit_code == 2 and "--metrics-file" in result.output
    assert len(calls) == 1  # refused before any build
