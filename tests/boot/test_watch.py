"""boot.watch: the boot watcher reads the real server's access log, the serial console and
QEMU's packet capture as they grow."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from plasmaboot.boot.watch import PCAP_MAGIC, PCAP_RECORD, BootWatch, PacketWatch, dhcp_message_type
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.serve.app import ServerThread

# the boot watcher reads the real server's access log


def test_watch_sees_fetches_in_the_servers_access_log(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "bzImage").write_bytes(b"k" * 4096)
    (root / "demo" / "initrd").write_bytes(b"i" * 4096)
    (root / "demo" / "netboot.ipxe").write_text(render_netboot_script("demo", []))
    access = tmp_path / "access.log"
    serial = tmp_path / "serial.log"
    with ServerThread(root, access_log=access) as server:
        watch = BootWatch(serial, access)
        watch.poll()
        assert watch.events == {}
        for name in ("netboot.ipxe", "bzImage", "initrd"):
            with urllib.request.urlopen(f"{server.base_url}/demo/{name}") as response:
                response.read()
        deadline = time.monotonic() + 10
        while "initrd_fetched" not in watch.events and time.monotonic() < deadline:
            watch.poll()
            time.sleep(0.05)
    assert {"script_fetched", "kernel_fetched", "initrd_fetched"} <= set(watch.events)
    assert "kernel_started" not in watch.events
    serial.write_bytes(b"[    0.000000] Linux version 6.1.0 (debian)\n")
    watch.poll()
    assert "kernel_started" in watch.events
    watch.mark("ssh_reachable")
    phases = watch.phases()
    assert set(phases) >= {"pxe_to_kernel", "initrd_download", "kernel_to_ssh"}
    assert all(value >= 0 for value in phases.values())


def test_watch_ignores_failed_requests_and_earlier_boots(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    access.write_text("2026-01-01T00:00:00Z 127.0.0.1 GET /a/bzImage 200 10 0.001s\n")
    watch = BootWatch(tmp_path / "serial.log", access)
    with access.open("a") as handle:
        handle.write("2026-01-01T00:00:01Z 127.0.0.1 GET /a/initrd 404 0 0.001s\n")
        handle.write("2026-01-01T00:00:01Z 127.0.0.1 HEAD /a/netboot.ipxe 200 0 0.001s\n")
        handle.write("2026-01-01T00:00:02Z 127.0.0.1 GET /sets/a-1/initrd 200 10 0.5")
    watch.poll()
    assert watch.events == {}  # the last line is not complete yet
    with access.open("a") as handle:
        handle.write("00s\n")
    watch.poll()
    assert set(watch.events) == {"initrd_fetched"}


# --------------------------------------------------------------------------------------
# the packet capture: the booted system's DHCP lease


def udp_frame(
    src_port: int, dst_port: int, payload: bytes, ethertype: bytes = b"\x08\x00"
) -> bytes:
    ip = bytes([0x45, 0]) + (20 + 8 + len(payload)).to_bytes(2, "big") + bytes(5) + bytes([17])
    ip += bytes(2) + bytes([10, 0, 2, 2]) + bytes([255, 255, 255, 255])
    udp = src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big") + bytes(4)
    return b"\xff" * 6 + b"\x52\x55\x0a\x00\x02\x02" + ethertype + ip + udp + payload


def dhcp_frame(message_type: int, padding: int = 0) -> bytes:
    bootp = bytes([2]) + bytes(235) + bytes([99, 130, 83, 99])
    options = bytes(padding) + bytes([53, 1, message_type, 255])
    return udp_frame(67, 68, bootp + options)


def pcap_record(frame: bytes, snaplen: int = 320) -> bytes:
    captured = frame[:snaplen]
    return PCAP_RECORD.pack(1, 0, len(captured), len(frame)) + captured


PCAP_HEADER = PCAP_MAGIC.to_bytes(4, "little") + bytes(20)


def test_dhcp_message_type_reads_the_servers_replies_only() -> None:
    assert dhcp_message_type(dhcp_frame(5)) == 5
    assert dhcp_message_type(dhcp_frame(2)) == 2  # an offer
    assert dhcp_message_type(dhcp_frame(5, padding=3)) == 5
    client_request = udp_frame(68, 67, dhcp_frame(5)[42:])
    assert dhcp_message_type(client_request) is None
    assert dhcp_message_type(udp_frame(53, 68, bytes(300))) is None
    assert dhcp_message_type(dhcp_frame(5)[:-4]) is None  # cut before option 53
    arp = udp_frame(67, 68, dhcp_frame(5)[42:], ethertype=b"\x08\x06")
    assert dhcp_message_type(arp) is None
    assert dhcp_message_type(b"") is None


def test_packet_watch_counts_acks_as_the_capture_grows(tmp_path: Path) -> None:
    capture = tmp_path / "network.pcap"
    watch = PacketWatch(capture)
    assert watch.new_acks() == 0  # no file yet
    capture.write_bytes(PCAP_HEADER[:10])
    assert watch.new_acks() == 0  # header not complete
    ack = pcap_record(dhcp_frame(5))
    other = pcap_record(udp_frame(1234, 80, b"GET /"))
    capture.write_bytes(PCAP_HEADER + other + ack + ack[:30])
    assert watch.new_acks() == 1
    with capture.open("ab") as handle:
        handle.write(ack[30:] + pcap_record(dhcp_frame(2)))
    assert watch.new_acks() == 1
    assert watch.new_acks() == 0


def test_packet_watch_stops_reading_a_file_that_is_not_a_capture(tmp_path: Path) -> None:
    capture = tmp_path / "network.pcap"
    capture.write_bytes(b"not a pcap file at all, just text\n")
    watch = PacketWatch(capture)
    assert watch.new_acks() == 0
    assert watch.unreadable is not None and "not a little-endian pcap" in watch.unreadable
    capture.write_bytes(PCAP_HEADER + pcap_record(dhcp_frame(5)))
    assert watch.new_acks() == 0  # it does not come back to it


def test_watch_marks_the_network_up_at_the_first_lease_after_the_initrd(
    tmp_path: Path,
) -> None:
    access = tmp_path / "access.log"
    access.touch()
    capture = tmp_path / "network.pcap"
    capture.write_bytes(PCAP_HEADER + pcap_record(dhcp_frame(5)))  # the firmware's lease
    watch = BootWatch(tmp_path / "serial.log", access, capture)
    watch.poll()
    assert "network_up" not in watch.events
    access.write_text("2026-01-01T00:00:02Z 127.0.0.1 GET /a/initrd 200 10 0.5s\n")
    watch.poll()
    assert "network_up" not in watch.events
    with capture.open("ab") as handle:
        handle.write(pcap_record(dhcp_frame(5)))  # the booted system's
    watch.poll()
    assert watch.events["network_up"] >= watch.events["initrd_fetched"]
    watch.mark("ssh_reachable")
    assert watch.phases()["network_to_ssh"] >= 0


# --------------------------------------------------------------------------------------
# under pxe-server: its output is the access log, with dnsmasq's lines among serve's


PXE_SERVER_OUTPUT = """\
dnsmasq-dhcp[812]: 3418 DHCPACK(br0) 10.77.0.2 52:54:00:77:00:02 node1
dnsmasq-tftp[812]: sent /tmp/plasmaboot-pxe-ab12/tftp/snponly.efi to 10.77.0.2
2026-01-01T00:00:03Z 10.77.0.2 GET /boot.ipxe 200 62 0.002s
2026-01-01T00:00:03Z boot: machine node1 (MAC 52:54:00:77:00:02) from 10.77.0.2 gets node1-1a2b
2026-01-01T00:00:03Z 10.77.0.2 GET /boot.ipxe?mac=52:54:00:77:00:02 200 410 0.004s
2026-01-01T00:00:04Z 10.77.0.2 GET /sets/node1-1a2b/bzImage 200 8000000 0.8s
2026-01-01T00:00:05Z 10.77.0.2 GET /sets/node1-1a2b/initrd 200 90000000 1.9s
"""


def test_watch_reads_pxe_servers_output_and_the_firmwares_lease(tmp_path: Path) -> None:
    output = tmp_path / "pxe-server.log"
    output.write_text("dnsmasq-tftp[812]: sent /tmp/x/tftp/undionly.kpxe to 10.77.0.9\n")
    capture = tmp_path / "network.pcap"
    capture.write_bytes(PCAP_HEADER)
    watch = BootWatch(tmp_path / "serial.log", output, capture)  # an earlier boot's line
    watch.poll()
    assert watch.events == {}
    with capture.open("ab") as handle:
        handle.write(pcap_record(dhcp_frame(5)))  # OVMF's PXE got its lease
    watch.poll()
    assert set(watch.events) == {"firmware_lease"}
    with output.open("a") as handle:
        handle.write(PXE_SERVER_OUTPUT)
    watch.poll()
    assert set(watch.events) == {
        "firmware_lease", "loader_fetched", "script_fetched", "kernel_fetched", "initrd_fetched"
    }  # fmt: skip
    assert "network_up" not in watch.events  # the firmware's lease came before the initrd
    phases = watch.phases()
    assert {"power_on_to_lease", "lease_to_script", "pxe_to_kernel", "initrd_download"} <= set(
        phases
    )


def test_a_lease_read_with_the_script_came_before_it(tmp_path: Path) -> None:
    output = tmp_path / "pxe-server.log"
    output.touch()
    capture = tmp_path / "network.pcap"
    capture.write_bytes(PCAP_HEADER)
    watch = BootWatch(tmp_path / "serial.log", output, capture)
    with capture.open("ab") as handle:
        handle.write(pcap_record(dhcp_frame(5)))
    output.write_text("2026-01-01T00:00:03Z 10.77.0.2 GET /boot.ipxe 200 62 0.002s\n")
    watch.poll()  # both in one poll: iPXE asked DHCP, then fetched at once
    assert 0 <= watch.phases()["lease_to_script"] < 0.1
