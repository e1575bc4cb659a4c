"""The plan: a layout and the disks found on the node -> the exact commands that partition,
encrypt, make volumes and filesystems, mount them under the target, and the fstab lines.
Pure (no I/O): what runs on the node is what this returns, and the tests read it.

Partitioning is sgdisk's (gdisk is in every image; sfdisk is not): sizes in 512-byte sectors,
every partition aligned to 1 MiB, the first at 1 MiB, the last MiB left for the backup GPT.
What the node says about a disk (lsblk and wipefs JSON) is read here too: a disk that holds
partitions or signatures is refused unless --wipe is given, before anything is written.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from plasmaboot.errors import UserError, WorkError
from plasmaboot.install.layout import (
    MIB,
    Filesystem,
    Layout,
    PartitionType,
    parse_size,
)

SECTOR = 512
GPT_RESERVED = 2 * MIB  # the first MiB (alignment, primary GPT) and the last (backup GPT)
MIN_REST = 64 * MIB  # a `rest` partition smaller than this is a mistake, not a filesystem
TARGET = "/mnt/plasmaboot"  # where the installed root is mounted on the node
# A LUKS key here is a key file of at least install.luks.MIN_KEY_BYTES random bytes, never
# a passphrase: stretching it buys nothing, while LUKS2's default (argon2id, up to 1 GiB of
# memory, a 2 s target) would make every unlock slow and could fail a small machine at boot.
# 1000 is the least cryptsetup takes.
KEY_FILE_PBKDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")


@dataclass(frozen=True)
class Disk:
    """A disk as found on the node: its device (the match resolved) and size in bytes."""

    device: str
    size: int


@dataclass(frozen=True)
class PlannedPartition:
    disk: str
    number: int
    device: str
    start: int  # bytes
    size: int  # bytes
    type: PartitionType
    name: str


@dataclass(frozen=True)
class PlannedFilesystem:
    """A filesystem to make: on a partition, a LUKS mapping or a logical volume."""

    device: str
    filesystem: Filesystem
    mount: str | None
    options: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class Plan:
    disks: tuple[Disk, ...]
    partitions: tuple[PlannedPartition, ...]
    filesystems: tuple[PlannedFilesystem, ...]
    luks: tuple[tuple[str, str, str], ...] = ()  # (partition device, mapping name, key path)
    volume_groups: tuple[tuple[str, str], ...] = ()  # (vg name, physical volume device)
    volumes: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (vg, lv, lvcreate size)
    early: tuple[str, ...] = ()  # LUKS mappings the initramfs opens (they hold / or /usr)

    def partition_commands(self) -> list[list[str]]:
        """sgdisk: a new GPT on each disk, then the partitions in order."""
        commands: list[list[str]] = []
        for disk in self.disks:
            commands.append(["sgdisk", "--zap-all", disk.device])
            argv = ["sgdisk"]
            for part in (p for p in self.partitions if p.disk == disk.device):
                start = part.start // SECTOR
                end = (part.start + part.size) // SECTOR - 1
                argv += [
                    f"--new={part.number}:{start}:{end}",
                    f"--typecode={part.number}:{part.type.gpt_type()}",
                    f"--change-name={part.number}:{part.name}",
                ]
            commands.append([*argv, disk.device])
            commands.append(["partprobe", disk.device])
        commands.append(["udevadm", "settle"])
        return commands

    def storage_commands(self, secrets: str) -> list[list[str]]:
        """LUKS (the key file read from `secrets`, the machine's secrets on the node, never
        on a command line), then LVM."""
        commands: list[list[str]] = []
        for device, name, key in self.luks:
            key_file = f"{secrets}/{key}"
            commands.append(
                ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *KEY_FILE_PBKDF,
                 f"--key-file={key_file}", device]
            )  # fmt: skip
            commands.append(["cryptsetup", "open", f"--key-file={key_file}", device, name])
        for group, device in self.volume_groups:
            commands.append(["pvcreate", "--yes", device])
            commands.append(["vgcreate", "--yes", group, device])
        for group, name, size in self.volumes:
            commands.append(
                ["lvcreate", "--yes", "--wipesignatures", "y", *size, "-n", name, group]
            )
        return commands

    def mkfs_commands(self) -> list[list[str]]:
        return [mkfs_command(fs) for fs in self.filesystems]

    def mounted(self) -> list[PlannedFilesystem]:
        """The filesystems with a mount point, parents first (/ before /boot before /boot/efi)."""
        mounted = [fs for fs in self.filesystems if fs.mount]
        return sorted(mounted, key=lambda fs: (str(fs.mount).count("/"), fs.mount != "/"))

    def mount_commands(self, target: str = TARGET) -> list[list[str]]:
        commands: list[list[str]] = []
        for fs in self.mounted():
            where = target + ("" if fs.mount == "/" else str(fs.mount))
            commands.append(["mkdir", "-p", where])
            commands.append(["mount", "-t", fs.filesystem.value, fs.device, where])
        return commands

    def fstab(self, uuids: dict[str, str]) -> str:
        """/etc/fstab of the installed system, every filesystem by UUID (`uuids`: device ->
        UUID, as blkid read them on the node after mkfs)."""
        lines = ["# written by plasmaboot install"]
        for fs in self.mounted():
            options = ",".join(fs.options) or (
                "umask=0077" if fs.filesystem is Filesystem.VFAT else "defaults"
            )
            passno = 1 if fs.mount == "/" else 2
            lines.append(
                f"UUID={uuids[fs.device]}\t{fs.mount}\t{fs.filesystem.value}\t{options}\t0\t{passno}"
            )
        for fs in self.filesystems:
            if fs.filesystem is Filesystem.SWAP:
                lines.append(f"UUID={uuids[fs.device]}\tnone\tswap\tsw\t0\t0")
        return "\n".join(lines) + "\n"

    def crypttab(self, uuids: dict[str, str]) -> str:
        """/etc/crypttab: each LUKS mapping unlocked at boot with its key from the installed
        root's secrets (the tree lands as it is: the key file is /<key>, mode 0600)."""
        lines = [
            f"{name}\tUUID={uuids[device]}\t/{key}\t"
            + ("luks,initramfs" if name in self.early else "luks")
            for device, name, key in self.luks
        ]
        return "\n".join(lines) + "\n" if lines else ""

    def script(self, secrets: str, target: str = TARGET) -> str:
        """Everything before the copy, as one shell script run over SSH (`sh -eu`)."""
        steps = [
            *self.partition_commands(),
            *self.storage_commands(secrets),
            *self.mkfs_commands(),
            *self.mount_commands(target),
        ]
        return "set -eu\n" + "".join(shlex.join(argv) + "\n" for argv in steps)


