"""The .debs an installed Debian system needs beyond what the node runs: GRUB for BIOS and
UEFI (the image has the kernel's modules and initramfs-tools, not a boot loader). The node
has no mirror, so they come from the operator's side: the build's deb cache
(`<cache>/debs/<release>`, where the Debian backend keeps what mmdebstrap downloaded), filled
once with `--fetch-debs` (mmdebstrap downloads them and their dependencies into it).

Which .debs to upload is computed here, offline: the closure of the needed packages over
the cache's Depends/Pre-Depends, minus what the node already has (`dpkg-query` there).
"""

from __future__ import annotations

import io
import lzma
import re
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from plasmaboot.errors import UserError, WorkError
from plasmaboot.install.layout import Layout
from plasmaboot.log import Log
from plasmaboot.run import require_tool, run

# What the installed system needs to boot from its disk, BIOS and UEFI, and to update its
# initramfs (already in every image; kept so an image without it still installs).
BOOT_PACKAGES = (
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub2-common",
    "grub-common",
    "initramfs-tools",
)
# What the node itself needs to cut and format the disk, by filesystem (installed in its
# RAM overlay when missing: the image carries gdisk, parted and e2fsprogs, not xfsprogs).
NODE_PACKAGES = {"vfat": "dosfstools", "xfs": "xfsprogs", "ext4": "e2fsprogs"}
# What the installed system needs for its layout's filesystems beyond the image's layers
# (unpacked onto the disk with BOOT_PACKAGES): base leaves xfsprogs out of the netboot
# image (it pulls python3 and libicu, ~19 MB of the initrd; docs/benchmarks.md, "#16").
SYSTEM_PACKAGES = {"xfs": "xfsprogs"}
NODE_BASE = ("gdisk", "parted")
# An encrypted / or /usr is opened by the initramfs: its hook and scripts (luks.py)
EARLY_LUKS_PACKAGES = ("cryptsetup-initramfs",)
FETCHED = (
    *BOOT_PACKAGES,
    *EARLY_LUKS_PACKAGES,
    *NODE_PACKAGES.values(),
    *SYSTEM_PACKAGES.values(),
    *NODE_BASE,
)
DEB_FIELDS = ("Package", "Version", "Depends", "Pre-Depends", "Provides")
FETCH_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Deb:
    path: Path
    package: str
    depends: tuple[tuple[str, ...], ...]  # groups of alternatives
    provides: tuple[str, ...]


