"""The units changed for the boot from RAM only (runtime_units.py): what stage-1's segment
carries to /run/systemd/system. Stage-1's copy is tested in test_stage1.py; the CI image's
segment in tests/integration/test_debian_build.py."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from plasmaboot.image.backends.debian.backend import stage1_entries
from plasmaboot.image.backends.debian.contract import HookResult
from plasmaboot.image.backends.debian.runtime_units import (
    DROP_INS,
    MASKED_AT_NETBOOT,
    RUNTIME_UNITS,
    UDEV_NET_FIRST,
    runtime_unit_entries,
)

UNIT_NAME = re.compile(r"^[a-z0-9_.-]+(@[a-z0-9_]+)?\.(service|socket|mount|timer)$")


def by_name() -> dict[str, tuple[int, str | None, bytes | None]]:
    return {e.name: (e.mode, e.link_target, e.data) for e in runtime_unit_entries()}


def test_each_masked_unit_is_a_link_to_dev_null() -> None:
    entries = by_name()
    for unit in MASKED_AT_NETBOOT:
        mode, target, _ = entries[f"{RUNTIME_UNITS}/{unit}"]
        assert stat.S_ISLNK(mode) and target == "/dev/null", unit
        assert UNIT_NAME.match(unit), unit


def test_the_units_that_pull_module_loads_are_masked() -> None:
    """repart pulls modprobe@loop and @dm_mod, pstore pulls @efi_pstore, logind @drm."""
    assert {
        "systemd-repart.service",
        "systemd-pstore.service",
        "modprobe@drm.service",
    } <= set(MASKED_AT_NETBOOT)


def test_a_masked_unit_another_requires_is_masked_with_it() -> None:
    """systemd-update-utmp-runlevel Requires= systemd-update-utmp: masking only the
    second would fail the first (boot-test's "no failed units")."""
    utmp = {"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service"}
    assert utmp <= set(MASKED_AT_NETBOOT) or not utmp & set(MASKED_AT_NETBOOT)


def test_what_the_boot_needs_is_never_masked() -> None:
    needed = {
        "ssh.service",
        "systemd-udevd.service",
        "systemd-udev-trigger.service",
        "systemd-networkd.service",
        "systemd-journald.service",
        "systemd-tmpfiles-setup-dev.service",
        "systemd-network-generator.service",  # ip= on a profile's kernel line
        "plasmaboot-ssh-hostkeys.service",
    }
    assert not needed & set(MASKED_AT_NETBOOT)


def test_udev_triggers_the_network_controllers_first_and_waits_for_them() -> None:
    entries = by_name()
    mode, _, data = entries[
        f"{RUNTIME_UNITS}/systemd-udev-trigger.service.d/50-plasmaboot-net-first.conf"
    ]
    assert stat.S_ISREG(mode) and data == UDEV_NET_FIRST.encode()
    commands = [
        line.removeprefix("ExecStartPre=")
        for line in UDEV_NET_FIRST.splitlines()
        if line.startswith("ExecStartPre=")
    ]
    assert commands == [
        "-udevadm trigger --action=add --settle --subsystem-match=pci --attr-match=class=0x02*",
        "-udevadm trigger --action=add --settle --subsystem-match=virtio",
    ]
    # added before Debian's own ExecStart (the full coldplug), never replacing it
    assert "ExecStart=" not in UDEV_NET_FIRST.replace("ExecStartPre=", "")


def test_every_drop_in_has_its_directory_first() -> None:
    names = [e.name for e in runtime_unit_entries()]
    assert names[0] == RUNTIME_UNITS
    for path in DROP_INS:
        directory = f"{RUNTIME_UNITS}/{path.rsplit('/', 1)[0]}"
        assert names.index(directory) < names.index(f"{RUNTIME_UNITS}/{path}")


def test_stage1_carries_the_runtime_units(tmp_path: Path) -> None:
    hook = HookResult(
        kernel=tmp_path / "bzImage",
        kernel_version="6.12.0-99-amd64",
        root_squashfs=tmp_path / "root.squashfs",
        stage1_modules=(),
        stage1_order=tmp_path / "stage1-modules.txt",
        packages={},
        steps={},
    )
    names = {entry.name for entry in stage1_entries(hook)}
    assert {e.name for e in runtime_unit_entries()} <= names
