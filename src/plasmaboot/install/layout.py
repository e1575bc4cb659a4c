"""Disk layouts (`layouts/<name>.toml`): which disks a machine is installed on and how they
are cut, as data. disko's ideas in our format; one model, its JSON Schema, located errors.

    [[disks]]
    match = "/dev/vda"                 # a path, or a /dev/disk/by-id/ glob

    [[disks.partitions]]
    type = "bios_grub"                 # bios_grub, esp, root, linux, swap, lvm
    size = "1M"                        # 1M, 512M, 20G, 50% (of the disk), rest (what is left)

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
    luks = { name = "cryptroot", key = "etc/luks/root.key" }  # optional; a secrets file

    [[volume_groups]]                  # optional LVM: partitions of type "lvm" name it
    name = "vg0"
    [[volume_groups.volumes]]
    name = "data"
    size = "rest"
    filesystem = "xfs"
    mount = "/var/lib/plasmacloud"

The model checks each value; `check_layout` checks what spans values (one root, one `rest`
per disk and last, mount points once, a type's filesystem), each error one located line.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from plasmaboot.errors import UserError
from plasmaboot.paths import NotASmallFile, data_dir, read_small_file
from plasmaboot.profiles.located_errors import (
    display_path,
    parse_toml,
    render_value,
    validate_data,
)

SIZE_PATTERN = r"^(rest|[1-9][0-9]{0,2}%|[1-9][0-9]{0,8}[KMGT])$"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,30}$"
MOUNT_PATTERN = r"^/([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$"
MATCH_PATTERN = r"^/dev/[A-Za-z0-9._:+@*?\[\]/-]+$"
KEY_PATTERN = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"

PATTERN_EXPECTATIONS: dict[str, str] = {
    SIZE_PATTERN: "a size like 1M, 512M, 20G, 50% or rest",
    NAME_PATTERN: "a name of lowercase letters, digits, '_' and '-' (at most 31)",
    MOUNT_PATTERN: "an absolute mount point like /boot/efi",
    MATCH_PATTERN: "a device path like /dev/vda or a glob like /dev/disk/by-id/nvme-*",
    KEY_PATTERN: "a path relative to the machine's secrets, like etc/luks/root.key",
}
MAX_LAYOUT_SIZE = 1 << 20
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIB = 1 << 20


class PartitionType(StrEnum):
    """What a GPT partition is for; each has its GPT type code and rules."""

    BIOS_GRUB = "bios_grub"
    ESP = "esp"
    ROOT = "root"
    LINUX = "linux"
    SWAP = "swap"
    LVM = "lvm"

    def gpt_type(self) -> str:
        """The partition type GUID (what sfdisk and sgdisk write)."""
        return {
            PartitionType.BIOS_GRUB: "21686148-6449-6E6F-744E-656564454649",
            PartitionType.ESP: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            PartitionType.ROOT: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # x86-64 root
            PartitionType.LINUX: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            PartitionType.SWAP: "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            PartitionType.LVM: "E6D6D379-F507-44C2-A23C-238F2A3DF928",
        }[self]


class Filesystem(StrEnum):
    EXT4 = "ext4"
    XFS = "xfs"
    VFAT = "vfat"
    SWAP = "swap"


# strict tables take enum members only; TOML gives strings, so these fields convert
TypeField = Annotated[PartitionType, Field(strict=False)]
FilesystemField = Annotated[Filesystem, Field(strict=False)]
Size = Annotated[str, Field(pattern=SIZE_PATTERN)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Mount = Annotated[str, Field(pattern=MOUNT_PATTERN, max_length=255)]


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Luks(Table):
    """LUKS2 around a partition; the key is a file of the machine's secrets, never inline."""

    name: Name = Field(description="The mapping's name (/dev/mapper/<name>).")
    key: str = Field(
        pattern=KEY_PATTERN,
        max_length=255,
        description="Key file, relative to the machine's secrets (--secrets DIR/<machine>/).",
    )


