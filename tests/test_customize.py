"""Pieces of the customize hook that need no chroot, run on a tree the test makes."""

from __future__ import annotations

import io
from pathlib import Path

from plasmaboot.build.customize import (
    UDEV_TRIGGER_UNIT,
    Context,
    Plan,
    prioritize_network_devices,
)
from plasmaboot.log import Log
from plasmaboot.paths import data_dir
from plasmaboot.profiles import ProfileStore

DROP_IN = "etc/systemd/system/systemd-udev-trigger.service.d/10-plasmaboot.conf"
BOOKWORM_TRIGGER = (
    "[Unit]\nDescription=Coldplug All udev Devices\n"
    "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
    "ExecStart=-udevadm trigger --type=all --action=add "
    "--prioritized-subsystem=module,block,tpmrm,net,tty,input\n"
)


def context(root: Path) -> Context:
    profile = ProfileStore([data_dir() / "profiles"]).resolve("control-plane")
    plan = Plan(profile=profile, authorized_keys="", squashfs_level=9)
    return Context(root=root, plan=plan, log=Log(stream=io.StringIO()), out=root / "out")


def write_trigger_unit(root: Path, text: str) -> None:
    unit = root / UDEV_TRIGGER_UNIT
    unit.parent.mkdir(parents=True)
    unit.write_text(text)


def test_network_devices_are_triggered_first_with_the_packages_own_command(
    tmp_path: Path,
) -> None:
    write_trigger_unit(tmp_path, BOOKWORM_TRIGGER)
    prioritize_network_devices(context(tmp_path))
    drop_in = (tmp_path / DROP_IN).read_text()
    lines = drop_in.splitlines()
    assert lines[1:] == [
        "[Service]",
        "ExecStart=",
        "ExecStart=-udevadm trigger --type=all --action=add "
        "--prioritized-subsystem=net,module,block,tpmrm,tty,input",
    ]


def test_an_unknown_trigger_command_is_left_alone(tmp_path: Path) -> None:
    write_trigger_unit(tmp_path, "[Service]\nExecStart=-udevadm trigger --action=add\n")
    prioritize_network_devices(context(tmp_path))
    assert not (tmp_path / DROP_IN).exists()
    prioritize_network_devices(context(tmp_path / "no-unit-at-all"))
    assert not (tmp_path / "no-unit-at-all" / DROP_IN).exists()
