"""boot-test: input errors (exit 2), the conversions the service checks compare against,
parsing what the guest prints, the report, and the checks that decide from SSH output."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from plasmaboot import cli
from plasmaboot.boot import test as boottest
from plasmaboot.boot.qemu import Accelerator, ProbeResult, kvm_usable
from plasmaboot.boot.test import (
    DEVICE_NODES_SCRIPT,
    NIC_MTU_SCRIPT,
    STATIC_NODE_LISTS,
    BootRecord,
    BootTestOptions,
    Check,
    Greeting,
    Report,
    Ssh,
    check_host_keys,
    check_memory,
    cpu_quota_timespan,
    judge_device_nodes,
    judge_mtu,
    kvm_gave_out,
    memory_bytes,
    module_name,
    parse_show_blocks,
    private_copy,
    promised_commands,
    render_table,
    validate,
    write_report,
)
from plasmaboot.catalog import native_package_names, package_commands
from plasmaboot.cli import main
from plasmaboot.errors import UserError
from plasmaboot.profiles.store import ProfileStore

MANIFEST = {
    "profile": "worker",
    "variant": None,
    "label": "worker",
    "content_hash": "0" * 64,
    "cache_key": "0" * 64,
    "backend": "debian",
    "distro": "debian bookworm",
    "kernel_version": "6.1.0-50-amd64",
    "kernel_params": ["console=ttyS0,115200"],
    "files": {},
    "packages": {},
    "services": {},
    "steps": {},
    "built_at": "2026-01-01T00:00:00+00:00",
    "plasmaboot_version": "0.1.0",
    "resolved_profile": ProfileStore().resolve("worker").model_dump(mode="json"),
}


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    directory = root / "worker"
    directory.mkdir(parents=True)
    for name in ("bzImage", "initrd", "netboot.ipxe"):
        (directory / name).write_bytes(b"x")
    (directory / "manifest.json").write_text(json.dumps(MANIFEST))
    return root


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    key.write_text("not read before the guest answers\n")
    return key


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Error lines are matched whole: do not let rich wrap them at 80 columns."""
    monkeypatch.setattr(cli.err_console, "width", 400)
    monkeypatch.setattr(cli.console, "width", 400)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


# --------------------------------------------------------------------------------------
# bad input: exit 2, one line naming what is wrong, nothing written


def test_unknown_label_names_the_directory_and_the_labels_there(
    artifacts: Path, identity: Path
) -> None:
    code, output = invoke(
        "boot-test", "control", "--artifacts", str(artifacts), "--identity", str(identity)
    )
    assert code == 2
    assert f"{artifacts / 'control'}: no artifact set for 'control'" in output
    assert "worker" in output
    assert "Traceback" not in output
    assert not list(artifacts.glob("boot-test-*"))


def test_missing_identity_is_bad_input(artifacts: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(missing)
    )
    assert code == 2
    assert f"--identity {missing}: no such private key file" in output
    assert not list(artifacts.glob("boot-test-*"))


@pytest.mark.parametrize(
    ("cpu", "no_kvm", "message"),
    [
        ("pentium9", None, "--cpu pentium9: 'pentium9' is not a CPU model of qemu-system-x86_64"),
        (
            "host",
            "no /dev/kvm",
            "--cpu host: the host CPU model needs KVM, and here there is no /dev/kvm",
        ),
    ],
)
def test_cpu_model_that_cannot_run_is_bad_input(
    artifacts: Path,
    identity: Path,
    monkeypatch: pytest.MonkeyPatch,
    cpu: str,
    no_kvm: str | None,
    message: str,
) -> None:
    if no_kvm is not None:
        monkeypatch.setattr(boottest, "kvm_usable", lambda: no_kvm)  # a machine without KVM
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity),
        "--cpu", cpu,
    )  # fmt: skip
    assert code == 2
    assert message in output
    assert "Traceback" not in output
    assert not list(artifacts.glob("boot-test-*"))


