"""boot.test: input errors (exit 2, before QEMU starts), the options, the profile the node
is judged against (the manifest's, even when --profile's files now say otherwise), and the
decisions made between boots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot import cli
from plasmaboot.artifacts.manifest import Manifest
from plasmaboot.boot import netns as netns_module
from plasmaboot.boot import test as boottest
from plasmaboot.boot.netns import namespace_name
from plasmaboot.boot.qemu import Accelerator, ProbeResult, PxeVm, kvm_usable
from plasmaboot.boot.report import BootRecord
from plasmaboot.boot.test import (
    BootTestOptions,
    Network,
    kvm_gave_out,
    private_copy,
    rebuilt_note,
    require_same_profile,
    run_boot_test,
    tcg_crashed,
    validate,
    with_note,
)
from plasmaboot.checks import failed, passed
from plasmaboot.cli import main
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.paths import builtin_profiles_dir
from plasmaboot.profiles.store import ProfileStore

from conftest import live_processes

WORKER = ProfileStore().resolve("worker")
TCG = ProbeResult(Accelerator.TCG, "the test asked for TCG")
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
    "steps": {},
    "built_at": "2026-01-01T00:00:00+00:00",
    "plasmaboot_version": "0.1.0",
    "resolved_profile": WORKER.model_dump(mode="json"),
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


def set_manifest(artifacts: Path, **changes: object) -> None:
    (artifacts / "worker" / "manifest.json").write_text(json.dumps({**MANIFEST, **changes}))


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
    assert boot["name"] == "boot 1: PXE to SSH" and boot["result"] == "fail"
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


def test_the_node_is_judged_against_the_manifests_profile(artifacts: Path, identity: Path) -> None:
    kernel = WORKER.kernel.model_copy(update={"modules": ["kvm", "built-then"]})
    built = WORKER.model_copy(update={"kernel": kernel})
    set_manifest(artifacts, resolved_profile=built.model_dump(mode="json"))
    manifest = validate(BootTestOptions("worker", artifacts, identity))
    assert manifest.label == "worker"
    assert manifest.resolved_profile.kernel.modules == ["kvm", "built-then"]


def test_report_path_defaults_beside_the_set(artifacts: Path, identity: Path) -> None:
    options = BootTestOptions("worker", artifacts, identity)
    assert options.report_path == artifacts / "boot-test-worker.json"
    assert options.workdir == artifacts / "boot-test-worker"
    other = BootTestOptions("worker", artifacts, identity, report=Path("/tmp/x/r.json"))
    assert other.workdir == Path("/tmp/x/boot-test-worker")


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

    stopped = failed("boot 1: PXE to SSH", "QEMU exit code -6")
    kvm = ProbeResult(Accelerator.KVM, "KVM ran the firmware")
    tcg = ProbeResult(Accelerator.TCG, "KVM failed")
    assert kvm_gave_out(kvm, record({"start": 0.0}), stopped)
    # once the kernel arrived, a failure is the image's, not KVM's
    assert not kvm_gave_out(kvm, record({"start": 0.0, "kernel_fetched": 5.0}), stopped)
    assert not kvm_gave_out(tcg, record({"start": 0.0}), stopped)
    reached = passed("boot 1: PXE to SSH", "ok")
    assert not kvm_gave_out(kvm, record({"start": 0.0}), reached)


def test_only_tcgs_own_crash_boots_once_more() -> None:
    name = "boot 1: PXE to SSH"
    tcg = ProbeResult(Accelerator.TCG, "KVM failed")
    kvm = ProbeResult(Accelerator.KVM, "KVM ran the firmware")
    int3 = failed(
        name,
        "the guest kernel crashed: [    9.539024] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI; "
        "the SSH server answered after 16s but refused the key",
    )
    assert tcg_crashed(tcg, int3)
    assert not tcg_crashed(kvm, int3)  # under KVM a crash is the image's
    panic = failed(name, "the guest kernel crashed: Kernel panic - not syncing: VFS; timed out")
    assert not tcg_crashed(tcg, panic)  # any other crash is the image's too
    later = failed(name, "timed out waiting for SSH; the console said Oops: int3 earlier")
    assert not tcg_crashed(tcg, later)  # only a crash boot-test named as such
    assert not tcg_crashed(tcg, passed(name, "SSH answered after 19s"))
    noted = with_note(passed(name, "SSH answered after 19s"), "the first try: Oops under TCG")
    assert noted.passed and noted.detail == "SSH answered after 19s (the first try: Oops under TCG)"


# --------------------------------------------------------------------------------------
# --profile: what the profile's files say now, against what was built


def validate_manifest(**changes: object) -> Manifest:
    return Manifest.model_validate({**MANIFEST, **changes})


def stop_before_qemu(*args: object, **kwargs: object) -> ProbeResult:
    raise WorkError("stopped before QEMU, as the test asked")


def edited_profiles(tmp_path: Path, sysctl_line: str) -> Path:
    """A profiles directory whose worker.toml shadows the built-in one, with a changed
    setting."""
    directory = tmp_path / "profiles"
    directory.mkdir()
    text = (builtin_profiles_dir() / "worker.toml").read_text()
    (directory / "worker.toml").write_text(text.replace('"fs.file-max" = 1000000', sysctl_line))
    return directory


def test_a_profile_that_still_resolves_to_what_was_built_says_nothing() -> None:
    manifest = validate_manifest(content_hash=WORKER.content_hash())
    assert rebuilt_note(manifest, WORKER) is None


def test_a_profile_edited_since_the_build_is_one_note(tmp_path: Path) -> None:
    edited = ProfileStore([edited_profiles(tmp_path, '"fs.file-max" = 2000000')]).resolve("worker")
    manifest = validate_manifest(content_hash=WORKER.content_hash())
    note = rebuilt_note(manifest, edited)
    assert note == (
        f"note: profile worker now resolves to {edited.content_hash()[:12]}, this image was "
        f"built from {WORKER.content_hash()[:12]}; testing what was built"
    )


@pytest.mark.parametrize(
    ("name", "variant", "message"),
    [
        ("control-plane", None, "--profile control-plane: the set worker was built from "
         "--profile worker"),
        ("worker", "debug", "--profile worker --variant debug: the set worker was built from "
         "--profile worker"),
    ],
)  # fmt: skip
def test_another_profile_than_the_sets_is_refused(
    name: str, variant: str | None, message: str
) -> None:
    with pytest.raises(UserError, match=re.escape(message)) as refused:
        require_same_profile(validate_manifest(), ProfileStore().resolve(name, variant))
    assert refused.value.exit_code == 2


def test_the_note_is_printed_once_and_what_was_built_is_tested(
    artifacts: Path, identity: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_manifest(artifacts, content_hash=WORKER.content_hash())
    profiles = edited_profiles(tmp_path, '"fs.file-max" = 2000000')
    monkeypatch.setattr(boottest, "probe_accelerator", stop_before_qemu)
    code, output = invoke(
        "--profiles-dir", str(profiles), "boot-test", "worker", "--artifacts", str(artifacts),
        "--identity", str(identity), "--profile", "worker", "--json",
    )  # fmt: skip
    assert code == 1 and "stopped before QEMU" in output  # it went on after the note
    notes = [line for line in output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1
    assert "note: profile worker now resolves to " in notes[0]
    assert notes[0].endswith(f"built from {WORKER.content_hash()[:12]}; testing what was built")


def test_a_profile_unchanged_since_the_build_prints_no_note(
    artifacts: Path, identity: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_manifest(artifacts, content_hash=WORKER.content_hash())
    monkeypatch.setattr(boottest, "probe_accelerator", stop_before_qemu)
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity),
        "--profile", "worker",
    )  # fmt: skip
    assert code == 1 and "stopped before QEMU" in output
    assert "note:" not in output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "control-plane"], "--profile control-plane: the set worker was built "
         "from --profile worker"),
        (["--variant", "debug"], "--variant debug: only means something with --profile"),
        (["--profile", "nosuch"], "unknown profile \"nosuch\""),
    ],
)  # fmt: skip
def test_a_profile_that_is_not_the_sets_is_bad_input(
    artifacts: Path, identity: Path, extra: list[str], message: str
) -> None:
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity), *extra
    )
    assert code == 2
    assert message in output
    assert "Traceback" not in output
    assert not list(artifacts.glob("boot-test-*"))


# --------------------------------------------------------------------------------------
# --network netns: options, and a boot through pxe-server in boot-test's own namespace


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--firmware", "uefi"], "--firmware uefi: boots through --network netns only"),
        (["--hostname", "n1"], "--hostname n1: only means something with --network netns"),
        (
            ["--netns-subnet", "10.9.0.0/24"],
            "--netns-subnet 10.9.0.0/24: only means something with --network netns",
        ),
        (
            ["--network", "netns", "--firmware", "uefi", "--nic", "e1000"],
            "--nic e1000 --firmware uefi: OVMF has no driver of its own for this NIC",
        ),
        (["--network", "netns", "--hostname", "N_1"], "--hostname 'N_1': expected a lowercase"),
        (["--network", "netns", "--netns-subnet", "10.9.0.1/24"], "--netns-subnet '10.9.0.1/24'"),
    ],
)
def test_netns_options_that_do_not_fit_are_bad_input(
    artifacts: Path, identity: Path, extra: list[str], message: str
) -> None:
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity), *extra
    )
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output
    assert not list(artifacts.glob("boot-test-*"))


def test_netns_needs_root(artifacts: Path, identity: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns_module.os, "geteuid", lambda: 1000)
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity),
        "--network", "netns",
    )  # fmt: skip
    assert code == 2
    assert "--network netns: needs root" in output
    assert not list(artifacts.glob("boot-test-*"))


def test_netns_without_dnsmasq_names_the_debian_package(
    artifacts: Path, identity: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-system-x86_64", "ssh", "ip"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    monkeypatch.setenv("PATH", str(bin_dir))
    code, output = invoke(
        "boot-test", "worker", "--artifacts", str(artifacts), "--identity", str(identity),
        "--network", "netns",
    )  # fmt: skip
    assert code == 2
    assert "required tool 'dnsmasq' was not found" in output
    assert "apt-get install dnsmasq-base" in output


def test_netns_with_a_profile_pxe_server_cannot_find_is_bad_input(
    artifacts: Path, identity: Path
) -> None:
    shutil.copytree(artifacts / "worker", artifacts / "edge")
    (artifacts / "edge" / "manifest.json").write_text(
        json.dumps({**MANIFEST, "profile": "edge", "label": "edge"})
    )
    code, output = invoke(
        "boot-test", "edge", "--artifacts", str(artifacts), "--identity", str(identity),
        "--network", "netns",
    )  # fmt: skip
    assert code == 2
    assert "pxe-server's inventory names the set's profile 'edge'" in output
    assert "--profiles-dir DIR" in output


def until_the_script_then(ending: BaseException) -> object:
    """A wait_for_ssh that lets the real chain run until the guest fetched its script from
    pxe-server (dnsmasq's DHCP, HTTP), then ends the boot as `ending` does."""

    def wait(vm: PxeVm, ssh: object, timeout: float) -> None:
        # the first script (boot.ipxe without ?mac=) only asks again with the MAC: wait for
        # serve's answer to that one, the machine's own script (a race under load)
        log = vm.watch.access_log
        assert log is not None

        def machine_script_served() -> bool:
            return "script_fetched" in vm.watch.events and b"boot: machine" in log.read_bytes()

        vm.wait_until(machine_script_served, 120, "the machine's script")
        raise ending

    return wait


@pytest.mark.parametrize(
    "ending",
    [WorkError("timed out after 1s waiting for the SSH server"), KeyboardInterrupt()],
    ids=["boot-fails", "ctrl-c"],
)
def test_a_netns_boot_goes_through_pxe_server_and_leaves_nothing_behind(
    artifacts: Path, identity: Path, monkeypatch: pytest.MonkeyPatch, ending: BaseException
) -> None:
    monkeypatch.setattr(boottest, "probe_accelerator", lambda *a, **k: TCG)
    monkeypatch.setattr(boottest, "wait_for_ssh", until_the_script_then(ending))
    # a script serve accepts, so the machine is named in its "boot:" line
    script = render_netboot_script("worker", MANIFEST["kernel_params"])  # type: ignore[arg-type]
    (artifacts / "worker" / "netboot.ipxe").write_text(script)
    options = BootTestOptions(
        "worker", artifacts, identity, memory_mib=256, network=Network.NETNS, hostname="w1"
    )
    if isinstance(ending, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            run_boot_test(options)
        assert not options.report_path.exists()
    else:
        report = run_boot_test(options)
        assert not report.ok and report.network == "netns" and report.firmware == "bios"
        assert report.checks[0].name == "boot 1: PXE to SSH" and report.checks[0].failed
        boot = report.boots[0]
        assert boot.ssh_host == "10.77.0.2" and boot.ssh_port == 22
        assert {"firmware_lease", "script_fetched"} <= set(boot.events)  # dnsmasq's ack
        assert boot.logs["pxe-server"] == str(options.workdir / "pxe-server.log")
        assert report.qemu_command[:4] == ["ip", "netns", "exec", namespace_name()]
    server_log = (options.workdir / "pxe-server.log").read_text()
    assert "DHCPACK(br0) 10.77.0.2 52:54:00:77:00:02 w1" in server_log
    assert "boot: machine w1 (MAC 52:54:00:77:00:02) from 10.77.0.2" in server_log
    assert (options.workdir / "machines.toml").is_file()
    # nothing is left: no QEMU, no pxe-server, no dnsmasq, no namespace
    assert not live_processes(str(options.workdir))
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace_name() not in names
