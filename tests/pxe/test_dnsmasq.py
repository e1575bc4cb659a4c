"""pxe.dnsmasq: the configuration dnsmasq runs with, checked by dnsmasq itself."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from plasmaboot.inventory.model import Machine
from plasmaboot.pxe.dnsmasq import DnsmasqConfig, render, render_hosts

ADDRESS = ipaddress.IPv4Interface("10.77.0.1/24")


def machine(name: str, *macs: str, ipv4: str | None = None) -> Machine:
    return Machine(
        name=name, macs=macs, profile="worker", variant=None, hostname=name, ipv4=ipv4,
        kernel_params=(), ssh_keys=(), labels={},
    )  # fmt: skip


def config(tmp_path: Path, proxy: bool = False) -> DnsmasqConfig:
    start, end = ipaddress.IPv4Address("10.77.0.100"), ipaddress.IPv4Address("10.77.0.150")
    return DnsmasqConfig(
        interface="br0",
        address=ADDRESS,
        boot_url="http://10.77.0.1:8080/boot.ipxe",
        tftp_root=str(tmp_path / "tftp"),
        dhcp_range=None if proxy else (start, end),
        lease_file=str(tmp_path / "leases"),
        hosts_file=str(tmp_path / "hosts"),
    )


def test_dhcp_mode(tmp_path: Path) -> None:
    lines = render(config(tmp_path)).splitlines()
    assert "port=0" in lines and "interface=br0" in lines and "bind-interfaces" in lines
    assert "dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h" in lines
    assert "dhcp-ignore=tag:!known" in lines
    assert f"dhcp-hostsfile={tmp_path / 'hosts'}" in lines
    assert "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,10.77.0.1" in lines
    assert "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi,,10.77.0.1" in lines
    assert "dhcp-boot=tag:ipxe,http://10.77.0.1:8080/boot.ipxe" in lines
    assert "dhcp-match=set:efi64,option:client-arch,7" in lines
    assert "dhcp-match=set:efi64,option:client-arch,9" in lines
    assert "dhcp-option=tag:ipxe,encap:175,176,1b" in lines
    assert "enable-ra" in lines


def test_proxy_mode(tmp_path: Path) -> None:
    lines = render(config(tmp_path, proxy=True)).splitlines()
    assert "dhcp-range=10.77.0.0,proxy,255.255.255.0" in lines
    assert not any(line.startswith("dhcp-range=10.77.0.100") for line in lines)
    # firmware PXE: one menu item per architecture, booted at once; the loader by its full
    # name (a name with a dot gets no ".0" layer suffix), from this server's TFTP
    assert 'pxe-prompt=tag:!ipxe,"plasmaboot",0' in lines
    assert 'pxe-service=tag:!ipxe,x86PC,"plasmaboot (BIOS)",undionly.kpxe,10.77.0.1' in lines
    assert 'pxe-service=tag:!ipxe,BC_EFI,"plasmaboot (UEFI)",snponly.efi,10.77.0.1' in lines
    assert 'pxe-service=tag:!ipxe,X86-64_EFI,"plasmaboot (UEFI)",snponly.efi,10.77.0.1' in lines
    # iPXE ignores a proxy answer without a next server: the URL comes with one
    assert "dhcp-boot=tag:ipxe,http://10.77.0.1:8080/boot.ipxe,,10.77.0.1" in lines
    assert "dhcp-ignore=tag:!known" in lines
    # the site's network is not ours to advertise on, and iPXE must wait for our offer
    assert "enable-ra" not in lines
    assert "dhcp-option=tag:ipxe,encap:175,176,1b" not in lines


def test_hosts_file() -> None:
    machines = [
        machine("cp1", "52:54:00:12:34:01", ipv4="10.77.0.11/24"),
        machine("w1", "52:54:00:12:34:02", "52:54:00:12:34:03"),
    ]
    assert render_hosts(machines, proxy=False).splitlines()[1:] == [
        "52:54:00:12:34:01,10.77.0.11,cp1",
        "52:54:00:12:34:02,w1",
        "52:54:00:12:34:03,w1",
    ]
    # proxyDHCP hands out no addresses: the MACs only mark machines known
    assert render_hosts(machines, proxy=True).splitlines()[1:] == [
        "52:54:00:12:34:01",
        "52:54:00:12:34:02",
        "52:54:00:12:34:03",
    ]


@pytest.mark.parametrize("proxy", [False, True])
def test_dnsmasq_accepts_the_configuration(tmp_path: Path, proxy: bool) -> None:
    """dnsmasq's own syntax check (--test) of what we generate."""
    (tmp_path / "tftp").mkdir()
    (tmp_path / "hosts").write_text(render_hosts([machine("a", "52:54:00:00:00:01")], proxy))
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(render(config(tmp_path, proxy)))
    proc = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "syntax check OK" in proc.stderr
