"""Real PXE through `plasmaboot pxe-server` (dnsmasq's DHCP and TFTP, serve's HTTP) in a
network namespace the test makes: BIOS and UEFI machines of the inventory boot the CI image
and answer SSH under their inventory host name; an unknown machine gets nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import Netns, netns, wait_for_text

from conftest import CiImage

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 420.0  # power-on to SSH under TCG on a busy 2-core machine
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BIOS_MAC, UEFI_MAC, UNKNOWN_MAC = "52:54:00:77:00:01", "52:54:00:77:00:02", "52:54:00:77:00:99"


@dataclass
class PxeServer:
    space: Netns
    log: Path
    identity: Path


@pytest.fixture(scope="module")
def pxe(ci_image: CiImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PxeServer]:
    base = tmp_path_factory.mktemp("pxe-boot")
    inventory = base / "machines.toml"
    inventory.write_text(
        f'[defaults]\nprofile = "{ci_image.label}"\n\n'
        f'[machines.bios1]\nmac = "{BIOS_MAC}"\nipv4 = "10.77.0.21/24"\n\n'
        f'[machines.uefi1]\nmac = "{UEFI_MAC}"\nipv4 = "10.77.0.22/24"\n'
    )
    log = base / "pxe.log"
    with netns("boot") as space:
        server = space.popen(
            sys.executable, "-m", "plasmaboot", "--profiles-dir", str(ci_image.profiles_dir),
            "pxe-server", "--interface", "br0", "--root", str(ci_image.artifacts),
            "--inventory", str(inventory), "--dhcp-range", "10.77.0.100,10.77.0.150",
            log=log,
        )  # fmt: skip
        assert wait_for_text(log, "pxe-server on br0", 60, server), log.read_text()
        try:
            yield PxeServer(space, log, ci_image.identity)
        finally:
            server.terminate()
            server.wait(timeout=30)


def qemu_argv(space: Netns, tap: str, mac: str, workdir: Path, uefi: bool) -> list[str]:
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64", "-smp", "2", "-m", "1024",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{workdir / 'serial.log'}",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
    ]  # fmt: skip
    if uefi:
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        # romfile= (none): OVMF's own PXE boots, so the TFTP hop (snponly.efi) is exercised
        return [
            *argv, "-machine", "q35",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vars_copy}",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
        ]  # fmt: skip
    return [*argv, "-machine", "pc", "-boot", "order=n",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]  # fmt: skip


def ssh(pxe: PxeServer, address: str, command: str) -> subprocess.CompletedProcess[str]:
    return pxe.space.run(
        "ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=3", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-i", str(pxe.identity), f"root@{address}", command, timeout=60,
    )  # fmt: skip


def boot_to_ssh(pxe: PxeServer, tmp_path: Path, tap: str, mac: str, address: str,
                uefi: bool) -> tuple[str, float]:  # fmt: skip
    """Power on a machine, wait for SSH at its inventory address; ("<hostname> <firmware>",
    seconds), the firmware as the booted kernel saw it (uefi or bios)."""
    pxe.space.add_tap(tap)
    qemu = pxe.space.popen(*qemu_argv(pxe.space, tap, mac, tmp_path, uefi),
                           log=tmp_path / "qemu.log")  # fmt: skip
    started = time.monotonic()
    try:
        while time.monotonic() - started < BOOT_TIMEOUT:
            assert qemu.poll() is None, (tmp_path / "qemu.log").read_text()
            answer = ssh(
                pxe,
                address,
                "echo $(hostname) $(test -d /sys/firmware/efi && echo uefi || echo bios)",
            )
            if answer.returncode == 0:
                return answer.stdout.strip(), time.monotonic() - started
            time.sleep(2)
        serial = (tmp_path / "serial.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"no SSH at {address} after {BOOT_TIMEOUT:.0f}s\n{serial}")
    finally:
        qemu.kill()
        qemu.wait()


def test_a_bios_machine_boots_its_profile(pxe: PxeServer, tmp_path: Path) -> None:
    hostname, seconds = boot_to_ssh(pxe, tmp_path, "tapbios", BIOS_MAC, "10.77.0.21", uefi=False)
    assert hostname == "bios1 bios"
    log = pxe.log.read_text()
    assert f"DHCPACK(br0) 10.77.0.21 {BIOS_MAC} bios1" in log
    assert f"boot: machine bios1 (MAC {BIOS_MAC}) from 10.77.0.21" in log
    print(f"BIOS power-on to SSH: {seconds:.1f}s")


def test_a_uefi_machine_boots_through_tftp(pxe: PxeServer, tmp_path: Path) -> None:
    hostname, seconds = boot_to_ssh(pxe, tmp_path, "tapuefi", UEFI_MAC, "10.77.0.22", uefi=True)
    assert hostname == "uefi1 uefi"
    log = pxe.log.read_text()
    assert "snponly.efi to 10.77.0.22" in log  # the firmware's PXE fetched iPXE over TFTP
    assert f"boot: machine uefi1 (MAC {UEFI_MAC}) from 10.77.0.22" in log
    print(f"UEFI power-on to SSH: {seconds:.1f}s")


def test_an_unknown_machine_gets_no_offer(pxe: PxeServer, tmp_path: Path) -> None:
    pxe.space.add_tap("tapnone")
    argv = qemu_argv(pxe.space, "tapnone", UNKNOWN_MAC, tmp_path, uefi=False)
    qemu = pxe.space.popen(*argv, log=tmp_path / "qemu.log")
    try:
        named = f"DHCPDISCOVER(br0) {UNKNOWN_MAC} ignored"
        assert wait_for_text(pxe.log, named, 120, qemu), pxe.log.read_text()[-3000:]
        time.sleep(60)  # and it stays without an address, a script or a kernel
    finally:
        qemu.kill()
        qemu.wait()
    about = [line for line in pxe.log.read_text().splitlines() if UNKNOWN_MAC in line]
    assert about and all("ignored" in line or "RTR-SOLICIT" in line for line in about), about
    serial = tmp_path / "serial.log"
    assert "Linux version" not in (serial.read_text(errors="replace") if serial.exists() else "")