def parse_relations(text: str) -> tuple[tuple[str, ...], ...]:
    """`a (>= 1), b | c:any, d [amd64]` -> ((a,), (b, c), (d,)): names only (one release)."""
    groups: list[tuple[str, ...]] = []
    for group in text.split(","):
        names = [re.split(r"[\s(:\[]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
        names = [n for n in names if n]
        if names:
            groups.append(tuple(names))
    return tuple(groups)


def parse_control(path: Path, text: str) -> Deb:
    """A deb from `dpkg-deb -f FILE Package Version Depends Pre-Depends Provides` output."""
    fields: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and current:
            fields[current] += " " + line.strip()
        elif ":" in line:
            current, _, value = line.partition(":")
            fields[current] = value.strip()
    depends = parse_relations(
        ", ".join(filter(None, (fields.get("Pre-Depends"), fields.get("Depends"))))
    )
    provides = tuple(group[0] for group in parse_relations(fields.get("Provides", "")))
    return Deb(path, fields.get("Package", path.name.split("_", 1)[0]), depends, provides)


def closure(roots: Iterable[str], available: dict[str, Deb], installed: set[str]) -> list[Deb]:
    """The debs to install so that every root and its dependencies are there, dependencies
    first; a UserError naming what neither the node nor the cache has."""
    provided = {name for deb in available.values() for name in deb.provides}
    have = set(installed)
    chosen: list[Deb] = []
    missing: list[str] = []

    def satisfied(group: tuple[str, ...]) -> bool:
        return any(name in have for name in group)

    def visit(name: str) -> None:
        deb = available.get(name) or next(
            (d for d in available.values() if name in d.provides), None
        )
        if deb is None:
            missing.append(name)
            return
        have.add(name)
        have.add(deb.package)
        have.update(deb.provides)
        for group in deb.depends:
            if satisfied(group):
                continue
            pick = next((n for n in group if n in available or n in provided), group[0])
            visit(pick)
        chosen.append(deb)

    for root in roots:
        if root not in have:
            visit(root)
    if missing:
        raise UserError(
            f"the deb cache lacks {', '.join(sorted(set(missing)))} (needed to install the "
            "boot loader)",
            hint="pass --fetch-debs once (mmdebstrap downloads them into the cache), or "
            "--debs DIR with those .debs",
        )
    return chosen


def read_debs(directory: Path, log: Log | None = None) -> dict[str, Deb]:
    """The newest .deb of each package in `directory` (file name order breaks ties). The
    control fields are read here (an ar archive, its control.tar.{xz,gz}); `dpkg-deb -f`
    only for another compression: a fork per .deb took 2-8 s for a cache of 200, while the
    node waited."""
    found: dict[str, Deb] = {}
    for path in sorted(directory.glob("*.deb")):
        text = control_text(path)
        if text is None:
            text = run([require_tool("dpkg-deb"), "-f", path, *DEB_FIELDS], log=log).stdout.decode()
        deb = parse_control(path, text)
        found[deb.package] = deb
    return found


# tarfile reads these compressions (Python 3.11 has no zstd: dpkg-deb for those)
READABLE = ("control.tar.xz", "control.tar.gz", "control.tar", "data.tar.xz", "data.tar.gz",
            "data.tar")  # fmt: skip


def ar_members(path: Path) -> dict[str, tuple[int, int]]:
    """A .deb's (ar archive's) members: name -> (offset, size); empty when it is not one,
    or when a member's size is not a plain decimal inside the file (a negative one would
    seek backwards and read the same header for ever)."""
    members: dict[str, tuple[int, int]] = {}
    end = path.stat().st_size
    with path.open("rb") as archive:
        if archive.read(8) != b"!<arch>\n":
            return {}
        while len(header := archive.read(60)) == 60:
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            field = header[48:58].strip()
            offset = archive.tell()
            if not field.isdigit() or offset + int(field) > end:
                return {}
            size = int(field)
            members[name] = (offset, size)
            archive.seek(offset + size + (size & 1))
    return members


class ArMember(io.RawIOBase):
    """One member of an ar archive as a file to read (tarfile's stream mode reads it)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self.file = path.open("rb")
        self.file.seek(offset)
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self.left]
        count = self.file.readinto(view)
        self.left -= count
        return count

    def close(self) -> None:
        self.file.close()
        super().close()


def member_tar(path: Path, prefix: str) -> tarfile.TarFile | None:
    """The .deb's `prefix` member (control.tar.*, data.tar.*) as a tar stream, when tarfile
    reads its compression; else None."""
    members = ar_members(path)
    for name in READABLE:
        if name.startswith(prefix) and name in members:
            offset, size = members[name]
            stream = ArMember(path, offset, size)
            if name.endswith(".xz"):
                return tarfile.open(fileobj=stream, mode="r|xz")
            if name.endswith(".gz"):
                return tarfile.open(fileobj=stream, mode="r|gz")
            return tarfile.open(fileobj=stream, mode="r|")
    return None


def control_text(path: Path) -> str | None:
    """The .deb's control file, or None when it must be read by dpkg-deb."""
    try:
        archive = member_tar(path, "control.tar")
        if archive is None:
            return None
        with archive:
            for member in archive:
                if member.name.lstrip("./") == "control" and member.isfile():
                    extracted = archive.extractfile(member)
                    return extracted.read().decode("utf-8", "replace") if extracted else None
    except (OSError, tarfile.TarError, EOFError, lzma.LZMAError, zlib.error):
        return None
    return None


def kernel_config(available: dict[str, Deb], version: str, log: Log | None = None) -> bytes:
    """`/boot/config-<version>` from the kernel's .deb in the cache: the image keeps the
    kernel's modules but not /boot, and mkinitramfs reads the config (which compressions
    the kernel unpacks). Read from the start of the package's data tar, where /boot is,
    without decompressing the modules behind it (3 s of the operator's CPU, while the node
    waited)."""
    deb = available.get(f"linux-image-{version}")
    if deb is None:
        raise UserError(
            f"the deb cache lacks linux-image-{version} (the kernel the node runs)",
            hint="pass --debs with the cache of the build that made the image",
        )
    wanted = f"boot/config-{version}"
    try:
        archive = member_tar(deb.path, "data.tar")
    except (OSError, tarfile.TarError, EOFError, lzma.LZMAError, zlib.error):
        archive = None
    if archive is None:
        tar = run([require_tool("dpkg-deb"), "--fsys-tarfile", deb.path], log=None).stdout
        archive = tarfile.open(fileobj=io.BytesIO(tar), mode="r|")  # noqa: SIM115 (with below)
    if log is not None:
        log.info(f"read {wanted} from {deb.path.name}")
    with archive:
        for member in archive:
            if member.name.lstrip("./") == wanted and member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    return extracted.read()
    raise UserError(f"{deb.path.name} has no {wanted}")


def unpacked_debs(debs: list[Deb], log: Log | None = None) -> bytes:
    """The files of `debs` as one tar stream, made here where decompressing is native and
    fast: each package's data tar without its "./" entry (GNU tar left the target's root
    0700 after one, and no service user could reach anything)."""
    dpkg_deb = require_tool("dpkg-deb")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as merged:
        for deb in debs:
            data = run([dpkg_deb, "--fsys-tarfile", deb.path], log=log).stdout
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                for member in archive:
                    if member.name.strip("./") == "":
                        continue
                    parts = PurePosixPath(member.name).parts
                    if member.name.startswith("/") or ".." in parts:
                        # a package's files stay under the installed root (the cache's
                        # .debs are the operator's, but a damaged one must not reach out)
                        raise WorkError(
                            f"{deb.path.name}: the member {member.name[:120]!r} leaves the "
                            "package's tree",
                            hint="delete that .deb from the cache and fetch it again "
                            "(--fetch-debs)",
                        )
                    merged.addfile(member, archive.extractfile(member) if member.isreg() else None)
    return out.getvalue()


def layout_filesystems(layout: Layout) -> list[str]:
    filesystems = [p.filesystem for d in layout.disks for p in d.partitions if p.filesystem]
    filesystems += [v.filesystem for g in layout.volume_groups for v in g.volumes]
    return [f.value for f in filesystems]


def node_packages(layout: Layout) -> list[str]:
    """The packages whose tools make `layout` on the node."""
    wanted = [NODE_PACKAGES[f] for f in layout_filesystems(layout) if f in NODE_PACKAGES]
    return list(dict.fromkeys([*NODE_BASE, *wanted]))


def system_packages(layout: Layout) -> list[str]:
    """The packages the installed system gets on its disk: the boot loader's, the tools of
    its filesystems the image lacks (SYSTEM_PACKAGES), and cryptsetup-initramfs when the
    initramfs opens an encrypted / or /usr."""
    wanted = [SYSTEM_PACKAGES[f] for f in layout_filesystems(layout) if f in SYSTEM_PACKAGES]
    early = EARLY_LUKS_PACKAGES if layout.early_mappings() else ()
    return list(dict.fromkeys([*BOOT_PACKAGES, *wanted, *early]))


def fetch_debs(directory: Path, release: str, mirror: str, log: Log | None = None) -> None:
    """Download FETCHED (the boot loader and the node's disk tools) and their dependencies
    into `directory` with mmdebstrap (into a throwaway tree; only the .debs are kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    run(
        [
            require_tool("mmdebstrap"),
            "--variant=essential",
            f"--include={','.join(FETCHED)}",
            "--format=null",
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
            f"--setup-hook=sync-in {directory} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {directory}",
            release,
            "-",
            mirror,
        ],
        log=log,
        timeout=FETCH_TIMEOUT,
    )