def mkfs_command(fs: PlannedFilesystem) -> list[str]:
    match fs.filesystem:
        case Filesystem.EXT4:
            return ["mkfs.ext4", "-q", "-F", "-L", fs.label[:16], fs.device]
        case Filesystem.XFS:
            return ["mkfs.xfs", "-q", "-f", "-L", fs.label[:12], fs.device]
        case Filesystem.VFAT:
            return ["mkfs.vfat", "-F", "32", "-n", fs.label[:11].upper(), fs.device]
        case Filesystem.SWAP:
            return ["mkswap", "-L", fs.label[:15], fs.device]


def partition_device(disk: str, number: int) -> str:
    """/dev/vda + 1 -> /dev/vda1; /dev/nvme0n1 + 1 -> /dev/nvme0n1p1 (a name ending in a
    digit takes a `p`)."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def make_plan(layout: Layout, disks: list[Disk]) -> Plan:
    """The plan for `layout` on `disks` (one per layout disk, in order); a UserError when a
    disk is too small, before anything is touched."""
    if len(disks) != len(layout.disks):
        raise UserError(f"the layout has {len(layout.disks)} disks, {len(disks)} were found")
    partitions: list[PlannedPartition] = []
    filesystems: list[PlannedFilesystem] = []
    luks: list[tuple[str, str, str]] = []
    groups: list[tuple[str, str]] = []
    for index, (spec, disk) in enumerate(zip(layout.disks, disks, strict=True)):
        sizes = partition_sizes([p.size for p in spec.partitions], disk, f"disks[{index}]")
        start = MIB
        for number, (part, size) in enumerate(zip(spec.partitions, sizes, strict=True), 1):
            device = partition_device(disk.device, number)
            name = part.label or part.type.value
            partitions.append(
                PlannedPartition(disk.device, number, device, start, size, part.type, name)
            )
            start += size
            holder = device
            if part.luks:
                luks.append((device, part.luks.name, part.luks.key))
                holder = f"/dev/mapper/{part.luks.name}"
            if part.volume_group:
                groups.append((part.volume_group, holder))
            if part.filesystem:
                filesystems.append(
                    PlannedFilesystem(
                        holder, part.filesystem, part.mount, tuple(part.options), name
                    )
                )
    volumes: list[tuple[str, str, tuple[str, ...]]] = []
    for group in layout.volume_groups:
        for volume in group.volumes:
            volumes.append((group.name, volume.name, lvcreate_size(volume.size)))
            filesystems.append(
                PlannedFilesystem(
                    f"/dev/{group.name}/{volume.name}",
                    volume.filesystem,
                    volume.mount,
                    tuple(volume.options),
                    volume.name,
                )
            )
    return Plan(
        tuple(disks),
        tuple(partitions),
        tuple(filesystems),
        tuple(luks),
        tuple(groups),
        tuple(volumes),
        tuple(layout.early_mappings()),
    )


def lvcreate_size(size: str) -> tuple[str, ...]:
    if size == "rest":
        return ("-l", "100%FREE")
    if size.endswith("%"):
        return ("-l", f"{size}VG")
    return ("-L", size)


def partition_sizes(sizes: list[str], disk: Disk, where: str) -> list[int]:
    """Bytes of each partition (MiB-aligned; `rest` gets what is left), or a UserError saying
    how much the layout needs and how much the disk has."""
    usable = disk.size - GPT_RESERVED
    fixed = [parse_size(size, disk.size) for size in sizes]
    aligned = [None if s is None else -(-s // MIB) * MIB for s in fixed]
    needed = sum(s for s in aligned if s is not None)
    rest = usable - needed
    if rest < 0 or (None in aligned and rest < MIN_REST):
        want = needed + GPT_RESERVED + (MIN_REST if None in aligned else 0)
        raise UserError(
            f"{where}: {disk.device} is too small for the layout: it has {human(disk.size)}, "
            f"the layout needs at least {human(want)}",
            hint="use a larger disk or smaller partition sizes",
        )
    return [rest // MIB * MIB if s is None else s for s in aligned]


def human(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", MIB)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}iB".replace(".0", "")
    return f"{size} bytes"


@dataclass(frozen=True)
class DiskState:
    """What is on a disk now, as lsblk and wipefs report it."""

    device: str
    size: int
    partitions: tuple[str, ...]
    signatures: tuple[str, ...]  # "gpt at 0x200", "ext4 at 0x438"
    mounted: tuple[str, ...]


def read_disk_state(lsblk: str, wipefs: str) -> DiskState:
    """From `lsblk --json --bytes -o PATH,SIZE,TYPE,MOUNTPOINT DISK` and `wipefs --no-act
    --json DISK` (for the disk and each partition)."""
    try:
        tree = json.loads(lsblk)["blockdevices"][0]
        found = json.loads(wipefs) if wipefs.strip() else {"signatures": []}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise WorkError(f"could not read the node's lsblk/wipefs output: {exc}") from exc
    children = tree.get("children") or []
    mounted = [d["mountpoint"] for d in [tree, *children] if d.get("mountpoint")]
    signatures = [
        f"{s.get('type')} at {s.get('offset')} on {s.get('device', tree['path'])}"
        for s in found.get("signatures", [])
    ]
    return DiskState(
        device=str(tree["path"]),
        size=int(tree["size"]),
        partitions=tuple(str(c["path"]) for c in children if c.get("type") == "part"),
        signatures=tuple(signatures),
        mounted=tuple(mounted),
    )


def check_disk_free(state: DiskState, wipe: bool) -> None:
    """A disk in use is never written; one with data only with --wipe."""
    if state.mounted:
        raise UserError(
            f"{state.device} is in use (mounted at {', '.join(state.mounted)})",
            hint="unmount it on the node first; install never writes a mounted disk",
        )
    if (state.partitions or state.signatures) and not wipe:
        what = [*(f"partition {p}" for p in state.partitions), *state.signatures]
        raise UserError(
            f"{state.device} is not empty: {', '.join(what[:6])}",
            hint="pass --wipe to erase it (everything on the disk is lost)",
        )


def wipe_commands(state: DiskState) -> list[list[str]]:
    """Erase every signature on the disk's partitions and the disk itself."""
    return [*(["wipefs", "--all", "--force", p] for p in state.partitions),
            ["wipefs", "--all", "--force", state.device]]  # fmt: skip


def match_disk(match: str, resolved: str, lsblk_disks: str, where: str) -> str:
    """The one disk a layout's `match` names on the node. `resolved`: `readlink -f` of each
    path the match expands to (a by-id glob also matches partitions and several names of one
    disk); `lsblk_disks`: `lsblk --json --nodeps -o PATH,TYPE` (the whole disks)."""
    try:
        disks = {d["path"] for d in json.loads(lsblk_disks)["blockdevices"] if d["type"] == "disk"}
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkError(f"could not read the node's lsblk output: {exc}") from exc
    found = sorted({line for line in resolved.split() if line in disks})
    if len(found) != 1:
        raise UserError(
            f"{where}.match: {match!r} names {len(found)} disks on the node"
            + (f" ({', '.join(found)})" if found else ""),
            hint=f"disks there: {', '.join(sorted(disks)) or 'none'}; "
            "name one (a path or a /dev/disk/by-id glob)",
        )
    return found[0]
