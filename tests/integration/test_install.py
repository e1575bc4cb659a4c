"""Install to disk, end to end (slow): the CI image PXE-boots through pxe-server in a network
namespace as a BIOS machine with a blank virtio disk; `plasmaboot install` (as a user runs
it, inside the namespace) first fails on a layout too large for the disk (a clear report),
then on SSH lost mid-way (the machine's link cut during the system copy: a clear report
naming the step), then, run again with --wipe, installs with the default layout, reboots
(QEMU stops: the power-off) and, powered on again, the machine's PXE boot is answered with
"boot from the local disk". The installed
system answers SSH with the host key recorded during the install, has the layout, host
name, enabled service (active, listening on its ports) and secrets as declared, and no
secret is in any log or report.

The RAM session is trusted through the host keys the node reported at boot (its per-node
layer's one-time token), never on first use; the installed system is checked against the
keys the install recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from netns import PXE_FILES, PXE_TOOLS, require
from plasmaboot.boot.guest import LISTENING_SCRIPT, parse_listeners
from plasmaboot.boot.provisioning import (
    INVENTORY,
    Provisioned,
    plan_provisioning,
    provisioning_network,
)
from plasmaboot.boot.qemu import Accelerator, Firmware, PxeVm, VmConfig, guest_panic
from plasmaboot.boot.ssh import Ssh, wait_for_ssh
from plasmaboot.boot.test import TCG_CRASH
from plasmaboot.catalog import load_catalog
from plasmaboot.errors import WorkError
from plasmaboot.image.backends.debian.backend import DEFAULT_MIRROR
from plasmaboot.install.layout import builtin_layouts_dir
from plasmaboot.install.packages import fetch_debs
from plasmaboot.install.remote import SshRemote
from plasmaboot.inventory.state import read_host_keys
from plasmaboot.log import Log

from conftest import CI_SERVICE, CiImage

pytestmark = pytest.mark.slow

HOSTNAME = "inst1"
DISK_SIZE = "3G"
BOOT_TIMEOUT = 420  # power-on to SSH under TCG on a busy 2-core machine
INSTALL_TIMEOUT = 1800  # the install command alone, with --fetch-debs on a cold cache
SECRET = "plasmaboot-test-secret-7f3a9c"  # must appear nowhere but on the disk
LUKS_KEY = f"{SECRET}-luks-key-0123456789abcdef\n"  # a key file: at least 32 bytes
# The default layout, and a LUKS2 data partition opened at boot by systemd with its key
# from the secrets (crypttab); the root keeps /dev/vda3.
DATA_ON_LUKS = """
[[disks.partitions]]
type = "linux"
label = "data"
size = "rest"
filesystem = "ext4"
mount = "/var/lib/plasmacloud-data"
luks = { name = "data", key = "etc/plasmaboot/luks/data.key" }
"""
# An encrypted root: the default layout's BIOS and EFI partitions, then /boot on its own
# (read by GRUB) and LVM on LUKS2 holding /, opened by the initramfs with the key it holds
BOOT_AND_LVM_ON_LUKS = """
[[disks.partitions]]
type = "linux"
label = "boot"
size = "512M"
filesystem = "ext4"
mount = "/boot"

[[disks.partitions]]
type = "lvm"
size = "rest"
volume_group = "vg0"
luks = { name = "cryptlvm", key = "etc/plasmaboot/luks/data.key" }