def test_host_cpu_model_when_kvm_fails_its_probe_is_a_failed_boot_with_a_report(
    artifacts: Path, identity: Path
) -> None:
    if kvm_usable() is not None:
        pytest.skip(f"{kvm_usable()}: boot-test refuses --cpu host up front (test above)")
    report = artifacts / "report.json"
    code, _ = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity),
        "--cpu", "host", "--timeout", "5", "--report", str(report),
    )  # fmt: skip
    data = json.loads(report.read_text())
    if data["accelerator"] == "kvm":
        pytest.skip("KVM works on this machine: the host model can run")
    assert code == 1
    assert data["cpu"] == "host" and data["boots"] == []
    boot = data["checks"][0]
    assert boot["name"] == "boot 1: PXE to SSH" and not boot["passed"]
    assert "--cpu host needs KVM, and KVM failed" in boot["detail"]


def test_incomplete_set_names_the_missing_file(artifacts: Path, identity: Path) -> None:
    (artifacts / "worker" / "initrd").unlink()
    with pytest.raises(UserError, match=r"worker/initrd: missing"):
        validate(BootTestOptions("worker", artifacts, identity))


def test_missing_qemu_names_the_debian_package(
    artifacts: Path, identity: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").symlink_to(shutil.which("ssh") or "/usr/bin/ssh")
    monkeypatch.setenv("PATH", str(bin_dir))
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity)
    )
    assert code == 2
    assert "qemu-system-x86_64" in output
    assert "apt-get install qemu-system-x86" in output


def test_valid_input_resolves_the_built_profile(artifacts: Path, identity: Path) -> None:
    manifest, profile = validate(BootTestOptions("worker", artifacts, identity))
    assert manifest.label == "worker"
    assert profile.name == "worker"
    assert "kvm" in profile.kernel.modules


def test_report_path_defaults_beside_the_set(artifacts: Path, identity: Path) -> None:
    options = BootTestOptions("worker", artifacts, identity)
    assert options.report_path == artifacts / "boot-test-worker.json"
    assert options.workdir == artifacts / "boot-test-worker"
    other = BootTestOptions("worker", artifacts, identity, report=Path("/tmp/x/r.json"))
    assert other.workdir == Path("/tmp/x/boot-test-worker")


# --------------------------------------------------------------------------------------
# what the service checks compare against: as `systemctl show` prints it


@pytest.mark.parametrize(
    ("setting", "shown"),
    [("512M", "536870912"), ("1G", "1073741824"), ("64K", "65536"), ("infinity", "infinity")],
)
def test_memory_max_as_systemd_shows_it(setting: str, shown: str) -> None:
    assert memory_bytes(setting) == shown


@pytest.mark.parametrize(
    ("quota", "shown"), [("50%", "500ms"), ("100%", "1s"), ("150%", "1s 500ms"), ("5%", "50ms")]
)
def test_cpu_quota_as_systemd_shows_it(quota: str, shown: str) -> None:
    assert cpu_quota_timespan(quota) == shown


def test_show_blocks_of_several_units() -> None:
    text = (
        "Id=iam.service\nLoadState=loaded\nMemoryMax=536870912\n\n"
        "Id=novanet.service\nLoadState=not-found\nCPUQuotaPerSecUSec=infinity\n"
    )
    blocks = parse_show_blocks(text)
    assert blocks == [
        {"Id": "iam.service", "LoadState": "loaded", "MemoryMax": "536870912"},
        {"Id": "novanet.service", "LoadState": "not-found", "CPUQuotaPerSecUSec": "infinity"},
    ]


def test_module_names_from_proc_and_modules_builtin() -> None:
    assert module_name("kernel/arch/x86/kvm/kvm-intel.ko") == "kvm_intel"
    assert module_name("kvm_amd") == "kvm_amd"
    assert module_name("kernel/net/openvswitch/openvswitch.ko") == "openvswitch"


# --------------------------------------------------------------------------------------
# which tools a profile promises


def test_base_tools_are_all_promised() -> None:
    base = ProfileStore().resolve("base")
    unavailable = set(native_package_names("debian", base.packages)[1])
    promised, unknown = promised_commands(base.packages, unavailable)
    commands = {c for alternatives in promised.values() for c in alternatives}
    for tool in ("parted", "sgdisk", "cryptsetup", "lvm", "mkfs.ext4", "mkfs.xfs", "ip"):
        assert tool in commands
    for tool in ("curl", "tcpdump", "vim", "tmux", "htop", "tar", "cpio", "setsid", "kexec"):
        assert tool in commands
    assert "disko" not in promised  # Nix only: not promised by a Debian image
    assert unknown == []


