"""boot.qemu: the accelerator probe, the CPU models, the command line (user network or a
tap, SeaBIOS or OVMF), the TFTP boot script, process cleanup, and (slow) a real PXE boot
TFTP -> iPXE -> HTTP."""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasmaboot.boot import qemu as qemu_module
from plasmaboot.boot.netns import Netns
from plasmaboot.boot.qemu import (
    BOOTFILE,
    DEFAULT_MEMORY_MIB,
    FIRMWARE_BOOT_PHASE,
    FIRMWARE_DEBUG_PORT,
    OVMF_CODE,
    OVMF_VARS,
    QEMU,
    Accelerator,
    Firmware,
    Nic,
    PxeVm,
    TapNetwork,
    UserNetwork,
    VmConfig,
    boot_script,
    cpu_models,
    cpu_needs_kvm,
    free_port,
    guest_panic,
    kvm_usable,
    probe_accelerator,
    qemu_command,
    require_cpu_model,
    require_ovmf,
    require_rom,
    start_qemu,
    wait_for_file_text,
)
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats.cpio import Compression, Entry, write_segment
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.serve.app import ServerThread

from conftest import CiImage, live_processes

MARKER = "PLASMABOOT-TEST-MARKER: stage-1 reached"


def config(
    tmp_path: Path, http_port: int = 8123, ssh_port: int | None = None, **changes: object
) -> VmConfig:
    values: dict[str, object] = {
        "workdir": tmp_path / "vm",
        "label": "worker",
        "network": UserNetwork(http_port, ssh_port or free_port()),
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
    assert not live_processes(QEMU, str(log))


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
    assert not live_processes(QEMU, str(tmp_path))


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


def test_the_default_memory_is_one_constant(tmp_path: Path) -> None:
    argv = qemu_command(config(tmp_path))
    assert argv[argv.index("-m") + 1] == str(DEFAULT_MEMORY_MIB) == "2048"


# QEMU never outlives its owner


def test_vm_is_stopped_when_the_block_raises(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), PxeVm(cfg) as vm:
        assert vm.running()
        assert (cfg.tftp_dir / BOOTFILE).read_text() == boot_script(8123, "worker")
        raise RuntimeError("boom")
    assert vm.proc is not None and vm.proc.returncode is not None
    assert not live_processes(QEMU, str(cfg.workdir))


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
    assert list(live_processes(QEMU, str(cfg.workdir))) == [qemu_pid]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while live_processes(QEMU, str(cfg.workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_processes(QEMU, str(cfg.workdir))


def test_wait_until_fails_with_the_serial_tail_when_the_guest_stops(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with PxeVm(cfg) as vm:
        cfg.serial_log.write_text("line one\nKernel panic - not syncing: test\n")
        assert vm.proc is not None
        vm.proc.stop()  # as a guest that powers off or panics under -no-reboot ends QEMU
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
    params = ["console=ttyS0,115200", "panic=-1"]
    (directory / "netboot.ipxe").write_text(render_netboot_script(label, params))


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


# --------------------------------------------------------------------------------------
# the pxe-server path: a tap in boot-test's namespace, SeaBIOS or OVMF


def test_a_tap_nic_has_the_inventorys_mac_and_no_user_network(tmp_path: Path) -> None:
    cfg = config(tmp_path, network=TapNetwork("tap0", "52:54:00:77:00:02"))
    argv = qemu_command(cfg)
    assert argv[argv.index("-netdev") + 1] == (
        "tap,id=n0,ifname=tap0,script=no,downscript=no,vnet_hdr=off"
    )
    assert argv[argv.index("-device", argv.index("-netdev")) + 1] == (
        "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:02"
    )
    assert not any("hostfwd" in a or "tftp=" in a for a in argv)
    assert argv[argv.index("-machine") + 1] == "pc"
    assert argv[argv.index("-boot") + 1] == "order=n"  # SeaBIOS: the NIC's iPXE ROM first
    assert f"filter-dump,id=dump0,netdev=n0,file={cfg.packet_log},maxlen=320" in argv


def test_uefi_boots_ovmf_on_q35_with_its_own_pxe(tmp_path: Path) -> None:
    cfg = config(tmp_path, network=TapNetwork("tap0", "52:54:00:77:00:02"), firmware=Firmware.UEFI)
    argv = qemu_command(cfg)
    assert argv[argv.index("-machine") + 1] == "q35"
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives == [
        f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        f"if=pflash,format=raw,file={cfg.ovmf_vars}",  # this boot's own copy
    ]
    assert cfg.ovmf_vars.parent == cfg.workdir
    # no iPXE ROM: OVMF's PXE asks DHCP and fetches snponly.efi over TFTP
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:02,romfile=" in argv
    assert "-boot" not in argv


def test_ovmf_is_installed_or_named() -> None:
    require_ovmf()
    assert OVMF_CODE.is_file() and OVMF_VARS.is_file()


def test_missing_ovmf_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(qemu_module, "OVMF_VARS", tmp_path / "OVMF_VARS_4M.fd")
    with pytest.raises(UserError, match="--firmware uefi: OVMF is not installed") as refused:
        require_ovmf()
    assert refused.value.hint == "install it: apt-get install ovmf (or run `make setup`)"


def test_a_vm_in_a_namespace_runs_qemu_there_with_a_fresh_variable_store(tmp_path: Path) -> None:
    cfg = config(tmp_path, network=TapNetwork("tap0", "52:54:00:77:00:02"), firmware=Firmware.UEFI)
    vm = PxeVm(cfg, netns=Netns("pbtest-vm"))
    assert vm.argv[:4] == ["ip", "netns", "exec", "pbtest-vm"]
    assert vm.argv[4:] == qemu_command(cfg)
    cfg.workdir.mkdir(parents=True)
    cfg.ovmf_vars.write_bytes(b"written by an earlier boot")
    # no such namespace: `ip netns exec` fails, QEMU never runs
    with pytest.raises(WorkError), vm:
        assert cfg.ovmf_vars.read_bytes() == OVMF_VARS.read_bytes()
        vm.wait_until(lambda: False, 10, "nothing")
    assert not (cfg.tftp_dir / BOOTFILE).exists()  # the tap network has no TFTP of QEMU's


def test_a_machine_with_a_disk_has_it_as_virtio_and_still_boots_the_network(
    tmp_path: Path,
) -> None:
    argv = qemu_command(config(tmp_path, disk=tmp_path / "disk.qcow2"))
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith(f"file={tmp_path / 'disk.qcow2'},if=virtio,format=qcow2")
    assert argv[argv.index("-boot") + 1] == "order=n"
    assert "-drive" not in qemu_command(config(tmp_path))


def test_a_guest_kernel_crash_is_found_in_its_console() -> None:
    console = (
        "EFI stub: Loaded initrd from command line option\r\n"
        "[   13.158194] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\r\n"
        "[   13.162731] Kernel panic - not syncing: Fatal exception in interrupt\r\n"
    )
    assert guest_panic(console) == "[   13.158194] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
    assert guest_panic("[    1.0] \x1b[31mKernel panic - not syncing: VFS\x1b[0m") == (
        "[    1.0] ?[31mKernel panic - not syncing: VFS?[0m"
    )
    assert guest_panic("Debian GNU/Linux 12 cp1 ttyS0\n\ncp1 login: ") is None
