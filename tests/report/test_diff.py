from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot.cli import main
from plasmaboot.report.diff import compare_versions, diff_lines, diff_sets
from report_sets import MIB, make_manifest, worker_profile


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0", "1.0~rc1"),
        ("1:9.2p1-2", "1:9.2p1-2+deb12u3"),
        ("2.36-9+deb12u4", "2.36-9+deb12u10"),
        ("1.2.10", "1.2.9"),
        ("6.1.0-28", "6.1.0-3"),
        ("1.0~~", "1.0~"),
        ("1:0", "2"),
        ("0:1.0", "1.0"),
        ("1.0+b1", "1.0"),
        ("1.0a", "1.0"),
    ],
)
def test_versions_compare_as_dpkg_says(a: str, b: str) -> None:
    expected = next(
        result
        for op, result in (("lt", -1), ("eq", 0), ("gt", 1))
        if subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0
    )
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def two_sets(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "a"
    b = tmp_path / "b"
    make_manifest(
        a,
        packages={"bash": "5.2.15-2", "gone": "1.0", "libc6": "2.36-9+deb12u10", "same": "1"},
        package_sizes={"bash": 7 * MIB, "gone": 1000, "libc6": 12 * MIB, "same": 5},
        kernel_version="6.1.0-27-amd64",
    )
    make_manifest(
        b,
        profile=worker_profile(network={"mtu": 9000}),
        packages={"bash": "5.2.15-3", "new": "0.1", "libc6": "2.36-9+deb12u4", "same": "1"},
        package_sizes={"bash": 8 * MIB, "new": 2048, "libc6": 12 * MIB, "same": 5},
        kernel_version="6.1.0-28-amd64",
        initrd_size=101 * MIB,
    )
    return a, b


def test_diff_names_every_kind_of_change(tmp_path: Path) -> None:
    a, b = two_sets(tmp_path)
    from plasmaboot.artifacts.manifest import read_manifest

    diff = diff_sets(read_manifest(a), read_manifest(b))
    packages = diff["packages"]
    assert packages["added"] == [{"package": "new", "version": "0.1"}]
    assert packages["removed"] == [{"package": "gone", "version": "1.0"}]
    assert packages["upgraded"] == [{"package": "bash", "from": "5.2.15-2", "to": "5.2.15-3"}]
    assert [c["package"] for c in packages["downgraded"]] == ["libc6"]
    assert [(c["package"], c["change"]) for c in diff["package_sizes"]] == [
        ("bash", MIB),
        ("new", 2048),
        ("gone", -1000),
    ]
    assert diff["kernel"] == {"from": "6.1.0-27-amd64", "to": "6.1.0-28-amd64"}
    assert {"setting": "network.mtu", "from": None, "to": 9000} in diff["settings"]
    assert all(s["setting"] != "name" for s in diff["settings"])
    assert diff["files"]["initrd"] == {"from": 100 * MIB, "to": 101 * MIB}
    lines = diff_lines(diff)
    assert "kernel: 6.1.0-27-amd64 -> 6.1.0-28-amd64" in lines
    assert "+ new 0.1" in lines and "- gone 1.0" in lines
    assert "upgraded bash: 5.2.15-2 -> 5.2.15-3" in lines
    assert "  bash: +1.0 MiB" in lines
    assert "setting network.mtu: None -> 9000" in lines


def test_diff_command_text_and_json(tmp_path: Path) -> None:
    a, b = two_sets(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["diff", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "setting network.mtu: None -> 9000" in result.output
    result = runner.invoke(main, ["diff", str(a), str(b), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["packages"]["added"][0]["package"] == "new"


def test_identical_sets_and_sets_without_sizes(tmp_path: Path) -> None:
    make_manifest(tmp_path / "a")
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "a"), str(tmp_path / "a")])
    assert result.exit_code == 0
    assert "packages: unchanged" in result.output
    assert "settings: unchanged" in result.output
    assert "not known" in result.output  # the manifests hold no package sizes


def test_not_a_set_is_one_line_and_exit_2(tmp_path: Path) -> None:
    make_manifest(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "a"), str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "SET_B" in result.output and "no manifest.json" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{nope")
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "bad"), str(tmp_path / "a")])
    assert result.exit_code == 2 and "SET_A" in result.output
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text('{"profile": "worker"}')
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "old"), str(tmp_path / "a")])
    assert result.exit_code == 2 and len(result.output.splitlines()) == 2  # error + hint
    assert "the first: label: Field required" in result.output
