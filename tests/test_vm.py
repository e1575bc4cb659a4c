"""QEMU pieces of boot-test: the accelerator probe, the command line, the TFTP boot script,
the boot watcher, process cleanup, and (slow) a real PXE boot TFTP -> iPXE -> HTTP."""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from plasmaboot.boot.qemu import (
    BOOTFILE,
    FIRMWARE_BOOT_PHASE,
    FIRMWARE_DEBUG_PORT,
    PCAP_MAGIC,
    PCAP_RECORD,
    QEMU,
    Accelerator,
    BootWatch,
    Nic,
    PacketWatch,
    PxeVm,
    VmConfig,
    boot_script,
    cpu_models,
    cpu_needs_kvm,
    dhcp_message_type,
    free_port,
    kvm_usable,
    probe_accelerator,
    qemu_command,
    require_cpu_model,
    require_rom,
    start_qemu,
    wait_for_file_text,
)
from plasmaboot.errors import UserError
from plasmaboot.formats.cpio import Compression, Entry, write_segment
from plasmaboot.serve.app import ServerThread

from conftest import CiImage

MARKER = "PLASMABOOT-TEST-MARKER: stage-1 reached"


def qemu_processes_mentioning(text: str) -> list[int]:
    """PIDs of live QEMU processes whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if QEMU in cmdline and text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def config(tmp_path: Path, **changes: object) -> VmConfig:
    values: dict[str, object] = {
        "workdir": tmp_path / "vm",
        "label": "worker",
        "http_port": 8123,
        "ssh_port": free_port(),
        "accelerator": Accelerator.TCG,
    }
    values.update(changes)
    return VmConfig(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# accelerator probe


def firmware_argv(log: Path, accel: str, *extra: str) -> list[str]:
    return [
        QEMU, "-accel", accel, "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none",
        "-chardev", f"file,id=fw,path={log}",
        "-device", f"isa-debugcon,iobase={FIRMWARE_DEBUG_PORT},chardev=fw", *extra,
    ]  # fmt: skip


def test_firmware_marker_is_seen_when_the_guest_runs(tmp_path: Path) -> None:
    log = tmp_path / "fw.log"
    proc = start_qemu(firmware_argv(log, "tcg"), tmp_path / "qemu.log")
    try:
        assert wait_for_file_text(log, FIRMWARE_BOOT_PHASE, proc, timeout=60)
    finally:
        proc.stop()
    assert proc.returncode is not None


def test_firmware_marker_is_not_seen_when_the_guest_never_runs(tmp_path: Path) -> None:
    # -S: the CPU never starts, like a KVM that hangs; the wait gives up instead of hanging.
    log = tmp_path / "fw.log"
    proc = start_qemu(firmware_argv(log, "tcg", "-S"), tmp_path / "qemu.log")
    try:
        assert not wait_for_file_text(log, FIRMWARE_BOOT_PHASE, proc, timeout=2)
        assert proc.poll() is None
    finally:
        proc.stop()
    assert not qemu_processes_mentioning(str(log))


def test_probe_picks_an_accelerator_that_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = probe_accelerator(tmp_path, timeout=3)
    if kvm_usable() is not None:
        assert result.accelerator is Accelerator.TCG
        assert "KVM not available" in result.reason
    elif result.accelerator is Accelerator.TCG:
        # /dev/kvm opened but did not run the firmware (this machine): the reason says so
        assert result.reason.startswith("KVM failed")
    else:
        assert (tmp_path / "kvm-probe-firmware.log").read_bytes().count(FIRMWARE_BOOT_PHASE)
    assert not qemu_processes_mentioning(str(tmp_path))


# --------------------------------------------------------------------------------------
# command line and boot script


def test_cpu_model_defaults_per_accelerator_and_can_be_chosen(tmp_path: Path) -> None:
    def cpu_of(cfg: VmConfig) -> str:
        argv = qemu_command(cfg)
        return argv[argv.index("-cpu") + 1]

    assert cpu_of(config(tmp_path, accelerator=Accelerator.KVM)) == "host"
    assert cpu_of(config(tmp_path)) == "qemu64"
    assert cpu_of(config(tmp_path, cpu="max")) == "max"


def test_cpu_models_are_read_from_qemu() -> None:
    models = cpu_models()
    assert {"qemu64", "max", "host"} <= models
    require_cpu_model("Skylake-Server,-avx512f")  # features after the name are QEMU's to check
    with pytest.raises(UserError, match=r"--cpu pentium9: 'pentium9' is not a CPU model"):
        require_cpu_model("pentium9")


def test_only_the_host_cpu_model_needs_kvm() -> None:
    assert cpu_needs_kvm("host") and cpu_needs_kvm("host,-svm")
    assert not cpu_needs_kvm(None) and not cpu_needs_kvm("max") and not cpu_needs_kvm("hostile")


def test_qemu_command_pxe_boots_headless_with_ssh_forwarded(tmp_path: Path) -> None:
    cfg = config(tmp_path, memory_mib=1536, ssh_port=2222)
    argv = qemu_command(cfg)
    assert argv[0] == QEMU
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-cpu") + 1] == "qemu64"
    assert argv[argv.index("-m") + 1] == "1536"
    assert argv[argv.index("-serial") + 1] == f"file:{cfg.serial_log}"
    assert argv[argv.index("-boot") + 1] == "order=n"
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert argv[argv.index("-display") + 1] == "none"
    netdev = argv[argv.index("-netdev") + 1].split(",")
    assert netdev[0] == "user"
    assert f"tftp={cfg.tftp_dir}" in netdev
    assert f"bootfile={BOOTFILE}" in netdev
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    assert "virtio-net-pci,netdev=n0" in argv
    assert not any("romfile=" in a for a in argv)
    assert "accel" not in pairs.get("-machine", "")


def test_qemu_command_kvm_and_e1000(tmp_path: Path) -> None:
    argv = qemu_command(config(tmp_path, accelerator=Accelerator.KVM, nic=Nic.E1000))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "e1000,netdev=n0" in argv


def test_nic_roms_are_installed() -> None:
    for nic in Nic:
        assert require_rom(nic).name == nic.rom()


def test_boot_script_chains_to_the_label_over_http() -> None:
    assert boot_script(8123, "control-plane") == (
        "#!ipxe\nisset ${ip} || dhcp\nchain http://10.0.2.2:8123/control-plane/netboot.ipxe\n"
    )


# --------------------------------------------------------------------------------------
# the boot watcher reads the real server's access log


def test_watch_sees_fetches_in_the_servers_access_log(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "bzImage").write_bytes(b"k" * 4096)
    (root / "demo" / "initrd").write_bytes(b"i" * 4096)
    (root / "demo" / "netboot.ipxe").write_text(
        "#!ipxe\nkernel ${boot-server}/demo/bzImage initrd=initrd\n"
        "initrd --name initrd ${boot-server}/demo/initrd\nboot\n"
    )
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
# QEMU never outlives its owner


def test_vm_is_stopped_when_the_block_raises(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), PxeVm(cfg) as vm:
        assert vm.running()
        assert (cfg.tftp_dir / BOOTFILE).read_text() == boot_script(8123, "worker")
        raise RuntimeError("boom")
    assert vm.proc is not None and vm.proc.returncode is not None
    assert not qemu_processes_mentioning(str(cfg.workdir))


def test_vm_dies_with_a_killed_parent(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    script = (
        "import sys, time, pickle\n"
        "from plasmaboot.boot.qemu import PxeVm\n"
        "vm = PxeVm(pickle.loads(sys.stdin.buffer.read()))\n"
        "vm.start()\n"
        "print(vm.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert parent.stdin is not None and parent.stdout is not None
    parent.stdin.write(pickle.dumps(cfg))
    parent.stdin.close()
    qemu_pid = int(parent.stdout.readline())
    assert qemu_processes_mentioning(str(cfg.workdir)) == [qemu_pid]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while qemu_processes_mentioning(str(cfg.workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not qemu_processes_mentioning(str(cfg.workdir))


def test_wait_until_fails_with_the_serial_tail_when_the_guest_stops(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with PxeVm(cfg) as vm:
        cfg.serial_log.write_text("line one\nKernel panic - not syncing: test\n")
        assert vm.proc is not None
        vm.proc.proc.terminate()
        vm.proc.wait()
        with pytest.raises(Exception, match="the guest stopped") as caught:
            vm.wait_until(lambda: False, timeout=30, what="SSH to answer")
    assert "Kernel panic - not syncing: test" in str(caught.value)


def test_wait_until_times_out_with_a_clear_message(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with PxeVm(cfg) as vm, pytest.raises(Exception, match="timed out after 1s waiting for SSH"):
        vm.wait_until(lambda: False, timeout=1, what="SSH")


# --------------------------------------------------------------------------------------
# slow: a real PXE boot of a kernel and a busybox initrd


@pytest.fixture
def test_kernel(request: pytest.FixtureRequest) -> Path:
    """A bootable x86-64 bzImage: $PLASMABOOT_TEST_KERNEL, or the session's CI image's."""
    value = os.environ.get("PLASMABOOT_TEST_KERNEL")
    if not value:
        image: CiImage = request.getfixturevalue("ci_image")
        return image.set_dir / "bzImage"
    path = Path(value)
    if not path.is_file():
        pytest.skip(f"PLASMABOOT_TEST_KERNEL={value} is not a file")
    return path


def marker_image(root: Path, label: str, kernel: Path) -> None:
    """An artifact set whose /init prints MARKER on the serial console and powers off."""
    directory = root / label
    directory.mkdir(parents=True)
    (directory / "bzImage").write_bytes(kernel.read_bytes())
    init = f"#!/bin/busybox sh\n/bin/busybox echo '{MARKER}'\n/bin/busybox poweroff -f\n"
    entries = [
        Entry("init", stat.S_IFREG | 0o755, data=init.encode()),
        Entry("bin/busybox", stat.S_IFREG | 0o755, source=Path("/bin/busybox")),
    ]
    write_segment(entries, directory / "initrd", Compression.GZIP)
    (directory / "netboot.ipxe").write_text(
        "#!ipxe\n"
        f"kernel ${{boot-server}}/{label}/bzImage initrd=initrd console=ttyS0,115200 panic=-1\n"
        f"initrd --name initrd ${{boot-server}}/{label}/initrd\n"
        "boot\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize("nic", list(Nic))
def test_pxe_boot_reaches_the_initrd_over_tftp_ipxe_and_http(
    tmp_path: Path, test_kernel: Path, nic: Nic
) -> None:
    root = tmp_path / "artifacts"
    marker_image(root, "marker", test_kernel)
    access = tmp_path / "access.log"
    with ServerThread(root, access_log=access) as server:
        cfg = config(
            tmp_path,
            label="marker",
            http_port=server.port,
            # the chain is under test here, not the accelerator: TCG runs everywhere, while
            # KVM on these machines can pass the probe and still abort later in the firmware
            accelerator=Accelerator.TCG,
            memory_mib=512,
            nic=nic,
        )
        with PxeVm(cfg, access_log=access) as vm:
            vm.wait_until(lambda: MARKER in vm.serial_text(), 240, "the marker")
            assert vm.proc is not None
            # /init powers off and -no-reboot makes QEMU exit by itself
            assert vm.proc.wait(timeout=60) == 0
    requests = access.read_text().splitlines()
    fetched = [line.split()[3] for line in requests if line.split()[4] == "200"]
    assert fetched[0] == "/marker/netboot.ipxe"
    assert any(path.endswith("/bzImage") for path in fetched)
    assert any(path.endswith("/initrd") for path in fetched)
    assert {"script_fetched", "kernel_fetched", "initrd_fetched", "kernel_started"} <= set(
        vm.watch.events
    )
    assert (cfg.tftp_dir / BOOTFILE).read_text().endswith(f":{server.port}/marker/netboot.ipxe\n")