class Partition(Table):
    """One GPT partition, in disk order."""

    type: TypeField = Field(description="bios_grub, esp, root, linux, swap or lvm.")
    size: Size = Field(description="1M, 512M, 20G (binary units), 50% of the disk, or rest.")
    label: Name | None = Field(None, description="GPT partition name (default: the type).")
    filesystem: FilesystemField | None = Field(None, description="ext4, xfs, vfat or swap.")
    mount: Mount | None = Field(None, description="Where it is mounted (root: /).")
    options: list[Annotated[str, Field(pattern=r"^[a-z0-9_=,.-]{1,64}$")]] = Field(
        default_factory=list, description="Mount options for fstab (default: defaults)."
    )
    luks: Luks | None = Field(None, description="Encrypt with LUKS2 (key from the secrets).")
    volume_group: Name | None = Field(None, description="For type lvm: the volume group.")


class Volume(Table):
    """One LVM logical volume."""

    name: Name
    size: Size = Field(description="Like a partition's size; % is of the volume group.")
    filesystem: FilesystemField
    mount: Mount | None = None
    options: list[Annotated[str, Field(pattern=r"^[a-z0-9_=,.-]{1,64}$")]] = Field(
        default_factory=list
    )


class VolumeGroup(Table):
    name: Name
    volumes: list[Volume] = Field(min_length=1)


class Disk(Table):
    match: str = Field(
        pattern=MATCH_PATTERN,
        max_length=255,
        description="A device path (/dev/vda) or a /dev/disk/by-id/ glob matching one disk.",
    )
    partitions: list[Partition] = Field(min_length=1, max_length=128)


class Layout(Table):
    """A whole layout file."""

    description: str = Field("", max_length=200)
    disks: list[Disk] = Field(min_length=1, max_length=16)
    volume_groups: list[VolumeGroup] = Field(default_factory=list)

    def mounts(self) -> list[tuple[str, str]]:
        """(mount point, what: `disks[0].partitions[2]` or `vg0/data`), every mounted thing."""
        found: list[tuple[str, str]] = []
        for d, disk in enumerate(self.disks):
            for p, part in enumerate(disk.partitions):
                if part.mount:
                    found.append((part.mount, f"disks[{d}].partitions[{p}]"))
        for group in self.volume_groups:
            for volume in group.volumes:
                if volume.mount:
                    found.append((volume.mount, f"{group.name}/{volume.name}"))
        return found

    def encrypted_mounts(self) -> dict[str, str]:
        """Mount point -> the LUKS mapping it lies in: a filesystem on an encrypted
        partition, or a volume of a group whose partition is encrypted."""
        by_group: dict[str, str] = {}
        found: dict[str, str] = {}
        for disk in self.disks:
            for part in disk.partitions:
                if part.luks and part.volume_group:
                    by_group[part.volume_group] = part.luks.name
                elif part.luks and part.mount:
                    found[part.mount] = part.luks.name
        for group in self.volume_groups:
            for volume in group.volumes:
                if volume.mount and group.name in by_group:
                    found[volume.mount] = by_group[group.name]
        return found

    def early_mappings(self) -> list[str]:
        """The LUKS mappings the initramfs must open: those holding / or /usr (what is
        mounted later is opened by systemd from /etc/crypttab)."""
        encrypted = self.encrypted_mounts()
        return list(dict.fromkeys(encrypted[m] for m in ("/", "/usr") if m in encrypted))

    def has_bios_grub(self) -> bool:
        return any(p.type is PartitionType.BIOS_GRUB for d in self.disks for p in d.partitions)

    def esp_mount(self) -> str | None:
        for disk in self.disks:
            for part in disk.partitions:
                if part.type is PartitionType.ESP:
                    return part.mount
        return None


def builtin_layouts_dir() -> Path:
    return data_dir() / "layouts"