[[volume_groups]]
name = "vg0"
[[volume_groups.volumes]]
name = "root"
size = "rest"
filesystem = "ext4"
mount = "/"
"""


def install_argv(ci_image: CiImage, workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "plasmaboot", "--profiles-dir", str(ci_image.profiles_dir),
        "install", HOSTNAME,
        "--inventory", str(workdir / INVENTORY),
        "--identity", str(ci_image.identity),
        "--secrets", str(workdir / "secrets"),
        "--artifacts", str(ci_image.artifacts),
        "--debs", str(ci_image.cache / "debs" / "bookworm"),
        "--fetch-debs",
        "--boot-timeout", str(BOOT_TIMEOUT),
        "--json",
        *extra,
    ]  # fmt: skip


def wait_for_host_key_report(inventory: Path, timeout: float = 90) -> None:
    """The node reports its host keys a moment after sshd starts; install trusts those."""
    deadline = time.monotonic() + timeout
    while read_host_keys(inventory, HOSTNAME) is None:
        assert time.monotonic() < deadline, f"{HOSTNAME} reported no host keys in {timeout} s"
        time.sleep(1)


def write_secrets(workdir: Path) -> None:
    root = workdir / "secrets" / HOSTNAME
    (root / f"etc/{CI_SERVICE}").mkdir(parents=True)
    (root / f"etc/{CI_SERVICE}/token").write_text(SECRET + "\n")
    (root / "etc/plasmaboot").mkdir(parents=True)
    (root / "etc/plasmaboot/cluster.key").write_text(SECRET + "-cluster\n")
    (root / "etc/plasmaboot/luks").mkdir()
    (root / "etc/plasmaboot/luks/data.key").write_text(LUKS_KEY)


def write_layout(workdir: Path, encrypted_root: bool) -> str:
    """The machine's layout, beside the inventory (named by it, relative to it)."""
    default = (builtin_layouts_dir() / "default.toml").read_text()
    if encrypted_root:
        before_root = default.index('[[disks.partitions]]\ntype = "root"')
        text = default[:before_root] + BOOT_AND_LVM_ON_LUKS
    else:
        text = default.replace('"rest"', '"2300M"') + DATA_ON_LUKS
    (workdir / "layouts").mkdir(exist_ok=True)
    (workdir / "layouts/machine.toml").write_text(text)
    return "layouts/machine.toml"


