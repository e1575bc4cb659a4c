"""A PXE client in a few lines, for tests: what a machine's firmware (or iPXE) is told to boot.

Run inside a namespace (it needs an address on the network it asks):

    python pxeclient.py MAC ARCH [--ipxe] [--interface eth0] [--wait SECONDS]

It broadcasts a DHCPDISCOVER as a PXE ROM does (vendor class PXEClient, client architecture
ARCH: 0 BIOS, 7 or 9 UEFI x86-64; with --ipxe also iPXE's user class and option 175), takes
the proxyDHCP offer (vendor class PXEClient, no address), then asks that server on port 4011
for the boot file, choosing the first boot menu item when the offer carries a menu, as the
PXE specification's boot server discovery does. It prints one JSON object:

    {"offer": {"server": "10.77.0.1", "file": "", "siaddr": "0.0.0.0", "menu": [[32768, "..."]]},
     "ack": {"server": "10.77.0.1", "file": "undionly.kpxe", "siaddr": "10.77.0.1", "menu": []}}

with null for an answer that never came.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import time

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5
CLIENT_PORT, SERVER_PORT, PROXY_PORT = 68, 67, 4011
OPTION_MESSAGE, OPTION_SERVER_ID, OPTION_VENDOR, OPTION_VENDOR_CLASS = 53, 54, 43, 60
PXE_MENU, PXE_BOOT_ITEM = 9, 71


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mac")
    parser.add_argument("arch", type=int)
    parser.add_argument("--ipxe", action="store_true")
    parser.add_argument("--interface", default="eth0")
    parser.add_argument("--wait", type=float, default=3.0)
    args = parser.parse_args()
    mac = bytes.fromhex(args.mac.replace(":", ""))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # the limited broadcast leaves through this interface (a PXE ROM has no routes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.interface.encode())
        sock.bind(("0.0.0.0", CLIENT_PORT))
        xid = int.from_bytes(os.urandom(4), "big")
        discover = packet(xid, mac, DISCOVER, client_options(args.arch, args.ipxe))
        sock.sendto(discover, ("255.255.255.255", SERVER_PORT))
        offer = receive(sock, xid, OFFER, args.wait, proxy_only=True)
        ack = None
        if offer is not None:
            extra = client_options(args.arch, args.ipxe)
            if offer["menu"]:  # boot server discovery: the first (only) item, layer 0
                item = struct.pack("!HH", offer["menu"][0][0], 0)
                extra.append((OPTION_VENDOR, bytes([PXE_BOOT_ITEM, len(item)]) + item + b"\xff"))
            request = packet(xid, mac, REQUEST, extra, ciaddr=own_address(offer["server"]))
            sock.sendto(request, (offer["server"], PROXY_PORT))
            ack = receive(sock, xid, ACK, args.wait, proxy_only=False)
    print(json.dumps({"offer": offer, "ack": ack}))


def client_options(arch: int, ipxe: bool) -> list[tuple[int, bytes]]:
    options = [
        (OPTION_VENDOR_CLASS, f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()),
        (93, struct.pack("!H", arch)),  # client system architecture
        (94, bytes([1, 2, 1])),  # network interface identifier: UNDI 2.1
        (97, b"\x00" + bytes(16)),  # client machine identifier (UUID)
        (55, bytes([1, 3, 43, 54, 60, 66, 67, 175])),
    ]
    if ipxe:
        options += [(77, b"iPXE"), (175, bytes([0x13, 1, 1]))]  # user class; iPXE's encap
    return options


def packet(
    xid: int, mac: bytes, kind: int, options: list[tuple[int, bytes]], ciaddr: str = "0.0.0.0"
) -> bytes:
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 0, xid, 0, 0x8000,
        ipaddress.IPv4Address(ciaddr).packed, bytes(4), bytes(4), bytes(4),
        mac.ljust(16, b"\0"), b"", b"",
    )  # fmt: skip
    body = b"".join(bytes([code, len(value)]) + value for code, value in options)
    return header + MAGIC + bytes([OPTION_MESSAGE, 1, kind]) + body + b"\xff"


def receive(
    sock: socket.socket, xid: int, kind: int, wait: float, proxy_only: bool
) -> dict[str, object] | None:
    """The first reply of `kind` to `xid` (a proxyDHCP one, with no address, if asked)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(4096)
        except TimeoutError:
            return None
        reply = parse(data)
        if reply is None or reply["xid"] != xid or reply["kind"] != kind:
            continue
        if proxy_only and (reply["yiaddr"] != "0.0.0.0" or reply["vendor_class"] != "PXEClient"):
            continue  # the site's own DHCP offer, with an address and no PXE
        return {key: reply[key] for key in ("server", "file", "siaddr", "menu")}
    return None


def parse(data: bytes) -> dict[str, object] | None:
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    options = read_options(data[240:])
    vendor = read_options(options.get(OPTION_VENDOR, b""))
    return {
        "xid": struct.unpack("!I", data[4:8])[0],
        "kind": options.get(OPTION_MESSAGE, b"\0")[0],
        "yiaddr": str(ipaddress.IPv4Address(data[16:20])),
        "siaddr": str(ipaddress.IPv4Address(data[20:24])),
        "file": data[108:236].split(b"\0")[0].decode(),
        "server": str(ipaddress.IPv4Address(options.get(OPTION_SERVER_ID, bytes(4)))),
        "vendor_class": options.get(OPTION_VENDOR_CLASS, b"").decode(errors="replace"),
        "menu": read_menu(vendor.get(PXE_MENU, b"")),
    }


def read_options(data: bytes) -> dict[int, bytes]:
    options, at = {}, 0
    while at < len(data) and data[at] != 255:
        if data[at] == 0:
            at += 1
            continue
        code, size = data[at], data[at + 1]
        options[code] = data[at + 2 : at + 2 + size]
        at += 2 + size
    return options


def read_menu(data: bytes) -> list[tuple[int, str]]:
    """PXE boot menu items: (boot server type, description)."""
    items, at = [], 0
    while at + 3 <= len(data):
        kind, size = struct.unpack("!HB", data[at : at + 3])
        items.append((kind, data[at + 3 : at + 3 + size].decode(errors="replace")))
        at += 3 + size
    return items


def own_address(server: str) -> str:
    """This host's address toward the server (the PXE client's address by then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((server, PROXY_PORT))
        return str(probe.getsockname()[0])


if __name__ == "__main__":
    main()