def default_layout_path(profile: str, inventory: Path | None) -> Path:
    """A machine's layout when the inventory names none: `layouts/<profile>.toml` beside the
    inventory, else the built-in `layouts/<profile>.toml`, else the built-in default."""
    candidates = [builtin_layouts_dir() / f"{profile}.toml"]
    if inventory is not None:
        candidates.insert(0, inventory.parent / "layouts" / f"{profile}.toml")
    return next((c for c in candidates if c.is_file()), builtin_layouts_dir() / "default.toml")


def parse_size(size: str, whole: int) -> int | None:
    """Bytes of a size against `whole` bytes; None for `rest`."""
    if size == "rest":
        return None
    if size.endswith("%"):
        return whole * int(size[:-1]) // 100 // MIB * MIB
    return int(size[:-1]) * UNITS[size[-1]]


def load_layout(path: Path) -> Layout:
    """Read and check a layout file; UserError naming the file and key on any problem."""
    display = display_path(path)
    try:
        raw = read_small_file(path, MAX_LAYOUT_SIZE)
    except OSError as exc:
        raise UserError(
            f"{display}: cannot read layout ({exc.strerror})",
            hint="name a layout file (see docs/install.md)",
        ) from exc
    except NotASmallFile as exc:
        raise UserError(f"{display}: not a layout file ({exc})") from exc
    return parse_layout(parse_toml(raw, path), display)


def parse_layout(data: Any, where: str) -> Layout:
    layout = validate_data(Layout, data, where, PATTERN_EXPECTATIONS)
    check_layout(layout, where)
    return layout


FILESYSTEMS_OF: dict[PartitionType, set[Filesystem | None]] = {
    PartitionType.BIOS_GRUB: {None},
    PartitionType.ESP: {Filesystem.VFAT},
    PartitionType.ROOT: {Filesystem.EXT4, Filesystem.XFS},
    PartitionType.LINUX: {None, Filesystem.EXT4, Filesystem.XFS, Filesystem.VFAT},
    PartitionType.SWAP: {Filesystem.SWAP},
    PartitionType.LVM: {None},
}


def check_layout(layout: Layout, where: str) -> None:
    """What the model cannot say about one value: rules across partitions and disks."""
    groups = {group.name: group for group in layout.volume_groups}
    used_groups: set[str] = set()
    mapper_names: set[str] = set()
    for d, disk in enumerate(layout.disks):
        for p, part in enumerate(disk.partitions):
            at = f"{where}: disks[{d}].partitions[{p}]"
            check_partition(part, at, groups, used_groups, mapper_names)
            if part.size == "rest" and p != len(disk.partitions) - 1:
                raise UserError(
                    f"{at}.size: rest is only for a disk's last partition",
                    hint="give the partitions after it a size, or move it last",
                )
    for g, group in enumerate(layout.volume_groups):
        if group.name not in used_groups:
            raise UserError(
                f"{where}: volume_groups[{g}].name: no partition of type lvm names "
                f"{render_value(group.name)}",
                hint='add a partition with type = "lvm" and volume_group = "<name>"',
            )
        for v, volume in enumerate(group.volumes):
            at = f"{where}: volume_groups[{g}].volumes[{v}]"
            if volume.size == "rest" and v != len(group.volumes) - 1:
                raise UserError(f"{at}.size: rest is only for a group's last volume")
            if volume.mount and volume.filesystem is Filesystem.SWAP:
                raise UserError(f"{at}.mount: swap is not mounted")
    check_mounts(layout, where)