def test_every_builtin_profile_package_has_a_command() -> None:
    store = ProfileStore()
    for name in store.profile_names():
        for variant in [None, *store.variant_names()]:
            profile = store.resolve(name, variant)
            _, unknown = promised_commands(profile.packages, set())
            assert unknown == [], (
                f"{profile.label}: {unknown} (add them to [commands] in catalog/packages.toml)"
            )
    assert all(package_commands().values())


def test_unknown_packages_are_reported_not_checked() -> None:
    promised, unknown = promised_commands(["curl", "some-new-tool"], set())
    assert set(promised) == {"curl"}
    assert unknown == ["some-new-tool"]


# --------------------------------------------------------------------------------------
# checks decided from collected values


def test_host_keys_must_differ_between_boots() -> None:
    one = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne root@node"
    two = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITwo root@node"
    assert check_host_keys([one, two]).passed
    same = check_host_keys([one, one])
    assert not same.passed
    assert not check_host_keys([one, None]).passed


def test_free_memory_has_a_floor() -> None:
    assert check_memory({"mem_total_mib": 2000, "mem_available_mib": 1500}).passed
    low = check_memory({"mem_total_mib": 512, "mem_available_mib": 100})
    assert not low.passed
    assert "MemAvailable 100 MiB of 512 MiB" in low.detail


# --------------------------------------------------------------------------------------
# the report


def sample_report(path: Path, passed: bool) -> Report:
    checks = [
        Check(name="kernel command line", passed=True, detail="console=ttyS0,115200"),
        Check(name="systemd is running", passed=passed, detail="running" if passed else "degraded"),
    ]
    return Report(
        label="worker",
        profile="worker",
        variant=None,
        accelerator="tcg",
        accelerator_reason="KVM failed",
        cpu="qemu64",
        nic="virtio",
        memory_mib=2048,
        qemu_command=["qemu-system-x86_64"],
        boots=[],
        memory={"mem_total_mib": 1990, "mem_available_mib": 1500},
        checks=checks,
        passed=all(c.passed for c in checks),
        report_path=str(path),
    )


