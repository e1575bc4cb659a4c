"""boot.provisioning: the addresses of --netns-subnet, the machine's host name, the
inventory it writes (read back by the inventory loader pxe-server uses), the pxe-server
command, what is refused before anything starts, and (as root) the namespace with
pxe-server running inside, all gone after."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from plasmaboot.boot.netns import Netns, namespace_name
from plasmaboot.boot.provisioning import (
    INVENTORY,
    MACHINE_MAC,
    SERVER_LOG,
    SERVER_READY,
    Addresses,
    Provisioned,
    inventory_text,
    machine_hostname,
    make_machine,
    parse_subnet,
    plan_addresses,
    plan_provisioning,
    provisioning_network,
    pxe_server_argv,
    server_failure,
    wait_for_report,
    write_known_hosts,
)
from plasmaboot.boot.qemu import TapNetwork
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.inventory.load import load_inventory
from plasmaboot.inventory.state import record_host_keys
from plasmaboot.log import Log
from plasmaboot.profiles.store import ProfileStore

from conftest import live_processes, make_keypair


def test_the_default_network_puts_server_machine_and_range_apart() -> None:
    addresses = plan_addresses(parse_subnet("10.77.0.0/24"))
    assert addresses == Addresses(
        server=ipaddress.IPv4Interface("10.77.0.1/24"),
        machine=ipaddress.IPv4Interface("10.77.0.2/24"),
        dhcp_range=(ipaddress.IPv4Address("10.77.0.3"), ipaddress.IPv4Address("10.77.0.52")),
    )


def test_the_smallest_network_still_has_a_range_below_its_broadcast() -> None:
    addresses = plan_addresses(parse_subnet("192.168.9.8/29"))
    assert str(addresses.server) == "192.168.9.9/29"
    assert str(addresses.machine) == "192.168.9.10/29"
    assert [str(a) for a in addresses.dhcp_range] == ["192.168.9.11", "192.168.9.14"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.77.0.1/24", "--netns-subnet '10.77.0.1/24': expected an IPv4 network like"),
        ("lab", "--netns-subnet 'lab': expected an IPv4 network like"),
        ("10.77.0.0/30", "--netns-subnet 10.77.0.0/30: too small; expected /29 or larger"),
    ],
)
def test_a_subnet_that_cannot_hold_the_network_is_bad_input(value: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as refused:
        parse_subnet(value)
    assert refused.value.exit_code == 2


def test_the_machine_is_named_after_the_label_unless_told() -> None:
    assert machine_hostname("control-plane", None) == "control-plane"
    assert machine_hostname("control-plane", "cp1.lab") == "cp1.lab"
    with pytest.raises(UserError, match=r"--hostname 'CP_1': expected a lowercase host name"):
        machine_hostname("control-plane", "CP_1")
    with pytest.raises(UserError, match="the label is not a host name") as refused:
        machine_hostname("x" * 64, None)
    assert refused.value.hint == "give the machine a name: --hostname node1"


@pytest.mark.parametrize("name", ["600", "ignore", "infinite", "node.10"])
def test_a_host_name_dnsmasq_would_misread_is_refused_as_the_inventory_refuses_it(
    name: str,
) -> None:
    with pytest.raises(UserError, match=r"--hostname .*is not usable as a host name"):
        machine_hostname("control-plane", name)


def test_the_inventory_written_is_the_machine_pxe_server_reads(tmp_path: Path) -> None:
    machine = make_machine("control-plane", "debug", "cp1.lab", "10.77.0.2/24")
    path = tmp_path / INVENTORY
    path.write_text(inventory_text(machine))
    inventory = load_inventory(path, ProfileStore())
    assert inventory.machines == {"cp1": machine}
    assert inventory.find(MACHINE_MAC) == machine
    assert machine.label == "control-plane-debug"


def test_pxe_server_runs_in_this_python_with_the_profiles_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("profiles").mkdir()
    plan = plan_provisioning("worker", "worker", None, "w1", "10.77.0.0/24", (Path("profiles"),))
    assert plan.netns == namespace_name() and plan.address == "10.77.0.2"
    argv = pxe_server_argv(plan, Netns(plan.netns), Path("a"), Path("m.toml"))
    assert argv[:3] == [sys.executable, "-m", "plasmaboot"]
    # absolute: pxe-server may run elsewhere
    assert argv[3:6] == ["--profiles-dir", str(tmp_path / "profiles"), "pxe-server"]
    options = dict(zip(argv[6::2], argv[7::2], strict=True))
    assert options == {
        "--interface": "br0",
        "--root": str(tmp_path / "a"),
        "--inventory": str(tmp_path / "m.toml"),
        "--dhcp-range": "10.77.0.3,10.77.0.52",
        "--http-port": "8080",
    }


def test_a_profile_pxe_server_could_not_find_is_bad_input() -> None:
    with pytest.raises(UserError, match="names the set's profile 'ci-node', which is in no "):
        plan_provisioning("ci-node", "ci-node", None, None, "10.77.0.0/24", ())
    with pytest.raises(UserError, match="names the set's variant 'nosuch'"):
        plan_provisioning("worker-nosuch", "worker", "nosuch", None, "10.77.0.0/24", ())


def test_a_set_not_named_after_its_profile_is_bad_input() -> None:
    with pytest.raises(UserError, match="from the set 'worker', not 'nightly'") as refused:
        plan_provisioning("nightly", "worker", None, None, "10.77.0.0/24", ())
    assert refused.value.hint == "boot-test the set named after its profile: worker"


def test_pxe_servers_own_refusal_stays_a_refusal() -> None:
    output = "error: --root /x: no such directory\nhint: pass the directory\n"
    refused = server_failure(2, output, Path("pxe-server.log"))
    assert isinstance(refused, UserError)
    assert refused.message == "pxe-server refused to start: --root /x: no such directory"
    assert refused.hint == "pass the directory"
    crashed = server_failure(1, "failed: dnsmasq exited with code 2\n", Path("pxe-server.log"))
    assert isinstance(crashed, WorkError)
    assert "exited with code 1 before serving" in crashed.message
    assert "dnsmasq exited with code 2" in crashed.message


def fake_set(root: Path, label: str) -> None:
    (root / label).mkdir(parents=True)
    for name in ("bzImage", "initrd", "manifest.json"):
        (root / label / name).write_text("x")
    (root / label / "netboot.ipxe").write_text(render_netboot_script(label, ["console=ttyS0"]))


def test_pxe_server_runs_in_the_namespace_and_everything_goes_after(tmp_path: Path) -> None:
    fake_set(tmp_path / "artifacts", "worker")
    work = tmp_path / "work"
    work.mkdir()
    plan = plan_provisioning("worker", "worker", None, "w1", "10.77.0.0/24", ())
    with (
        Log(work / "boot-test.log", subject="worker") as log,
        pytest.raises(KeyboardInterrupt),  # as Ctrl-C in the middle of a boot
        provisioning_network(plan, tmp_path / "artifacts", work, log) as provisioned,
    ):
        assert SERVER_READY in (work / SERVER_LOG).read_text()
        assert provisioned.address == "10.77.0.2" and provisioned.hostname == "w1"
        assert provisioned.guest.mac == MACHINE_MAC
        running = live_processes(str(work / INVENTORY))  # pxe-server
        assert running
        inside = provisioned.netns.pids()
        assert len(inside) == 2  # pxe-server and its dnsmasq
        # its HTTP server answers inside the namespace, and the machine's script
        # names the machine
        url = "http://10.77.0.1:8080/boot.ipxe?mac=" + MACHINE_MAC
        fetched = subprocess.run(
            provisioned.netns.argv([sys.executable, "-c", PRINT_URL, url]),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "systemd.hostname=w1" in fetched.stdout, fetched.stderr
        raise KeyboardInterrupt
    assert not live_processes(str(work / INVENTORY))
    assert all(not Path(f"/proc/{pid}").exists() for pid in inside)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert plan.netns not in names
    assert (work / INVENTORY).read_text() == inventory_text(plan.machine)
    assert "stopped" in (work / SERVER_LOG).read_text()  # pxe-server stopped itself cleanly


PRINT_URL = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"


def test_boot_test_waits_for_this_boots_report_and_writes_known_hosts(tmp_path: Path) -> None:
    inventory = tmp_path / "machines.toml"
    provisioned = Provisioned(
        netns=Netns("pb-x"), server_log=tmp_path / "log", guest=TapNetwork("tap0", MACHINE_MAC),
        address="10.77.0.2", hostname="node1.lab", inventory=inventory, machine="node1",
    )  # fmt: skip
    key = " ".join(make_keypair(tmp_path, "host").with_suffix(".pub").read_text().split()[:2])
    assert wait_for_report(provisioned, after=None, timeout=0) is None  # nothing reported
    record_host_keys(inventory, "node1", "10.77.0.2", "boot1", [key])
    record = wait_for_report(provisioned, after=None, timeout=0)
    assert record is not None and record.keys == (key,)
    assert wait_for_report(provisioned, after="boot1", timeout=0) is None  # the last boot's
    known = write_known_hosts(tmp_path / "known_hosts", provisioned, record)
    assert known.read_text() == f"node1.lab,10.77.0.2 {key}\n"
