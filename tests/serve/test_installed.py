"""serve.installed: an installed machine's next PXE boot gets "boot from the local disk"
until `machines reinstall` clears it; other machines are not affected."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.cli import main
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.inventory.installed import is_installed, mark_installed
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.installed import LOCAL_BOOT_SCRIPT
from plasmaboot.serve.machines import InventoryWatch

INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"

[machines.w2]
mac = "52:54:00:12:34:02"
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "machines.toml"
    path.write_text(INVENTORY)
    return path


@pytest.fixture
def server(tmp_path: Path, inventory: Path) -> Iterator[ServerThread]:
    source = tmp_path / "worker"
    source.mkdir()
    for name in (KERNEL, INITRD, MANIFEST):
        (source / name).write_bytes(name.encode())
    (source / IPXE).write_text(render_netboot_script("worker", ["console=ttyS0,115200"]))
    publish_atomically(source, tmp_path / "artifacts", "worker", (KERNEL, INITRD, IPXE, MANIFEST))
    watch = InventoryWatch(inventory, ProfileStore())
    with ServerThread(tmp_path / "artifacts", access_log=tmp_path / "a.log", inventory=watch) as s:
        yield s


def boot_script(server: ServerThread, mac: str) -> str:
    url = server.base_url + "/boot.ipxe?mac=" + urllib.parse.quote(mac)
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_the_local_boot_script_is_the_contracts() -> None:
    assert "iseq ${platform} efi && exit 1 || sanboot --no-describe --drive 0x80\n" in (
        LOCAL_BOOT_SCRIPT
    )


def test_an_installed_machine_boots_its_disk_until_reinstall(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    assert "kernel " in boot_script(server, "52:54:00:12:34:01")
    mark_installed(inventory, "w1", "worker-abc", tmp_path / "report.json")
    assert (inventory.parent / "machines.state" / "installed").stat().st_mode & 0o777 == 0o700
    assert boot_script(server, "52:54:00:12:34:01") == LOCAL_BOOT_SCRIPT
    assert "kernel " in boot_script(server, "52:54:00:12:34:02")
    result = CliRunner().invoke(
        main, ["machines", "reinstall", "w1", "--inventory", str(inventory)]
    )
    assert result.exit_code == 0 and "marked for reinstall" in result.output
    assert not is_installed(inventory, "w1")
    assert "kernel " in boot_script(server, "52:54:00:12:34:01")


def test_reinstall_of_an_unknown_machine_is_a_user_error(inventory: Path) -> None:
    result = CliRunner().invoke(
        main, ["machines", "reinstall", "w9", "--inventory", str(inventory)]
    )
    assert result.exit_code == 2 and "no machine 'w9'" in result.output


def test_a_record_that_is_not_plasmaboots_is_ignored(inventory: Path) -> None:
    path = inventory.parent / "machines.state" / "installed" / "w1.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"machine": "w2"}')
    assert not is_installed(inventory, "w1")
    path.write_text("not json")
    assert not is_installed(inventory, "w1")