def run_install(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    report: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, report


def test_a_bios_machine_installs_and_boots_from_its_disk(ci_image: CiImage, tmp_path: Path) -> None:
    install_and_boot(ci_image, tmp_path, Firmware.BIOS)


@pytest.mark.extended
def test_a_machine_with_an_encrypted_root_installs_and_boots(
    ci_image: CiImage, tmp_path: Path
) -> None:
    """LVM on LUKS2 holding /: the installed initramfs opens it with its key, unattended."""
    install_and_boot(ci_image, tmp_path, Firmware.BIOS, encrypted_root=True)


@pytest.mark.extended
def test_a_uefi_machine_installs_and_boots_from_its_disk(ci_image: CiImage, tmp_path: Path) -> None:
    """OVMF with its own variable store: after the install the firmware boots the disk's
    EFI/BOOT/BOOTX64.EFI, at once or after iPXE's `exit 1` (there is no NVRAM entry)."""
    install_and_boot(ci_image, tmp_path, Firmware.UEFI)


def install_and_boot(
    ci_image: CiImage, tmp_path: Path, firmware: Firmware, encrypted_root: bool = False
) -> None:
    require(*PXE_TOOLS, "qemu-img", files=PXE_FILES)
    plan = plan_provisioning(
        ci_image.label, ci_image.label, None, HOSTNAME, "10.78.0.0/24", (ci_image.profiles_dir,)
    )
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, DISK_SIZE], check=True)
    write_secrets(tmp_path)
    # GRUB, initramfs-tools and the node's disk tools come from the operator's side: fetched
    # here, where Debian's mirror is reachable (install runs inside the namespace, which is not)
    fetch_debs(ci_image.cache / "debs" / "bookworm", "bookworm", DEFAULT_MIRROR)
    timings: dict[str, float] = {}
    with (
        Log(tmp_path / "test.log", subject="install") as log,
        provisioning_network(plan, ci_image.artifacts, tmp_path, log) as net,
    ):
        inventory = tmp_path / INVENTORY
        layout = write_layout(tmp_path, encrypted_root)
        inventory.write_text(
            inventory.read_text() + f'services = ["{CI_SERVICE}"]\nlayout = "{layout}"\n'
        )

        def vm_config(name: str) -> VmConfig:
            return VmConfig(
                workdir=tmp_path / name,
                label=ci_image.label,
                network=net.guest,
                accelerator=Accelerator.TCG,
                memory_mib=1024,
                firmware=firmware,
                disk=disk,
            )

        ram = Ssh(22, ci_image.identity, log=log, host=net.address, netns=net.netns)
        with PxeVm(vm_config("ram"), access_log=net.server_log, log=log, netns=net.netns) as vm:
            boot_to_ssh(vm, ram)
            wait_for_host_key_report(tmp_path / INVENTORY)
            # a layout the disk cannot hold: refused before anything is written, a report
            too_big = str(builtin_layouts_dir() / "control-plane.toml")
            code, report = run_install(
                net.netns.argv(install_argv(ci_image, tmp_path, "--layout", too_big))
            )
            assert code == 2 and report["ok"] is False and report["failed_step"] == "inspect"
            assert "too small for the layout" in report["error"]
            assert (
                "sgdisk" not in (tmp_path / "machines.state/reports/install-inst1.log").read_text()
            )
            # the machine's own (default) layout, and the link cut as the system is copied:
            # a clear failure naming the step, then the same command with --wipe
            lose_ssh_mid_way(ci_image, tmp_path, net)
            # again, with --wipe: installs, reboots; QEMU runs with -no-reboot, so the
            # reboot powers the machine off
            started = time.monotonic()
            installer = subprocess.Popen(
                net.netns.argv(install_argv(ci_image, tmp_path, "--wipe")),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + INSTALL_TIMEOUT
            while vm.running() and installer.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
            if installer.poll() is not None:
                out, err = installer.communicate()
                pytest.fail(f"install ended before the reboot:\n{out[-3000:]}\n{err[-3000:]}")
            assert not vm.running(), f"no reboot within {INSTALL_TIMEOUT}s"
        timings["install"] = time.monotonic() - started
        # powered on again: PXE first (-boot order=n), serve answers "local disk"
        with PxeVm(vm_config("disk"), access_log=net.server_log, log=log, netns=net.netns) as vm:
            try:
                out, err = wait_for_installer(installer, vm, BOOT_TIMEOUT + 300)
            finally:
                if installer.poll() is None:
                    installer.kill()
            assert installer.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
            report = json.loads(out)
            timings["first_boot"] = time.monotonic() - started - timings["install"]
            assert report["ok"] is True and report["failed_step"] is None
            assert report["service_states"] == {CI_SERVICE: "active"}
            if firmware is Firmware.BIOS:  # SeaBIOS boots the network first (order=n)
                assert "is installed: local disk" in net.server_log.read_text()
            check_installed_system(
                tmp_path, net.address, ci_image, net.netns, report, encrypted_root
            )
    check_no_secret_anywhere(tmp_path, ci_image)
    print(f"install step: {report['steps']}; install {timings['install']:.0f}s, "
          f"reboot to services active {timings['first_boot']:.0f}s")  # fmt: skip


def tcg_crashed(vm: PxeVm) -> bool:
    """The guest's console shows TCG's own crash (boot.test.TCG_CRASH: QEMU's cross-vCPU
    code patching, about one boot in 50), not anything of the image. The guest then spins
    in its panic (Debian's kernel has no panic timeout): QEMU does not end by itself."""
    panic = guest_panic(vm.serial_text())
    return panic is not None and TCG_CRASH in panic


@contextmanager
def stopped_on_tcg_crash(vm: PxeVm) -> Iterator[None]:
    """Stop QEMU as soon as its console shows TCG's crash, so a wait on the guest ends at
    once ("the guest stopped") instead of at its timeout."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1):
            if vm.proc is not None and tcg_crashed(vm):
                vm.proc.stop()
                return

    watcher = threading.Thread(target=watch, name="tcg-crash-watch")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def boot_to_ssh(vm: PxeVm, ssh: Ssh) -> None:
    """wait_for_ssh, powering the machine on once more after a TCG crash (as boot-test and
    the PXE tests do); any other failure, or a second crash, fails the test."""
    try:
        with stopped_on_tcg_crash(vm):
            wait_for_ssh(vm, ssh, BOOT_TIMEOUT)
        return
    except WorkError:
        if not tcg_crashed(vm):
            raise
    print(f"the RAM boot died of {guest_panic(vm.serial_text())}: booting once more")
    vm.stop()
    vm.start()
    wait_for_ssh(vm, ssh, BOOT_TIMEOUT)


def wait_for_installer(
    installer: subprocess.Popen[str], vm: PxeVm, timeout: float
) -> tuple[str, str]:
    """install's output once it has seen the installed system (it waits for its SSH);
    powers the machine on once more if TCG crashed its first boot from the disk."""
    deadline = time.monotonic() + timeout
    restarted = False
    while installer.poll() is None and time.monotonic() < deadline:
        if not restarted and tcg_crashed(vm):
            print(f"the disk boot died of {guest_panic(vm.serial_text())}: booting once more")
            vm.stop()  # a fresh console: the crash is not seen again
            vm.start()
            restarted = True
        time.sleep(1)
    return installer.communicate(timeout=max(1.0, deadline - time.monotonic()))


COPY = "cp -a /run/plasmaboot-install/lower/root/."


def lose_ssh_mid_way(ci_image: CiImage, workdir: Path, net: Provisioned) -> None:
    """The machine's link goes down (its tap, as a pulled cable) as the system is copied:
    install fails within its SSH keep-alive, in one line that says the connection
    was lost and how to go on, and the report names the step. The link comes back."""
    log = workdir / "machines.state/reports/install-inst1.log"
    seen = log.stat().st_size if log.exists() else 0
    installer = subprocess.Popen(
        net.netns.argv(install_argv(ci_image, workdir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + INSTALL_TIMEOUT
        # the copy's command logged (the step's long one), then a moment for it to start
        while COPY.encode() not in (log.read_bytes()[seen:] if log.exists() else b""):
            assert installer.poll() is None, installer.communicate()
            assert time.monotonic() < deadline, "install never reached the system copy"
            time.sleep(0.2)
        time.sleep(5)
        subprocess.run(
            ["ip", "-n", net.netns.name, "link", "set", net.guest.tap, "down"], check=True
        )
        out, err = installer.communicate(timeout=300)
    finally:
        if installer.poll() is None:
            installer.kill()
        subprocess.run(["ip", "-n", net.netns.name, "link", "set", net.guest.tap, "up"], check=True)
    wait_until_reachable(net)
    report = json.loads(out)
    assert installer.returncode == 1, err
    assert report["ok"] is False and report["failed_step"] == "system"
    assert report["error"].startswith(f"lost the SSH connection to {net.address} during ")
    assert "--wipe" in report["hint"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("failed: lost the SSH connection") for line in lines), err


def wait_until_reachable(net: Provisioned, timeout: float = 120) -> None:
    """The node's SSH port answers again (the host's neighbour entry for it failed while the
    link was down: "No route to host" until it is resolved again)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            net.netns.connect((net.address, 22), timeout=5).close()
            return
        except OSError as exc:
            assert time.monotonic() < deadline, f"the node is unreachable after the cut: {exc}"
            time.sleep(2)


