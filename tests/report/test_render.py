from __future__ import annotations

import json
from pathlib import Path

import numpy
from click.testing import CliRunner
from matplotlib.image import imread

from plasmaboot.cli import main
from plasmaboot.report.figures import collect_figures
from plasmaboot.report.history import append_history, history_record
from plasmaboot.report.render import page, render_report
from report_sets import MIB, make_manifest


def artifacts_with_history(tmp_path: Path) -> Path:
    artifacts = tmp_path / "artifacts"
    for index in range(4):
        manifest = make_manifest(
            artifacts / ".sets" / f"worker-{index}",
            initrd_size=(100 + index) * MIB,
            steps={"mmdebstrap": 90.0 + index, "initrd": 5.0, "customize.make_squashfs": 9.0},
            package_sizes={f"pkg{n}": n * MIB for n in range(1, 30)},
            module_sizes={"drivers/net": 20 * MIB, "fs": 9 * MIB, "net": 4 * MIB},
        )
        hit = index == 2
        record = history_record(
            manifest, f"worker-{index}", hit, 120.0 + index, f"2026-01-0{index + 1}"
        )
        append_history(artifacts, record)
    (artifacts / "worker").symlink_to(Path(".sets") / "worker-3")
    return artifacts


def assert_plot(path: Path) -> None:
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert width >= 400 and height >= 200
    assert numpy.ptp(pixels[..., :3]) > 0.5  # not one colour: something is drawn


def test_report_draws_every_plot(tmp_path: Path) -> None:
    artifacts = artifacts_with_history(tmp_path)
    figures = collect_figures(artifacts)
    assert figures["builds"] == 4
    assert [p["total"] for p in figures["size_over_builds"]["worker"]][-1] == 111 * MIB + 300
    assert len(figures["step_seconds_over_builds"]["worker"]) == 3  # the cache hit is left out
    assert figures["step_seconds_over_builds"]["worker"][0]["steps"]["customize"] == 9.0
    image = figures["images"]["worker"]
    assert image["top_packages"][0] == ["pkg29", 29 * MIB]
    assert len(image["top_packages"]) == 15
    assert image["other_packages_bytes"] == sum(range(1, 15)) * MIB
    assert image["module_trees"][0] == ["drivers/net", 20 * MIB]
    output = tmp_path / "report"
    document = render_report(figures, output)
    for name in ("sizes.png", "steps-worker.png", "bytes-worker.png"):
        assert_plot(output / name)
    html = (output / "index.html").read_text()
    assert '<img src="sizes.png"' in html and '<img src="bytes-worker.png"' in html
    assert json.loads((output / "report.json").read_text())["plots"] == document["plots"]


def test_report_command(tmp_path: Path) -> None:
    artifacts = artifacts_with_history(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["report", "--artifacts", str(artifacts), "--output", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plots"]["sizes"] == "sizes.png"
    result = CliRunner().invoke(main, ["report", "--artifacts", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "--artifacts" in result.output


def test_empty_artifacts_still_make_a_page(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    document = render_report(collect_figures(tmp_path / "artifacts"), tmp_path / "out")
    assert document["plots"]["sizes"] is None
    assert "No builds in the history yet" in (tmp_path / "out" / "index.html").read_text()


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    figures = collect_figures(tmp_path)
    figures["images"] = {
        "<script>alert(1)</script>": {
            "backend": "<b>",
            "kernel_version": '"><img src=x onerror=alert(1)>',
            "files": {"<i>": 1},
            "packages": 1,
            "top_packages": [],
            "other_packages_bytes": 0,
            "module_trees": [],
            "other_module_trees_bytes": 0,
        }
    }
    html = page(figures, {"sizes": None, "steps": {}, "bytes": {}})
    assert "<script>" not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
