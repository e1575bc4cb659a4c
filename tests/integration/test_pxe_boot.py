"""Real PXE through `plasmaboot pxe-server` (dnsmasq's DHCP and TFTP, serve's HTTP) in a
network namespace: `boot-test --network netns` boots the CI image as a BIOS machine (QEMU's
iPXE ROM) and as a UEFI machine (OVMF's own PXE, snponly.efi over TFTP), each answering SSH
under its inventory host name with every check passing; an unknown machine gets nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from netns import PXE_FILES, PXE_TOOLS, require
from plasmaboot.boot.provisioning import (
    SERVER_LOG,
    plan_provisioning,
    provisioning_network,
)
from plasmaboot.boot.qemu import Accelerator, PxeVm, TapNetwork, VmConfig
from plasmaboot.log import Log

from conftest import CiImage

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 420  # power-on to SSH under TCG on a busy 2-core machine
RUN_TIMEOUT = BOOT_TIMEOUT + 600  # and the checks after it (systemd may take minutes)
MACHINE_MAC = "52:54:00:77:00:02"  # boot-test's machine (boot.provisioning)
UNKNOWN_MAC = "52:54:00:77:00:99"
ADDRESS = "10.77.0.2"


@pytest.fixture(autouse=True)
def pxe_tools() -> None:
    require(*PXE_TOOLS, files=PXE_FILES)  # in CI a missing tool fails the test


def boot_test(
    ci_image: CiImage, tmp_path: Path, firmware: str, hostname: str, retry: bool = True
) -> dict[str, Any]:
    """`plasmaboot boot-test --network netns` as a user runs it; its JSON report."""
    tmp_path.mkdir(exist_ok=True)
    report = tmp_path / "report.json"
    argv = [
        sys.executable, "-m", "plasmaboot", "--profiles-dir", str(ci_image.profiles_dir),
        "boot-test", ci_image.label, "--artifacts", str(ci_image.artifacts),
        "--identity", str(ci_image.identity), "--network", "netns", "--firmware", firmware,
        "--hostname", hostname, "--memory", "1024", "--timeout", str(BOOT_TIMEOUT),
        "--report", str(report),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert report.is_file(), proc.stderr[-3000:]
    data: dict[str, Any] = json.loads(report.read_text())
    failed = [c for c in data["checks"] if c["result"] != "pass"]
    if proc.returncode != 0 and retry and (handover_hang(data) or guest_crashed(data)):
        # Known and open, both QEMU's under TCG (the images boot): under OVMF+TCG on a
        # loaded machine, about one boot in ten stops after the kernel and initrd were
        # fetched; rarely, the guest kernel dies of "Oops: int3" while another vCPU patches
        # kernel text. Say so and boot once more; a second failure, or any other, fails.
        print(f"boot stopped by a known TCG failure; booting once more: {failed}")
        return boot_test(ci_image, tmp_path / "again", firmware, hostname, retry=False)
    assert proc.returncode == 0, f"{failed}\n{proc.stderr[-3000:]}"
    return data


def guest_crashed(report: dict[str, Any]) -> bool:
    """boot-test named a crash of the guest kernel (read from its console)."""
    return any("the guest kernel crashed: " in c["detail"] for c in report["checks"])


def handover_hang(report: dict[str, Any]) -> bool:
    """The boot fetched its kernel and initrd, and then the booted system never showed up."""
    events = report["boots"][0]["events"] if report.get("boots") else {}
    return "initrd_fetched" in events and "network_up" not in events


def check(report: dict[str, Any], name: str) -> str:
    found = [c for c in report["checks"] if c["name"] == name]
    assert found and found[0]["result"] == "pass", report["checks"]
    detail: str = found[0]["detail"]
    return detail


def server_output(report: dict[str, Any]) -> str:
    return Path(report["boots"][0]["logs"]["pxe-server"]).read_text()


def test_a_bios_machine_boots_its_profile(ci_image: CiImage, tmp_path: Path) -> None:
    report = boot_test(ci_image, tmp_path, "bios", "bios1")
    assert (report["network"], report["firmware"]) == ("netns", "bios")
    assert check(report, "hostname") == "bios1 (the inventory's: bios1)"
    # the per-node layer was stacked: its reporter sent the host keys SSH was checked with
    assert "host key checked against the node's report" in check(report, "boot 1: PXE to SSH")
    assert check(report, "firmware") == "booted under bios (want bios)"
    log = server_output(report)
    assert f"DHCPACK(br0) {ADDRESS} {MACHINE_MAC} bios1" in log
    assert f"boot: machine bios1 (MAC {MACHINE_MAC}) from {ADDRESS}" in log
    assert "loader_fetched" not in report["boots"][0]["events"]  # iPXE ROM: no TFTP hop
    print(f"BIOS power-on to SSH: {report['boots'][0]['phases']['total_to_ssh']:.1f}s")


def test_a_uefi_machine_boots_through_tftp(ci_image: CiImage, tmp_path: Path) -> None:
    report = boot_test(ci_image, tmp_path, "uefi", "uefi1")
    assert check(report, "hostname") == "uefi1 (the inventory's: uefi1)"
    # the per-node layer was read after the set's initrd (UEFI's loader appends it unpadded:
    # the set's initrd must end aligned) and its reporter sent the host keys SSH checked
    assert "host key checked against the node's report" in check(report, "boot 1: PXE to SSH")
    assert check(report, "firmware") == "booted under uefi (want uefi)"
    log = server_output(report)
    assert f"snponly.efi to {ADDRESS}" in log  # the firmware's PXE fetched iPXE over TFTP
    assert f"boot: machine uefi1 (MAC {MACHINE_MAC}) from {ADDRESS}" in log
    assert "loader_fetched" in report["boots"][0]["events"]
    print(f"UEFI power-on to SSH: {report['boots'][0]['phases']['total_to_ssh']:.1f}s")


def wait_for_line(path: Path, needle: str, timeout: float, vm: PxeVm) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and vm.running():
        if needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return needle in path.read_text(errors="replace")


def test_an_unknown_machine_gets_no_offer(ci_image: CiImage, tmp_path: Path) -> None:
    """boot-test's own namespace and pxe-server, with a machine whose MAC the inventory does
    not have: no offer within 60 s, and dnsmasq's output names the MAC as ignored."""
    plan = plan_provisioning(
        ci_image.label, ci_image.label, None, "known1", "10.77.0.0/24", (ci_image.profiles_dir,)
    )
    with (
        Log(tmp_path / "boot-test.log", subject="unknown") as log,
        provisioning_network(plan, ci_image.artifacts, tmp_path, log) as provisioned,
    ):
        config = VmConfig(
            workdir=tmp_path / "vm",
            label=ci_image.label,
            network=TapNetwork(provisioned.guest.tap, UNKNOWN_MAC),
            accelerator=Accelerator.TCG,
            memory_mib=512,
        )
        server_log = tmp_path / SERVER_LOG
        with PxeVm(config, access_log=server_log, log=log, netns=provisioned.netns) as vm:
            named = f"DHCPDISCOVER(br0) {UNKNOWN_MAC} ignored"
            assert wait_for_line(server_log, named, 120, vm), server_log.read_text()[-3000:]
            time.sleep(60)  # and it stays without an address, a script or a kernel
            assert vm.running()
    about = [line for line in server_log.read_text().splitlines() if UNKNOWN_MAC in line]
    assert about and all("ignored" in line or "RTR-SOLICIT" in line for line in about), about
    assert not {"firmware_lease", "script_fetched", "kernel_fetched"} & set(vm.watch.events)
    assert "Linux version" not in vm.serial_text()