def test_report_is_written_as_json(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "boot-test-worker.json"
    write_report(sample_report(path, passed=False), path)
    data = json.loads(path.read_text())
    assert data["passed"] is False
    assert data["accelerator"] == "tcg"
    assert data["cpu"] == "qemu64"
    assert data["memory"]["mem_available_mib"] == 1500
    assert [c["name"] for c in data["checks"]] == ["kernel command line", "systemd is running"]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_table_shows_each_check(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    console.print(render_table(sample_report(tmp_path / "r.json", passed=False)))
    text = console.export_text()
    assert "kernel command line" in text and "pass" in text
    assert "systemd is running" in text and "FAIL" in text and "degraded" in text


def test_identity_is_used_from_a_private_copy(tmp_path: Path) -> None:
    shared = tmp_path / "shared_key"
    shared.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    shared.chmod(0o444)  # as a read-only shared/ copy has it: ssh would refuse this file
    workdir = tmp_path / "work"
    workdir.mkdir()
    copy = private_copy(shared, workdir)
    assert copy.read_text() == shared.read_text()
    assert copy.stat().st_mode & 0o777 == 0o600


def test_kvm_that_dies_before_the_kernel_means_falling_back() -> None:
    def record(events: dict[str, float]) -> BootRecord:
        return BootRecord(index=1, ssh_port=1, events=events, phases={}, host_key=None, logs={})

    failed = Check(name="boot 1: PXE to SSH", passed=False, detail="QEMU exit code -6")
    kvm = ProbeResult(Accelerator.KVM, "KVM ran the firmware")
    tcg = ProbeResult(Accelerator.TCG, "KVM failed")
    assert kvm_gave_out(kvm, record({"start": 0.0}), failed)
    # once the kernel arrived, a failure is the image's, not KVM's
    assert not kvm_gave_out(kvm, record({"start": 0.0, "kernel_fetched": 5.0}), failed)
    assert not kvm_gave_out(tcg, record({"start": 0.0}), failed)
    passed = Check(name="boot 1: PXE to SSH", passed=True, detail="ok")
    assert not kvm_gave_out(kvm, record({"start": 0.0}), passed)


# --------------------------------------------------------------------------------------
# the SSH probe, against a real listening socket on loopback


@contextmanager
def ssh_port(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose one accepted connection is handed to `handle`."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            handle(connection)
            done.wait(10)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join()
        server.close()


def test_greeting_is_the_banner_a_reset_or_silence() -> None:
    identity = Path("/nonexistent")
    with ssh_port(lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")) as port:
        assert Ssh(port, identity).greeting(5) is Greeting.BANNER
    with ssh_port(lambda c: c.close()) as port:
        assert Ssh(port, identity).greeting(5) is Greeting.CLOSED
    with ssh_port(lambda c: None) as port:
        started = time.monotonic()
        assert Ssh(port, identity).greeting(0.5) is Greeting.SILENT
        assert 0.5 <= time.monotonic() - started < 3


def test_a_silent_probe_gives_up_when_asked() -> None:
    with ssh_port(lambda c: None) as port:
        started = time.monotonic()
        answer = Ssh(port, Path("/nonexistent")).greeting(30, give_up=lambda: True)
        assert answer is Greeting.SILENT
        assert time.monotonic() - started < 2


# --------------------------------------------------------------------------------------
# device nodes: the guest's shell script run here, on lists the test writes


def run_device_nodes_script(tmp_path: Path, etc_list: str | None, run_list: str | None) -> str:
    script = DEVICE_NODES_SCRIPT
    for path, text in zip(STATIC_NODE_LISTS, (etc_list, run_list), strict=True):
        local = tmp_path / ("etc.conf" if path.startswith("/etc") else "run.conf")
        if text is not None:
            local.write_text(text)
        script = script.replace(path, str(local))
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout


def test_device_nodes_pass_when_every_listed_node_is_a_device(tmp_path: Path) -> None:
    out = run_device_nodes_script(
        tmp_path,
        "c! /dev/null 0600 - - - 1:3\nd /dev/net 0755 - - -\nc! /dev/zero 0600 - - - 1:5\n",
        None,
    )
    check = judge_device_nodes(out)
    assert check.passed, check.detail
    assert check.detail.startswith("2 nodes of ") and "etc.conf" in check.detail


def test_device_nodes_name_what_is_missing_or_not_a_device(tmp_path: Path) -> None:
    # the build's list is empty: the boot-time one in /run is read instead
    listing = (
        "c! /dev/null 0600 - - - 1:3\n"
        "c! /dev/nosuch 0600 - - - 10:200\n"
        "b! /dev/zero 0600 - - - 1:5\n"  # a character device listed as a block device
    )
    check = judge_device_nodes(run_device_nodes_script(tmp_path, "", listing))
    assert not check.passed
    assert (
        check.detail == f"not devices: /dev/nosuch, /dev/zero (listed in {tmp_path / 'run.conf'})"
    )


def test_device_nodes_fail_without_any_list(tmp_path: Path) -> None:
    check = judge_device_nodes(run_device_nodes_script(tmp_path, None, None))
    assert not check.passed
    assert check.detail.startswith("no device nodes listed (looked in /etc/tmpfiles.d/")


# --------------------------------------------------------------------------------------
# network.mtu: the guest's NICs against the profile


def test_mtu_passes_when_every_nic_has_it() -> None:
    check = judge_mtu("enp0s3 9000\nenp0s4 9000\n", 9000)
    assert check.passed and check.detail == "enp0s3 9000, enp0s4 9000"


def test_mtu_names_the_nic_that_lacks_it() -> None:
    check = judge_mtu("enp0s3 9000\nenp0s4 1500\n", 9000)
    assert not check.passed and check.detail == "enp0s4 1500 (want 9000)"
    assert not judge_mtu("", 9000).passed


def test_mtu_script_lists_nics_with_a_device() -> None:
    out = subprocess.run(["sh", "-c", NIC_MTU_SCRIPT], capture_output=True, text=True).stdout
    physical = [
        n for n in os.listdir("/sys/class/net") if os.path.exists(f"/sys/class/net/{n}/device")
    ]
    assert sorted(line.split()[0] for line in out.splitlines()) == sorted(physical)
    assert all(line.split()[1].isdigit() for line in out.splitlines())
