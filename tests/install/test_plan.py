"""install.plan: a layout and a disk's size -> the exact commands, the fstab, the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.install.layout import MIB, load_layout
from plasmaboot.install.plan import (
    Disk,
    Plan,
    check_disk_free,
    make_plan,
    match_disk,
    partition_device,
    read_disk_state,
    wipe_commands,
)

LAYOUTS = Path("layouts")
GIB = 1 << 30


def default_plan(size: int = 4 * GIB, device: str = "/dev/vda") -> Plan:
    return make_plan(load_layout(LAYOUTS / "default.toml"), [Disk(device, size)])


def test_the_default_layout_on_a_4g_disk() -> None:
    plan = default_plan()
    sizes = [(p.device, p.start // MIB, p.size // MIB) for p in plan.partitions]
    assert sizes == [("/dev/vda1", 1, 1), ("/dev/vda2", 2, 512), ("/dev/vda3", 514, 4096 - 514 - 1)]
    assert plan.partition_commands() == [
        ["sgdisk", "--zap-all", "/dev/vda"],
        [
            "sgdisk",
            "--new=1:2048:4095",
            "--typecode=1:21686148-6449-6E6F-744E-656564454649",
            "--change-name=1:bios_grub",
            "--new=2:4096:1052671",
            "--typecode=2:C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "--change-name=2:esp",
            f"--new=3:1052672:{(4096 - 1) * 2048 - 1}",
            "--typecode=3:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            "--change-name=3:root",
            "/dev/vda",
        ],
        ["partprobe", "/dev/vda"],
        ["udevadm", "settle"],
    ]
    assert plan.mkfs_commands() == [
        ["mkfs.vfat", "-F", "32", "-n", "ESP", "/dev/vda2"],
        ["mkfs.ext4", "-q", "-F", "-L", "root", "/dev/vda3"],
    ]
    assert plan.mount_commands("/mnt/t") == [
        ["mkdir", "-p", "/mnt/t"],
        ["mount", "-t", "ext4", "/dev/vda3", "/mnt/t"],
        ["mkdir", "-p", "/mnt/t/boot/efi"],
        ["mount", "-t", "vfat", "/dev/vda2", "/mnt/t/boot/efi"],
    ]


def test_partitions_end_inside_the_disk_and_do_not_overlap() -> None:
    plan = make_plan(load_layout(LAYOUTS / "control-plane.toml"), [Disk("/dev/vda", 10 * GIB)])
    ends = [p.start + p.size for p in plan.partitions]
    assert all(a <= b.start for a, b in zip(ends, plan.partitions[1:], strict=False))
    assert ends[-1] <= 10 * GIB - MIB and all(p.start % MIB == 0 for p in plan.partitions)


def test_fstab_names_every_filesystem_by_uuid() -> None:
    plan = default_plan()
    fstab = plan.fstab({"/dev/vda2": "AB12-CD34", "/dev/vda3": "1111-2222"})
    assert fstab.splitlines()[1:] == [
        "UUID=1111-2222\t/\text4\tdefaults\t0\t1",
        "UUID=AB12-CD34\t/boot/efi\tvfat\tumask=0077\t0\t2",
    ]


def test_a_disk_too_small_is_refused_before_any_command() -> None:
    with pytest.raises(UserError) as caught:
        make_plan(load_layout(LAYOUTS / "control-plane.toml"), [Disk("/dev/vda", 2 * GIB)])
    assert caught.value.message == (
        "disks[0]: /dev/vda is too small for the layout: it has 2GiB, "
        "the layout needs at least 4.6GiB"
    )


def test_percent_sizes_are_of_the_disk() -> None:
    layout = load_layout(LAYOUTS / "default.toml").model_copy()
    data = layout.model_dump(mode="json")
    data["disks"][0]["partitions"][2]["size"] = "50%"
    from plasmaboot.install.layout import parse_layout

    plan = make_plan(parse_layout(data, "x"), [Disk("/dev/vda", 10 * GIB)])
    assert plan.partitions[2].size == 5 * GIB


def test_luks_and_lvm_read_the_key_from_a_file_never_the_command_line() -> None:
    plan = make_plan(load_layout(LAYOUTS / "lvm-luks.toml"), [Disk("/dev/nvme0n1", 64 * GIB)])
    commands = plan.storage_commands("/run/plasmaboot-install/secrets")
    key = "--key-file=/run/plasmaboot-install/secrets/etc/plasmaboot/luks/root.key"
    assert commands[0] == [
        "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
        "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", key, "/dev/nvme0n1p4",
    ]  # fmt: skip
    assert commands[1] == ["cryptsetup", "open", key, "/dev/nvme0n1p4", "cryptlvm"]
    assert ["vgcreate", "--yes", "vg0", "/dev/mapper/cryptlvm"] in commands
    assert commands[-1][-5:] == ["-l", "100%FREE", "-n", "data", "vg0"]
    assert ["mkswap", "-L", "swap", "/dev/vg0/swap"] in plan.mkfs_commands()
    # it holds /: the initramfs opens it (cryptsetup-initramfs reads the `initramfs` option)
    assert plan.early == ("cryptlvm",)
    assert plan.crypttab({"/dev/nvme0n1p4": "u-1"}) == (
        "cryptlvm\tUUID=u-1\t/etc/plasmaboot/luks/root.key\tluks,initramfs\n"
    )
    assert [fs.mount for fs in plan.mounted()] == ["/", "/boot", "/boot/efi", "/var/lib"]


def test_the_script_is_one_shell_script_of_those_commands() -> None:
    script = default_plan().script("/run/s", "/mnt/t")
    assert script.startswith("set -eu\nsgdisk --zap-all /dev/vda\n")
    assert script.endswith("mount -t vfat /dev/vda2 /mnt/t/boot/efi\n")


def test_partition_names() -> None:
    assert partition_device("/dev/vda", 2) == "/dev/vda2"
    assert partition_device("/dev/nvme0n1", 2) == "/dev/nvme0n1p2"


def lsblk(children: list[dict[str, object]], mountpoint: str | None = None) -> str:
    disk = {"path": "/dev/vda", "size": 4 * GIB, "type": "disk", "mountpoint": mountpoint}
    return json.dumps({"blockdevices": [{**disk, "children": children}]})


def test_an_empty_disk_is_free() -> None:
    state = read_disk_state(lsblk([]), "")
    assert state.size == 4 * GIB and not state.partitions and not state.signatures
    check_disk_free(state, wipe=False)


def test_a_disk_with_partitions_needs_wipe() -> None:
    part = {"path": "/dev/vda1", "size": GIB, "type": "part", "mountpoint": None}
    signature = {"signatures": [{"device": "vda", "offset": "0x200", "type": "gpt"}]}
    state = read_disk_state(lsblk([part]), json.dumps(signature))
    with pytest.raises(UserError) as caught:
        check_disk_free(state, wipe=False)
    assert caught.value.message == "/dev/vda is not empty: partition /dev/vda1, gpt at 0x200 on vda"
    assert caught.value.hint is not None and "--wipe" in caught.value.hint
    check_disk_free(state, wipe=True)
    assert wipe_commands(state) == [
        ["wipefs", "--all", "--force", "/dev/vda1"],
        ["wipefs", "--all", "--force", "/dev/vda"],
    ]


def test_a_mounted_disk_is_refused_even_with_wipe() -> None:
    part = {"path": "/dev/vda1", "size": GIB, "type": "part", "mountpoint": "/srv"}
    with pytest.raises(UserError, match="in use"):
        check_disk_free(read_disk_state(lsblk([part]), ""), wipe=True)


DISKS = json.dumps(
    {
        "blockdevices": [
            {"path": "/dev/nvme0n1", "type": "disk"},
            {"path": "/dev/vda", "type": "disk"},
        ]
    }
)


def test_a_by_id_glob_names_one_disk() -> None:
    resolved = "/dev/nvme0n1\n/dev/nvme0n1\n/dev/nvme0n1p1\n"
    assert match_disk("/dev/disk/by-id/nvme-*", resolved, DISKS, "disks[0]") == "/dev/nvme0n1"


@pytest.mark.parametrize("resolved", ["", "/dev/nvme0n1\n/dev/vda\n", "/dev/disk/by-id/x*\n"])
def test_a_match_naming_no_disk_or_two_is_refused(resolved: str) -> None:
    with pytest.raises(UserError, match=r"disks\[0\]\.match: .* names [02] disks"):
        match_disk("/dev/disk/by-id/x*", resolved, DISKS, "disks[0]")
