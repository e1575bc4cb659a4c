"""proxyDHCP for real: `plasmaboot pxe-server --proxy-dhcp` beside the site's own DHCP server
(a second dnsmasq on another host of the same bridge, handing out addresses only). A known
BIOS machine (QEMU's iPXE ROM) and a known UEFI machine (OVMF's own PXE, which fetches
snponly.efi from the proxy over TFTP) boot the CI image to SSH; an unknown machine gets its
address from the site's server and nothing from the proxy."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import (
    NEIGHBOUR_IF,
    PXE_FILES,
    PXE_TOOLS,
    Netns,
    boot_to_ssh,
    neighbour,
    netns,
    qemu_argv,
    require,
    wait_for_text,
)

from conftest import CiImage

pytestmark = [pytest.mark.slow, pytest.mark.extended]

SITE_ADDRESS = "10.77.0.2"  # the site's DHCP server, another host on the bridge
SITE_RANGE = "10.77.0.100,10.77.0.150"
BIOS_MAC, UEFI_MAC, UNKNOWN_MAC = "52:54:00:78:00:01", "52:54:00:78:00:02", "52:54:00:78:00:99"
BIOS_ADDRESS, UEFI_ADDRESS = "10.77.0.31", "10.77.0.32"


@dataclass
class ProxySetup:
    space: Netns  # the provisioning server's namespace: br0, pxe-server, the guests' taps
    log: Path  # pxe-server's output (dnsmasq's proxy and TFTP lines, serve's boot lines)
    site_log: Path  # the site's DHCP server
    identity: Path


def site_dhcp_config(state: Path) -> str:
    """The site's own DHCP server: addresses (fixed ones for the two known machines), no
    boot options, no router advertisements: it knows nothing of PXE."""
    return "\n".join(
        [
            "port=0",
            f"interface={NEIGHBOUR_IF}",
            "bind-interfaces",
            "log-dhcp",
            f"dhcp-leasefile={state / 'site.leases'}",
            f"dhcp-range={SITE_RANGE},255.255.255.0,1h",
            f"dhcp-host={BIOS_MAC},{BIOS_ADDRESS}",
            f"dhcp-host={UEFI_MAC},{UEFI_ADDRESS}",
            "",
        ]
    )


@pytest.fixture(scope="module")
def proxy(ci_image: CiImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxySetup]:
    require(*PXE_TOOLS, files=PXE_FILES)
    base = tmp_path_factory.mktemp("pxe-proxy")
    base.chmod(0o755)  # dnsmasq drops root, then writes its lease file here
    inventory = base / "machines.toml"
    inventory.write_text(
        f'[defaults]\nprofile = "{ci_image.label}"\n\n'
        f'[machines.bios1]\nmac = "{BIOS_MAC}"\nipv4 = "{BIOS_ADDRESS}/24"\n\n'
        f'[machines.uefi1]\nmac = "{UEFI_MAC}"\nipv4 = "{UEFI_ADDRESS}/24"\n'
    )
    (base / "site.conf").write_text(site_dhcp_config(base))
    log, site_log = base / "pxe.log", base / "site.log"
    with netns("proxy") as space, neighbour(space, "site", SITE_ADDRESS) as site:
        site_dhcp = site.popen(
            "dnsmasq", "--keep-in-foreground", f"--conf-file={base / 'site.conf'}",
            "--log-facility=-", "--pid-file=", log=site_log,
        )  # fmt: skip
        assert wait_for_text(site_log, "DHCP, IP range", 30, site_dhcp), site_log.read_text()
        server = space.popen(
            sys.executable, "-m", "plasmaboot", "--profiles-dir", str(ci_image.profiles_dir),
            "pxe-server", "--interface", "br0", "--root", str(ci_image.artifacts),
            "--inventory", str(inventory), "--proxy-dhcp",
            log=log,
        )  # fmt: skip
        assert wait_for_text(log, "pxe-server on br0", 60, server), log.read_text()
        try:
            yield ProxySetup(space, log, site_log, ci_image.identity)
        finally:
            server.terminate()
            server.wait(timeout=30)
            site_dhcp.terminate()
            site_dhcp.wait(timeout=30)


def test_a_bios_machine_boots_through_the_proxy(proxy: ProxySetup, tmp_path: Path) -> None:
    hostname, seconds = boot_to_ssh(
        proxy.space, proxy.identity, tmp_path, "tapbios", BIOS_MAC, BIOS_ADDRESS, uefi=False
    )
    assert hostname == "bios1 bios"
    assert f"DHCPACK({NEIGHBOUR_IF}) {BIOS_ADDRESS} {BIOS_MAC}" in proxy.site_log.read_text()
    log = proxy.log.read_text()
    assert f"PXE(br0) {BIOS_MAC} proxy" in log  # boot data came from the proxy
    assert f"boot: machine bios1 (MAC {BIOS_MAC}) from {BIOS_ADDRESS}" in log
    print(f"proxyDHCP BIOS power-on to SSH: {seconds:.1f}s")


def test_a_uefi_machine_boots_through_the_proxy(proxy: ProxySetup, tmp_path: Path) -> None:
    hostname, seconds = boot_to_ssh(
        proxy.space, proxy.identity, tmp_path, "tapuefi", UEFI_MAC, UEFI_ADDRESS, uefi=True
    )
    assert hostname == "uefi1 uefi"
    assert f"DHCPACK({NEIGHBOUR_IF}) {UEFI_ADDRESS} {UEFI_MAC}" in proxy.site_log.read_text()
    log = proxy.log.read_text()
    assert f"PXE(br0) {UEFI_MAC} proxy" in log
    assert f"snponly.efi to {UEFI_ADDRESS}" in log  # OVMF's PXE fetched iPXE from the proxy
    assert f"boot: machine uefi1 (MAC {UEFI_MAC}) from {UEFI_ADDRESS}" in log
    print(f"proxyDHCP UEFI power-on to SSH: {seconds:.1f}s")


def test_an_unknown_machine_gets_no_boot_data(proxy: ProxySetup, tmp_path: Path) -> None:
    proxy.space.add_tap("tapnone")
    qemu = proxy.space.popen(
        *qemu_argv("tapnone", UNKNOWN_MAC, tmp_path, uefi=False), log=tmp_path / "qemu.log"
    )
    try:
        # the site's server gives it an address (that is its job) ...
        acked = rf"DHCPACK\({NEIGHBOUR_IF}\) (\S+) {UNKNOWN_MAC}"
        found = wait_for_pattern(proxy.site_log, acked, 120, qemu)
        assert found, proxy.site_log.read_text()[-3000:]
        time.sleep(60)  # ... and in a minute it gets no loader, no script and no kernel
    finally:
        qemu.kill()
        qemu.wait()
    address = found.group(1)
    log = proxy.log.read_text()
    about = [line for line in log.splitlines() if UNKNOWN_MAC in line]
    assert about and all("proxy-ignored" in line for line in about), about
    assert f"to {address}" not in log  # no TFTP transfer
    assert f"{address} GET" not in log and f"from {address}" not in log  # no HTTP request
    serial = tmp_path / "serial.log"
    assert "Linux version" not in (serial.read_text(errors="replace") if serial.exists() else "")


def wait_for_pattern(
    path: Path, pattern: str, timeout: float, proc: subprocess.Popen[bytes]
) -> re.Match[str] | None:
    """The first match of `pattern` in the file; None on timeout or once `proc` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if found := re.search(pattern, path.read_text(errors="replace")):
            return found
        time.sleep(1)
    return re.search(pattern, path.read_text(errors="replace"))
