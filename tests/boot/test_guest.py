"""boot.guest: the checks of a booted node, decided from what the guest prints (a fake SSH
here; the real one in tests/integration/test_boot_e2e.py), against the profile in the
manifest; the systemd value conversions; the tools a profile promises; the device-node
script run here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from plasmaboot.artifacts.manifest import Manifest
from plasmaboot.boot.guest import (
    DEVICE_NODES_SCRIPT,
    NIC_MTU_SCRIPT,
    STATIC_NODE_LISTS,
    Listener,
    check_host_keys,
    check_memory,
    cpu_quota_timespan,
    expected_unit_properties,
    guest_checks,
    judge_device_nodes,
    judge_listeners,
    judge_mtu,
    memory_bytes,
    module_name,
    parse_listeners,
    parse_show_blocks,
    promised_commands,
)
from plasmaboot.catalog import native_package_names, package_commands
from plasmaboot.errors import WorkError
from plasmaboot.profiles.model import ResolvedService
from plasmaboot.profiles.store import ProfileStore

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
    for tool in ("parted", "sgdisk", "cryptsetup", "lvm", "mkfs.ext4", "ip"):
        assert tool in commands
    # no xfsprogs in base (python3 and libicu come with it; install brings it for XFS)
    assert "mkfs.xfs" not in commands
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
    assert not check_memory({"mem_total_mib": 967, "mem_available_mib": 255}).passed


def test_a_small_machine_needs_128_mib_free() -> None:
    """Under 512 MiB (a 384 MiB guest reports ~338), 128 MiB for a shell and tools."""
    small = check_memory({"mem_total_mib": 338, "mem_available_mib": 167})
    assert small.passed and small.detail == "MemAvailable 167 MiB of 338 MiB (need 128 MiB)"
    assert not check_memory({"mem_total_mib": 338, "mem_available_mib": 127}).passed
    assert not check_memory({"mem_total_mib": 512, "mem_available_mib": 255}).passed


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
# the first boot's checks, against the profile in the manifest (not today's files)

WORKER = ProfileStore().resolve("worker")


class FakeGuest:
    """Answers the commands guest_checks sends, as a node would: each answer is picked by a
    piece of the command."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 0) -> tuple[int, str]:
        self.commands.append(command)
        for needle, answer in self.answers.items():
            if needle in command:
                return 0, answer
        return 0, ""

    def output(self, command: str, timeout: float = 0) -> str:
        return self.run(command, timeout)[1]

    def password_probe(self) -> tuple[int, str]:
        return 255, "debug1: Authentications that can continue: publickey\n"


def node_answers(unit_state: str) -> dict[str, str]:
    every_command = {c for alternatives in package_commands().values() for c in alternatives}
    show = "".join(
        f"Id={name}.service\nLoadState=loaded\nUnitFileState={unit_state}\n"
        "ActiveState=active\nMemoryMax=536870912\nCPUQuotaPerSecUSec=500ms\n\n"
        for name in ("plasmavmc", "novanet")
    )
    return {
        "/proc/cmdline": "initrd=initrd console=ttyS0,115200\n",
        "command -v": "\n".join(sorted(every_command)),
        "is-system-running": "running\n",
        "systemctl --failed": "",
        "systemctl show": show,
        "sysctl -n": "fs.file-max=42\nnet.ipv4.ip_forward=1\nnet.core.netdev_max_backlog=5000\n",
        "/proc/modules": "kvm 1 0 - Live\nopenvswitch 1 0 - Live\nvhost_net 1 0 - Live\n"
        "tun 1 0 - Live\n@@\n@@\n",
        "kexec --version": "ok tar\nok cpio\nok setsid --wait\nok kexec\n",
        "static-nodes": "list /etc/tmpfiles.d/static-nodes.conf\nok /dev/fuse\n",
        "MemTotal": "MemTotal: 2000000 kB\nMemAvailable: 1500000 kB\n",
        # a disabled plasmavmc does not run, so does not listen
        "ss -H": "".join(
            line
            for line in SS_NODE.splitlines(keepends=True)
            if unit_state == "enabled" or ":8081" not in line
        ),
    }


# a worker node with plasmavmc enabled: sshd on both families, plasmavmc, the DHCP client,
# resolved's stub on loopback
SS_NODE = """\
udp   UNCONN 0      0         127.0.0.54:53         0.0.0.0:*
udp   UNCONN 0      0      127.0.0.53%lo:53         0.0.0.0:*
udp   UNCONN 0      0   10.0.2.15%enp0s3:68         0.0.0.0:*
tcp   LISTEN 0      128          0.0.0.0:22         0.0.0.0:*
tcp   LISTEN 0      4096   127.0.0.53%lo:53         0.0.0.0:*
tcp   LISTEN 0      128             [::]:22            [::]:*
tcp   LISTEN 0      5          127.0.0.1:8081       0.0.0.0:*
tcp   LISTEN 0      5                  *:8081             *:*
"""


