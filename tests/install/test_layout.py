"""install.layout: the layout files, their rules across values, sizes, defaults, the schema,
and layouts named by the inventory."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.install.layout import (
    Filesystem,
    PartitionType,
    builtin_layouts_dir,
    default_layout_path,
    layout_json_schema,
    load_layout,
    parse_size,
)
from plasmaboot.inventory.load import load_inventory
from plasmaboot.profiles.store import ProfileStore

ISSUE_EXAMPLE = """\
[[disks]]
match = "/dev/vda"

[[disks.partitions]]
type = "bios_grub"
size = "1M"

[[disks.partitions]]
type = "esp"
size = "512M"
filesystem = "vfat"
mount = "/boot/efi"

[[disks.partitions]]
type = "root"
size = "rest"
filesystem = "ext4"
mount = "/"
"""


def write(tmp_path: Path, text: str, name: str = "layout.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as caught:
        load_layout(write(tmp_path, text))
    message = caught.value.message
    assert message.startswith(str(tmp_path / "layout.toml")) or message.startswith("layout.toml")
    assert "\n" not in message
    return message


def test_the_issue_example_loads_as_written(tmp_path: Path) -> None:
    layout = load_layout(write(tmp_path, ISSUE_EXAMPLE))
    parts = layout.disks[0].partitions
    assert [p.type for p in parts] == [
        PartitionType.BIOS_GRUB,
        PartitionType.ESP,
        PartitionType.ROOT,
    ]
    assert parts[1].filesystem is Filesystem.VFAT and parts[2].size == "rest"
    assert layout.has_bios_grub() and layout.esp_mount() == "/boot/efi"
    assert layout.mounts() == [
        ("/boot/efi", "disks[0].partitions[1]"),
        ("/", "disks[0].partitions[2]"),
    ]


@pytest.mark.parametrize("path", sorted(Path("layouts").glob("*.toml")), ids=str)
def test_every_shipped_layout_loads(path: Path) -> None:
    assert ("/", path.name) != load_layout(path).mounts()[0]
    assert any(mount == "/" for mount, _ in load_layout(path).mounts())


def test_the_encrypted_example_names_its_key_and_its_volume_group() -> None:
    layout = load_layout(builtin_layouts_dir() / "lvm-luks.toml")
    keys = [p.luks.key for p in layout.disks[0].partitions if p.luks]
    assert keys == ["etc/plasmaboot/luks/root.key"]
    assert [v.name for v in layout.volume_groups[0].volumes] == ["root", "swap", "data"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('size = "1M"', 'size = "1Q"'), "partitions[0].size: expected a size like 1M"),
        (('type = "bios_grub"', 'type = "boot"'), "partitions[0].type: input should be"),
        (('filesystem = "vfat"', 'filesystem = "ext4"'), "partitions[1].filesystem: a esp "),
        (('mount = "/boot/efi"', 'mount = "boot"'), "partitions[1].mount: expected an absolute"),
        (
            ('mount = "/"', 'mount = "/srv"'),
            "partitions[2].mount: the root partition is mounted at /",
        ),
        (
            ('match = "/dev/vda"', 'match = "vda; rm -rf /"'),
            "disks[0].match: expected a device path",
        ),
        (('size = "512M"', 'size = "rest"'), "partitions[1].size: rest is only for a disk's last"),
        (
            ('type = "bios_grub"', 'type = "bios_grub"\nsizes = 1'),
            "partitions[0].sizes: unknown key",
        ),
        (('mount = "/boot/efi"', 'mount = "/"'), "mount: / is already"),
    ],
)
def test_a_bad_value_is_one_located_line(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    text = ISSUE_EXAMPLE.replace(*edit, 1)
    assert text != ISSUE_EXAMPLE
    assert expected in error_of(tmp_path, text)


def test_a_layout_without_root_is_refused(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace('type = "root"', 'type = "linux"').replace(
        'mount = "/"', 'mount = "/srv"'
    )
    assert "no root filesystem" in error_of(tmp_path, text)


def test_an_lvm_partition_names_a_declared_group(tmp_path: Path) -> None:
    text = (
        ISSUE_EXAMPLE
        + '[[disks]]\nmatch = "/dev/vdb"\n[[disks.partitions]]\n'
        + 'type = "lvm"\nsize = "rest"\nvolume_group = "vg9"\n'
    )
    assert "disks[1].partitions[0].volume_group: expected one of" in error_of(tmp_path, text)


def test_a_volume_group_nobody_holds_is_refused(tmp_path: Path) -> None:
    text = (
        ISSUE_EXAMPLE
        + '[[volume_groups]]\nname = "vg0"\n[[volume_groups.volumes]]\n'
        + 'name = "x"\nsize = "1G"\nfilesystem = "ext4"\n'
    )
    assert "volume_groups[0].name: no partition of type lvm" in error_of(tmp_path, text)


def test_an_encrypted_esp_is_refused(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace(
        'mount = "/boot/efi"', 'mount = "/boot/efi"\nluks = { name = "c", key = "k" }'
    )
    assert "partitions[1].luks: the firmware cannot read" in error_of(tmp_path, text)


def test_a_luks_key_stays_inside_the_secrets(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace('mount = "/"', 'mount = "/"\nluks = { name = "c", key = "../k" }')
    assert "luks.key: expected a path relative to the machine's secrets" in error_of(tmp_path, text)


def test_sizes() -> None:
    gib = 1 << 30
    assert parse_size("1M", 10 * gib) == 1 << 20
    assert parse_size("20G", 10 * gib) == 20 * gib
    assert parse_size("50%", 10 * gib) == 5 * gib
    assert parse_size("rest", 10 * gib) is None


def test_the_default_layout_follows_the_profile(tmp_path: Path) -> None:
    assert default_layout_path("worker", None).name == "default.toml"
    assert (
        default_layout_path("control-plane", None) == builtin_layouts_dir() / "control-plane.toml"
    )
    own = write(tmp_path, ISSUE_EXAMPLE, "layouts/worker.toml")
    assert default_layout_path("worker", tmp_path / "machines.toml") == own


def test_the_schema_describes_a_layout() -> None:
    schema = layout_json_schema()
    assert schema["title"] == "plasmaboot disk layout"
    assert "disks" in json.dumps(schema["properties"])


def inventory(tmp_path: Path, machine: str) -> Path:
    path = tmp_path / "machines.toml"
    path.write_text(
        f'[machines.cp1]\nmac = "52:54:00:12:34:01"\nprofile = "control-plane"\n{machine}'
    )
    return path


def test_the_inventory_names_a_layout_and_services(tmp_path: Path) -> None:
    write(tmp_path, ISSUE_EXAMPLE, "layouts/small.toml")
    path = inventory(tmp_path, 'layout = "layouts/small.toml"\nservices = ["iam", "chainfire"]\n')
    machine = load_inventory(path, ProfileStore()).machines["cp1"]
    assert machine.layout == str((tmp_path / "layouts/small.toml").resolve())
    assert machine.services == ("iam", "chainfire")


def test_an_inventory_without_them_leaves_them_unset(tmp_path: Path) -> None:
    machine = load_inventory(inventory(tmp_path, ""), ProfileStore()).machines["cp1"]
    assert machine.layout is None and machine.services is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('layout = "../outside.toml"\n', "machines.cp1.layout: expected a path inside"),
        (
            'layout = "layouts/missing.toml"\n',
            "machines.cp1.layout: layouts/missing.toml: cannot read",
        ),
        (
            'layout = "layouts/bad.toml"\n',
            "machines.cp1.layout: layouts/bad.toml: disks[0].partitions[0].size",
        ),
        (
            'services = ["iamm"]\n',
            "machines.cp1.services[0]: unknown service \"iamm\" (did you mean 'iam'?)",
        ),
        ('services = ["IAM"]\n', "machines.cp1.services[0]: expected a service name"),
    ],
)
def test_the_inventory_refuses_a_bad_layout_or_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, ISSUE_EXAMPLE.replace('"1M"', '"1Q"'), "layouts/bad.toml")
    with pytest.raises(UserError) as caught:
        load_inventory(inventory(tmp_path, line), ProfileStore())
    assert expected in caught.value.message


SRV_ON_LUKS = ISSUE_EXAMPLE.replace('size = "rest"', 'size = "2G"') + textwrap.dedent("""
    [[disks.partitions]]
    type = "linux"
    size = "rest"
    filesystem = "xfs"
    mount = "/srv"
    luks = { name = "srv", key = "etc/luks/srv.key" }
    """)


def test_what_lies_in_luks_and_what_the_initramfs_opens(tmp_path: Path) -> None:
    layout = load_layout(builtin_layouts_dir() / "lvm-luks.toml")
    assert layout.encrypted_mounts() == {"/": "cryptlvm", "/var/lib": "cryptlvm"}
    assert layout.early_mappings() == ["cryptlvm"]  # it holds /
    layout = load_layout(write(tmp_path, SRV_ON_LUKS))
    assert layout.encrypted_mounts() == {"/srv": "srv"} and layout.early_mappings() == []


def test_an_encrypted_boot_is_refused(tmp_path: Path) -> None:
    """The boot loader reads /boot before anything is unlocked."""
    text = SRV_ON_LUKS.replace('mount = "/srv"', 'mount = "/boot"')
    assert "partitions[3]: /boot is encrypted (srv), and the boot loader reads it" in error_of(
        tmp_path, text
    )


def test_an_encrypted_root_without_its_own_boot_is_refused(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace('mount = "/"', 'mount = "/"\nluks = { name = "c", key = "k.key" }')
    error = error_of(tmp_path, text)
    assert "partitions[2]: the root is encrypted (c) and /boot lies on it" in error