def check_installed_system(
    workdir: Path,
    address: str,
    ci_image: CiImage,
    netns: Any,
    report: dict[str, Any],
    encrypted_root: bool,
) -> None:
    state = workdir / "machines.state"
    record = json.loads((state / "hostkeys" / f"{HOSTNAME}.json").read_text())
    assert record["installed"] is True and record["keys"] == report["host_keys"]
    assert json.loads((state / "installed" / f"{HOSTNAME}.json").read_text())["machine"] == HOSTNAME
    known = workdir / "installed_known_hosts"
    known.write_text("".join(f"{address} {key}\n" for key in record["keys"]))
    node = SshRemote(address, ci_image.identity, known, netns=netns)  # pinned: no first use
    encrypted = "/" if encrypted_root else "/var/lib/plasmacloud-data"
    mounts = node.sh(
        "for m in / /boot/efi " + encrypted + "; do findmnt -n -o TARGET,SOURCE,FSTYPE $m; done"
    )
    if encrypted_root:
        assert mounts.split() == [
            "/", "/dev/mapper/vg0-root", "ext4", "/boot/efi", "/dev/vda2", "vfat",
            "/", "/dev/mapper/vg0-root", "ext4",
        ]  # fmt: skip
        mapping, holder = "cryptlvm", "/dev/vda4"
    else:
        assert mounts.split() == [
            "/", "/dev/vda3", "ext4", "/boot/efi", "/dev/vda2", "vfat",
            encrypted, "/dev/mapper/data", "ext4",
        ]  # fmt: skip
        mapping, holder = "data", "/dev/vda4"
    # the mapping is LUKS2 on its partition, opened with the key from the secrets
    status = node.sh(f"cryptsetup status {mapping}")
    assert "type:    LUKS2" in status and f"device:  {holder}" in status, status
    assert node.sh(f"cryptsetup isLuks --type luks2 {holder} && echo yes").strip() == "yes"
    parts = node.sh("lsblk -n -b -o NAME,PARTTYPENAME,SIZE /dev/vda")
    assert "BIOS boot" in parts and "EFI System" in parts
    assert node.sh("hostname").strip() == HOSTNAME
    assert node.sh(f"systemctl is-enabled {CI_SERVICE}.service").strip() == "enabled"
    check_listening(node)
    assert node.sh("systemctl is-enabled chainfire.service || true").strip() == "disabled"
    owners = node.sh(
        f"stat -c '%U %a %n' /etc/{CI_SERVICE}/token /etc/plasmaboot/cluster.key "
        "/etc/plasmaboot/luks/data.key"
    )
    assert owners.splitlines() == [
        f"{CI_SERVICE} 600 /etc/{CI_SERVICE}/token",
        "root 600 /etc/plasmaboot/cluster.key",
        "root 600 /etc/plasmaboot/luks/data.key",
    ]
    if encrypted_root:  # the initramfs holds the key: it is readable by root only
        modes = node.sh("stat -c '%a %U' /boot/initrd.img-$(uname -r)").split()
        assert modes == ["600", "root"], modes
    assert node.sh("cat /etc/machine-id").strip() != ""
    assert "/run/rootfs" not in node.sh("findmnt -n -o SOURCE /")


def check_listening(node: SshRemote, timeout: float = 60) -> None:
    """The enabled service listens on every port of its catalog entry (its stand-in binds
    them on TCP and UDP a moment after it is active)."""
    ports = set(load_catalog()[CI_SERVICE].ports.values())
    wanted = {(protocol, port) for port in ports for protocol in ("tcp", "udp")}
    deadline = time.monotonic() + timeout
    while True:
        found = {(item.protocol, item.port) for item in parse_listeners(node.sh(LISTENING_SCRIPT))}
        if wanted <= found or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert wanted <= found, f"{CI_SERVICE} does not listen on {sorted(wanted - found)}"


def check_no_secret_anywhere(workdir: Path, ci_image: CiImage) -> None:
    """Every log, report, state file, console capture and artifact, but the disk itself and
    the secrets directory."""
    places = [p for p in workdir.rglob("*") if p.is_file()]
    places += [p for p in ci_image.artifacts.rglob("*") if p.is_file()]
    skip = {workdir / "disk.qcow2"}
    leaks = [
        str(p)
        for p in places
        if p not in skip
        and not p.is_relative_to(workdir / "secrets")
        and SECRET.encode() in p.read_bytes()
    ]
    assert not leaks, leaks
