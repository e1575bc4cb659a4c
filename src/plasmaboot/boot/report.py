"""boot-test's report: the checks (the model `verify` shares, plasmaboot.checks) and what a
reader needs to judge them: each boot's events and phases, the accelerator and CPU model,
the network and firmware, the guest's memory and the exact QEMU command. Written as JSON
beside the set."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from plasmaboot.checks import Report


class BootRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    ssh_port: int
    events: dict[str, float]  # seconds since QEMU started
    phases: dict[str, float]
    host_key: str | None
    logs: dict[str, str]
    ssh_host: str = "127.0.0.1"  # the guest's address inside the namespace with --network netns


class BootReport(Report):
    label: str
    profile: str
    variant: str | None
    accelerator: str
    accelerator_reason: str
    cpu: str
    nic: str
    network: str = "user"  # or netns: pxe-server in a namespace
    firmware: str = "bios"  # or uefi (OVMF)
    memory_mib: int
    qemu_command: list[str]
    boots: list[BootRecord]
    memory: dict[str, int]
    report_path: str


def write_report(report: BootReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(report.to_json() + "\n", encoding="utf-8")
    temp.replace(path)