def check_partition(
    part: Partition,
    at: str,
    groups: dict[str, VolumeGroup],
    used_groups: set[str],
    mapper_names: set[str],
) -> None:
    allowed = FILESYSTEMS_OF[part.type]
    if part.filesystem not in allowed:
        names = sorted(f.value if f else "none" for f in allowed)
        raise UserError(
            f"{at}.filesystem: a {part.type.value} partition takes {' or '.join(names)}, "
            f"got {render_value(part.filesystem.value if part.filesystem else None)}"
        )
    if part.type is PartitionType.ROOT and part.mount not in (None, "/"):
        raise UserError(f"{at}.mount: the root partition is mounted at /, got {part.mount!r}")
    if part.mount and part.filesystem in (None, Filesystem.SWAP):
        raise UserError(f"{at}.mount: a partition with no filesystem is not mounted")
    if part.type is PartitionType.BIOS_GRUB and part.luks:
        raise UserError(f"{at}.luks: GRUB's BIOS boot partition cannot be encrypted")
    if part.type is PartitionType.ESP and part.luks:
        raise UserError(f"{at}.luks: the firmware cannot read an encrypted ESP")
    if part.luks:
        if {".", ".."} & set(part.luks.key.split("/")):
            raise UserError(
                f"{at}.luks.key: expected {PATTERN_EXPECTATIONS[KEY_PATTERN]}, "
                f"got {render_value(part.luks.key)}"
            )
        if part.luks.name in mapper_names:
            raise UserError(f"{at}.luks.name: {part.luks.name!r} is used twice")
        mapper_names.add(part.luks.name)
    if part.type is PartitionType.LVM:
        if part.volume_group is None or part.volume_group not in groups:
            raise UserError(
                f"{at}.volume_group: expected one of [[volume_groups]]'s names, "
                f"got {render_value(part.volume_group)}",
                hint="an lvm partition names the volume group it holds",
            )
        if part.volume_group in used_groups:
            raise UserError(f"{at}.volume_group: one partition per volume group (for now)")
        used_groups.add(part.volume_group)
    elif part.volume_group is not None:
        raise UserError(f"{at}.volume_group: only a partition of type lvm has one")


def check_mounts(layout: Layout, where: str) -> None:
    seen: dict[str, str] = {}
    for mount, what in layout.mounts():
        if ".." in PurePosixPath(mount).parts or "/./" in f"{mount}/":
            raise UserError(f"{where}: {what}.mount: expected a plain path, got {mount!r}")
        if mount in seen:
            raise UserError(f"{where}: {what}.mount: {mount} is already {seen[mount]}'s")
        seen[mount] = what
    if "/" not in seen:
        raise UserError(
            f"{where}: no root filesystem (nothing is mounted at /)",
            hint='add a partition with type = "root" (or an LVM volume with mount = "/")',
        )
    roots = [p for d in layout.disks for p in d.partitions if p.type is PartitionType.ROOT]
    if len(roots) > 1:
        raise UserError(f"{where}: more than one partition of type root")
    check_encrypted_boot(layout, where, seen)
    if not re.fullmatch(r"/boot/efi|/efi|/boot", layout.esp_mount() or "/boot/efi"):
        raise UserError(
            f"{where}: the ESP is mounted at {layout.esp_mount()}",
            hint="mount the ESP at /boot/efi (or /efi or /boot)",
        )


def check_encrypted_boot(layout: Layout, where: str, mounts: dict[str, str]) -> None:
    """The boot loader reads the kernel and initramfs from /boot (or the ESP) before
    anything is unlocked: /boot stays out of LUKS, and an encrypted root needs its own
    /boot."""
    encrypted = layout.encrypted_mounts()
    for mount in ("/boot", "/boot/efi", "/efi"):
        if mount in encrypted:
            raise UserError(
                f"{where}: {mounts[mount]}: {mount} is encrypted ({encrypted[mount]}), and "
                "the boot loader reads it before anything is unlocked",
                hint=f"put {mount} on a partition without luks",
            )
    if "/" in encrypted and "/boot" not in mounts:
        raise UserError(
            f"{where}: {mounts['/']}: the root is encrypted ({encrypted['/']}) and /boot "
            "lies on it: the boot loader could not read the kernel",
            hint='add a partition without luks for /boot (type = "linux", size = "1G", '
            'filesystem = "ext4", mount = "/boot") before the encrypted one',
        )


def layout_json_schema() -> dict[str, object]:
    """JSON Schema of a layout file, for editors (`plasmaboot install schema`)."""
    schema = Layout.model_json_schema()
    schema["title"] = "plasmaboot disk layout"
    schema["$id"] = "https://plasmacloud.dev/schemas/plasmaboot-layout.json"
    return schema
