"""Real PXE through `plasmaboot pxe-server` (dnsmasq's DHCP and TFTP, serve's HTTP) in a
network namespace the test makes: BIOS and UEFI machines of the inventory boot the CI image
and answer SSH under their inventory host name; an unknown machine gets nothing."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import (
    PXE_FILES,
    PXE_TOOLS,
    Netns,
    boot_to_ssh,
    netns,
    qemu_argv,
    require,
    wait_for_text,
)

from conftest import CiImage

pytestmark = pytest.mark.slow

BIOS_MAC, UEFI_MAC, UNKNOWN_MAC = "52:54:00:77:00:01", "52:54:00:77:00:02", "52:54:00:77:00:99"


@dataclass
class PxeServer:
    space: Netns
    log: Path
    identity: Path


@pytest.fixture(scope="module")
def pxe(ci_image: CiImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PxeServer]:
    require(*PXE_TOOLS, files=PXE_FILES)
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


def test_a_bios_machine_boots_its_profile(pxe: PxeServer, tmp_path: Path) -> None:
    hostname, seconds = boot_to_ssh(
        pxe.space, pxe.identity, tmp_path, "tapbios", BIOS_MAC, "10.77.0.21", uefi=False
    )
    assert hostname == "bios1 bios"
    log = pxe.log.read_text()
    assert f"DHCPACK(br0) 10.77.0.21 {BIOS_MAC} bios1" in log
    assert f"boot: machine bios1 (MAC {BIOS_MAC}) from 10.77.0.21" in log
    print(f"BIOS power-on to SSH: {seconds:.1f}s")


def test_a_uefi_machine_boots_through_tftp(pxe: PxeServer, tmp_path: Path) -> None:
    hostname, seconds = boot_to_ssh(
        pxe.space, pxe.identity, tmp_path, "tapuefi", UEFI_MAC, "10.77.0.22", uefi=True
    )
    assert hostname == "uefi1 uefi"
    log = pxe.log.read_text()
    assert "snponly.efi to 10.77.0.22" in log  # the firmware's PXE fetched iPXE over TFTP
    assert f"boot: machine uefi1 (MAC {UEFI_MAC}) from 10.77.0.22" in log
    print(f"UEFI power-on to SSH: {seconds:.1f}s")


def test_an_unknown_machine_gets_no_offer(pxe: PxeServer, tmp_path: Path) -> None:
    pxe.space.add_tap("tapnone")
    argv = qemu_argv("tapnone", UNKNOWN_MAC, tmp_path, uefi=False)
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
