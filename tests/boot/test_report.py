"""boot.report: boot-test's JSON report, whose checks have the shape verify's have."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from plasmaboot.boot.report import BootRecord, BootReport, write_report
from plasmaboot.checks import judged, passed, render_checks


def sample_report(path: Path, ok: bool) -> BootReport:
    checks = (
        passed("kernel command line", "console=ttyS0,115200"),
        judged("systemd is running", ok, "running" if ok else "degraded"),
    )
    boot = BootRecord(
        index=1,
        ssh_port=2222,
        events={"kernel_fetched": 3.5, "ssh_reachable": 20.25},
        phases={"kernel_to_ssh": 16.75},
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne root@node",
        logs={"serial": "/tmp/boot1/serial.log"},
    )
    return BootReport(
        label="worker",
        profile="worker",
        variant=None,
        accelerator="tcg",
        accelerator_reason="KVM failed",
        cpu="qemu64",
        nic="virtio",
        memory_mib=2048,
        qemu_command=["qemu-system-x86_64"],
        boots=[boot],
        memory={"mem_total_mib": 1990, "mem_available_mib": 1500},
        checks=checks,
        report_path=str(path),
    )


def test_report_is_written_as_json(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "boot-test-worker.json"
    write_report(sample_report(path, ok=False), path)
    data = json.loads(path.read_text())
    assert data["ok"] is False
    assert data["accelerator"] == "tcg"
    assert data["cpu"] == "qemu64"
    assert data["memory"]["mem_available_mib"] == 1500
    assert data["boots"][0]["phases"] == {"kernel_to_ssh": 16.75}
    assert [c["name"] for c in data["checks"]] == ["kernel command line", "systemd is running"]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_checks_have_verifys_json_shape(tmp_path: Path) -> None:
    data = json.loads(sample_report(tmp_path / "r.json", ok=False).to_json())
    assert data["checks"] == [
        {"name": "kernel command line", "result": "pass", "detail": "console=ttyS0,115200"},
        {"name": "systemd is running", "result": "fail", "detail": "degraded"},
    ]
    assert list(data)[:3] == ["ok", "checks", "label"]
    assert json.loads(sample_report(tmp_path / "r.json", ok=True).to_json())["ok"] is True


def test_a_written_report_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "boot-test-worker.json"
    report = sample_report(path, ok=True)
    write_report(report, path)
    assert BootReport.model_validate_json(path.read_text()) == report


def test_table_shows_each_check(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    report = sample_report(tmp_path / "r.json", ok=False)
    console.print(render_checks("boot-test worker (tcg)", report.checks))
    text = console.export_text()
    assert "kernel command line" in text and "pass" in text
    assert "systemd is running" in text and "FAIL" in text and "degraded" in text
