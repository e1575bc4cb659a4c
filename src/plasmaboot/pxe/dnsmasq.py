"""The dnsmasq configuration of `plasmaboot pxe-server`: DHCP (or proxyDHCP beside the
site's own DHCP server) and TFTP for the machines of the inventory, nothing else.

The chain it sets up: a machine's firmware asks DHCP; a BIOS client gets `undionly.kpxe`
and a UEFI x86-64 client (client architecture 7 or 9) `snponly.efi` over TFTP; that iPXE
asks DHCP again (user class `iPXE`) and gets the URL of `serve`'s `/boot.ipxe`, so it never
loops back to TFTP. In proxyDHCP mode the site's server gives the address and this one the
rest: the firmware's loader through PXE's boot menu protocol (answered on port 4011 too),
iPXE's URL with this server as next server (iPXE drops a proxy answer without one).

Only MACs of the inventory get any answer (`dhcp-host` entries mark them known; everything
else is ignored, and dnsmasq logs it). Every value written here was checked where it
entered (inventory, options); this module only lays them out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from plasmaboot.inventory.model import Machine

BIOS_LOADER = "undionly.kpxe"
UEFI_LOADER = "snponly.efi"
LEASE_TIME = "1h"


@dataclass(frozen=True)
class DnsmasqConfig:
    interface: str
    address: ipaddress.IPv4Interface  # the interface's own address and network
    boot_url: str  # http://ADDR:PORT/boot.ipxe
    tftp_root: str
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None  # None: proxy
    lease_file: str
    hosts_file: str  # the machines' dhcp-host entries (`render_hosts`), re-read on SIGHUP


def render(config: DnsmasqConfig) -> str:
    """The whole configuration file, commented for the operator who reads --print-config."""
    lines = [
        "# plasmaboot pxe-server: generated, do not edit (plasmaboot pxe-server --print-config)",
        "# no DNS: DHCP and TFTP only",
        "port=0",
        f"interface={config.interface}",
        "bind-interfaces",
        "log-dhcp",
        f"dhcp-leasefile={config.lease_file}",
        *range_lines(config),
        "",
        "# only machines of the inventory get an answer; dnsmasq logs the others as ignored",
        "dhcp-ignore=tag:!known",
        f"dhcp-hostsfile={config.hosts_file}",
        "",
        "# firmware: an iPXE loader over TFTP; iPXE itself (user class iPXE): serve's script",
        "enable-tftp",
        f"tftp-root={config.tftp_root}",
        "tftp-max=64",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:ipxe,175",
        # OVMF's PXE sends architecture 7 (BC_EFI), others 9 (X86-64_EFI): both mean x86-64
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        *boot_lines(config),
        "",
    ]
    return "\n".join(lines)


def range_lines(config: DnsmasqConfig) -> list[str]:
    network = config.address.network
    if config.dhcp_range is None:
        return [
            "# proxyDHCP: the site's DHCP server hands out addresses; this one only boot data",
            f"dhcp-range={network.network_address},proxy,{network.netmask}",
        ]
    start, end = config.dhcp_range
    return [
        f"dhcp-range={start},{end},{network.netmask},{LEASE_TIME}",
        # no default route, no DNS server: a provisioning network is isolated
        "dhcp-option=option:router",
        "dhcp-option=option:dns-server",
        # router advertisements with no prefix: iPXE stops waiting for IPv6 at once
        "enable-ra",
        f"dhcp-range=::,constructor:{config.interface},ra-only",
    ]


def render_hosts(machines: list[Machine], proxy: bool) -> str:
    """The dhcp-hostsfile: one line per MAC. It marks the MAC known and, when this server
    hands out addresses, gives its fixed address (if any) and its host name."""
    lines = ["# plasmaboot pxe-server: the inventory's machines, rewritten when it changes"]
    for machine in machines:
        fixed = [machine.address] if machine.address and not proxy else []
        name = [] if proxy else [machine.hostname]
        lines += [",".join([mac, *fixed, *name]) for mac in machine.macs]
    return "\n".join(lines) + "\n"


def boot_lines(config: DnsmasqConfig) -> list[str]:
    server = str(config.address.ip)
    if config.dhcp_range is not None:
        return [
            f"dhcp-boot=tag:!ipxe,tag:!efi64,{BIOS_LOADER},,{server}",
            f"dhcp-boot=tag:!ipxe,tag:efi64,{UEFI_LOADER},,{server}",
            f"dhcp-boot=tag:ipxe,{config.boot_url}",
            "# iPXE: no wait for proxyDHCP offers (it sits ~15 s in 'Configuring' otherwise)",
            "dhcp-option=tag:ipxe,encap:175,176,1b",
        ]
    return [
        "# firmware PXE: one boot menu item per architecture, chosen at once (timeout 0);",
        "# a loader named with its suffix is fetched by that name (no '.0' added)",
        'pxe-prompt=tag:!ipxe,"plasmaboot",0',
        f'pxe-service=tag:!ipxe,x86PC,"plasmaboot (BIOS)",{BIOS_LOADER},{server}',
        f'pxe-service=tag:!ipxe,BC_EFI,"plasmaboot (UEFI)",{UEFI_LOADER},{server}',
        f'pxe-service=tag:!ipxe,X86-64_EFI,"plasmaboot (UEFI)",{UEFI_LOADER},{server}',
        "# iPXE ignores a proxyDHCP answer that lacks a next server: name this one",
        f"dhcp-boot=tag:ipxe,{config.boot_url},,{server}",
    ]