def built_manifest(**profile_changes: object) -> Manifest:
    profile = WORKER.model_copy(update=profile_changes)
    return Manifest(
        profile="worker",
        label="worker",
        content_hash=profile.content_hash(),
        resolved_profile=profile,
        cache_key="0" * 16,
        backend="debian",
        distro="bookworm",
        kernel_version="6.1.0-50-amd64",
        kernel_params=["console=ttyS0,115200"],
        files={},
        packages={},
        steps={},
        built_at="2026-01-01T00:00:00+00:00",
        plasmaboot_version="0.1.0",
    )


def test_the_first_boot_is_checked_against_the_built_profile() -> None:
    # built with fs.file-max 42 and plasmavmc enabled, whatever worker.toml says today
    enabled = WORKER.services["plasmavmc"].model_copy(update={"enable": True})
    manifest = built_manifest(
        sysctl={**WORKER.sysctl, "fs.file-max": 42},
        services={**WORKER.services, "plasmavmc": enabled},
    )
    guest = FakeGuest(node_answers("enabled"))
    checks, memory = guest_checks(guest, manifest)  # type: ignore[arg-type]
    results = {c.name: (str(c.result), c.detail) for c in checks}
    assert results["sysctl fs.file-max"] == ("pass", "42 (want 42)")
    assert results["service plasmavmc"][0] == "pass"
    assert "UnitFileState=enabled ActiveState=active" in results["service plasmavmc"][1]
    assert results["listening sockets"] == ("pass", "sshd 22/tcp, plasmavmc 8081/tcp")
    # novanet is not enabled in the build, and the node says enabled
    assert results["service novanet"] == (
        "fail",
        "UnitFileState=enabled (want disabled)",
    )
    assert {name for name, (result, _) in results.items() if result == "fail"} == {
        "service novanet"
    }
    assert memory == {"mem_total_mib": 1953, "mem_available_mib": 1464}
    assert list(results)[:3] == ["kernel command line", "tools on PATH", "password login refused"]


def test_a_check_whose_command_fails_is_a_failed_row_and_the_rest_still_run() -> None:
    class StoppedAnswering(FakeGuest):
        def output(self, command: str, timeout: float = 0) -> str:
            if "/proc/cmdline" in command:
                raise WorkError("over SSH, `cat /proc/cmdline` failed with exit code 255")
            return super().output(command, timeout)

    manifest = built_manifest(sysctl={**WORKER.sysctl, "fs.file-max": 42})
    guest = StoppedAnswering(node_answers("disabled"))
    checks, _ = guest_checks(guest, manifest)  # type: ignore[arg-type]
    assert checks[0].name == "kernel command line" and checks[0].failed
    assert "exit code 255" in checks[0].detail
    assert all(not c.failed for c in checks[1:]), [c for c in checks if c.failed]


def test_through_pxe_server_the_hostname_and_firmware_are_checked_too() -> None:
    manifest = built_manifest(sysctl={**WORKER.sysctl, "fs.file-max": 42})
    answers = {**node_answers("disabled"), "/sys/firmware/efi": "uefi\n", "hostname": "node1\n"}
    checks, _ = guest_checks(FakeGuest(answers), manifest, "node1", "uefi")  # type: ignore[arg-type]
    results = {c.name: (str(c.result), c.detail) for c in checks}
    assert results["hostname"] == ("pass", "node1 (the inventory's: node1)")
    assert results["firmware"] == ("pass", "booted under uefi (want uefi)")
    assert list(results)[-2:] == ["hostname", "firmware"]
    checks, _ = guest_checks(FakeGuest(answers), manifest, "node2", "bios")  # type: ignore[arg-type]
    results = {c.name: (str(c.result), c.detail) for c in checks}
    assert results["hostname"] == ("fail", "node1 (the inventory's: node2)")
    assert results["firmware"] == ("fail", "booted under uefi (want bios)")
    # on QEMU's user network there is no inventory: neither row
    checks, _ = guest_checks(FakeGuest(answers), manifest)  # type: ignore[arg-type]
    assert not {"hostname", "firmware"} & {c.name for c in checks}


def test_service_properties_come_from_the_resolved_service() -> None:
    service = WORKER.services["novanet"]
    assert expected_unit_properties(service) == {
        "LoadState": "loaded",
        "UnitFileState": "disabled",
        "MemoryMax": "536870912",
        "CPUQuotaPerSecUSec": "500ms",
    }
    unlimited = service.model_copy(update={"enable": True, "memory_max": None, "cpu_quota": None})
    assert expected_unit_properties(unlimited) == {
        "LoadState": "loaded",
        "UnitFileState": "enabled",
        "ActiveState": "active",  # an enabled service runs; a disabled one is not asked
    }


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


def test_the_built_profiles_mtu_is_checked_on_the_node() -> None:
    network = WORKER.network.model_copy(update={"mtu": 9000})
    answers = {**node_answers("disabled"), "/sys/class/net": "enp0s3 1500\n"}
    manifest = built_manifest(network=network)
    checks, _ = guest_checks(FakeGuest(answers), manifest)  # type: ignore[arg-type]
    (mtu,) = [c for c in checks if c.name == "network mtu"]
    assert mtu.failed and mtu.detail == "enp0s3 1500 (want 9000)"


# --------------------------------------------------------------------------------------
# listening sockets: sshd and the enabled services, nothing else on the network


def profile_with(**enabled: dict[str, int]) -> dict[str, ResolvedService]:
    """control-plane's services, these ones enabled on these ports."""
    services = dict(ProfileStore().resolve("control-plane").services)
    for name, ports in enabled.items():
        merged = {**services[name].ports, **ports}
        services[name] = services[name].model_copy(update={"enable": True, "ports": merged})
    return services


def ss(*sockets: str) -> str:
    """ss lines for `proto address:port` pairs."""
    return "".join(
        f"{proto}   {'LISTEN' if proto == 'tcp' else 'UNCONN'} 0  128  {local}  0.0.0.0:*\n"
        for proto, local in (socket.split() for socket in sockets)
    )


@pytest.mark.parametrize(
    ("sockets", "services", "verdict"),
    [
        (["tcp 0.0.0.0:22"], {}, "pass: sshd 22/tcp"),
        (["tcp [::]:22", "tcp *:22"], {}, "pass: sshd 22/tcp"),
        # what resolved did on every node: LLMNR on the whole segment
        (
            ["tcp 0.0.0.0:22", "udp 0.0.0.0:5355", "tcp [::]:5355"],
            {},
            "fail: unexpected: 0.0.0.0:5355/udp, [::]:5355/tcp",
        ),
        (["tcp 0.0.0.0:22", "udp 0.0.0.0:5353"], {}, "fail: unexpected: 0.0.0.0:5353/udp"),
        # loopback only (resolved's stub) and the DHCP clients are not listeners on the network
        (
            ["tcp 0.0.0.0:22", "udp 127.0.0.53%lo:53", "tcp [::1]:631", "udp 10.0.2.15%eth0:68"],
            {},
            "pass: sshd 22/tcp",
        ),
        (["udp [fe80::1]%eth0:546", "tcp 0.0.0.0:22"], {}, "pass: sshd 22/tcp"),
        (["tcp 0.0.0.0:68", "tcp 0.0.0.0:22"], {}, "fail: unexpected: 0.0.0.0:68/tcp"),
        ([], {}, "fail: not listening: sshd 22"),
        (["tcp 127.0.0.1:22"], {}, "fail: not listening: sshd 22"),
        (
            ["tcp 0.0.0.0:22", "udp 0.0.0.0:53", "tcp 0.0.0.0:53", "tcp *:8080"],
            {"flashdns": {}, "iam": {}},
            "pass: sshd 22/tcp, flashdns 53/tcp, flashdns 53/udp, iam 8080/tcp",
        ),
        (
            ["tcp 0.0.0.0:22", "tcp *:8080"],
            {"flashdns": {}, "iam": {}},
            "fail: not listening: flashdns 53",
        ),
        # a disabled service that listens anyway
        (["tcp 0.0.0.0:22", "tcp *:8080"], {}, "fail: unexpected: *:8080/tcp"),
        # every port of a service with several
        (
            ["tcp 0.0.0.0:22", "tcp *:2379", "tcp *:2380"],
            {"chainfire": {}},
            "fail: not listening: chainfire 2381",
        ),
        (
            ["tcp 0.0.0.0:22", "tcp *:2379", "tcp *:2380", "udp *:2381", "udp 0.0.0.0:9"],
            {"chainfire": {}},
            "fail: unexpected: 0.0.0.0:9/udp",
        ),
        (["tcp 0.0.0.0:22", "tcp *:1053"], {"flashdns": {"port": 1053}}, "pass"),
    ],
)
def test_only_sshd_and_the_enabled_services_listen(
    sockets: list[str], services: dict[str, dict[str, int]], verdict: str
) -> None:
    check = judge_listeners(parse_listeners(ss(*sockets)), profile_with(**services))
    result, _, detail = verdict.partition(": ")
    assert (str(check.result), check.detail if detail else "") == (result, detail)


def test_ss_lines_that_are_not_sockets_are_ignored() -> None:
    out = "State Recv-Q\nudp UNCONN 0 0 0.0.0.0:x 0.0.0.0:*\nraw UNCONN 0 0 0.0.0.0:1 x\n"
    assert parse_listeners(out) == []
    assert parse_listeners(ss("tcp [::ffff:10.0.0.1]:22")) == [
        Listener("tcp", "::ffff:10.0.0.1", 22)
    ]
