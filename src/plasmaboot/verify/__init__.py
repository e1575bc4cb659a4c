"""Reads an artifact set back without trusting the build that made it: the kernel's boot
header, the initrd's segments and root squashfs, what the image holds (keys, passwords, sshd
settings, services), the iPXE script, and every size and hash in manifest.json.

Each check has a name and passes, fails or is skipped (when a check it depends on failed,
or, with the reason, when it does not apply: a NixOS image holds a Nix store, not a root
filesystem). Damaged input is a failed check with a reason, never an exception.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plasmaboot.artifacts.layout import (
    HASHED_FILES,
    INITRD,
    IPXE,
    KERNEL,
    MANIFEST,
    NIX_STORE_SQUASHFS,
    ROOT_SQUASHFS,
    sha256_file,
)
from plasmaboot.artifacts.manifest import Manifest, read_manifest
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats import FormatError
from plasmaboot.formats.bzimage import (
    KernelHeader,
    check_kernel_size,
    is_bzimage,
    read_kernel_header,
)
from plasmaboot.formats.cpio import Member, Segment, SegmentError, read_segments
from plasmaboot.formats.squashfs import read_squashfs_superblock
from plasmaboot.formats.sshkeys import public_key_type
from plasmaboot.run import run


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    result: Outcome
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "result": str(self.result), "detail": self.detail}


def passed(name: str, detail: str) -> Check:
    return Check(name, Outcome.PASS, detail)


def failed(name: str, detail: str) -> Check:
    return Check(name, Outcome.FAIL, detail)


def skipped(name: str, detail: str) -> Check:
    return Check(name, Outcome.SKIP, detail)


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.result is Outcome.FAIL]

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.as_dict() for c in self.checks]}


# --------------------------------------------------------------------------------------
# bzImage: the x86 Linux boot protocol header (Documentation/arch/x86/boot.rst)


def check_kernel(directory: Path, manifest: Manifest | None) -> Iterator[Check]:
    path = directory / KERNEL
    if not path.is_file():
        yield failed("bzImage.header", f"{KERNEL} is missing")
        yield skipped("bzImage.version", "no kernel to read")
        yield skipped("bzImage.size", "no kernel to read")
        return
    try:
        header = read_kernel_header(path)
    except (FormatError, OSError) as exc:
        yield failed("bzImage.header", str(exc))
        yield skipped("bzImage.version", "no boot header")
        yield skipped("bzImage.size", "no boot header")
        return
    major, minor = header.protocol
    if not is_bzimage(header):
        yield failed("bzImage.header", f"boot protocol {major}.{minor:02d} zImage: not a bzImage")
    else:
        yield passed("bzImage.header", f"boot protocol {major}.{minor:02d}, loads high")
    yield check_kernel_version(header, manifest)
    size = path.stat().st_size
    try:
        check_kernel_size(size, header)
    except FormatError as exc:
        yield failed("bzImage.size", str(exc))
    else:
        yield passed("bzImage.size", f"{size / (1 << 20):.1f} MiB")


def check_kernel_version(header: KernelHeader, manifest: Manifest | None) -> Check:
    if not header.version:
        return failed("bzImage.version", "the header has no kernel version string")
    release = header.version.split()[0]
    if manifest is not None and manifest.kernel_version and release != manifest.kernel_version:
        return failed(
            "bzImage.version",
            f"kernel is {release}, manifest.json says {manifest.kernel_version}",
        )
    return passed("bzImage.version", header.version)


# --------------------------------------------------------------------------------------
# initrd: segments, /init, the root squashfs superblock


def last_member(segments: list[Segment], name: str) -> tuple[int, Segment, Member] | None:
    """The member the kernel ends up with: a later segment overwrites an earlier one."""
    found = None
    for number, segment in enumerate(segments, start=1):
        for member in segment.members:
            if member.name == name:
                found = (number, segment, member)
    return found


@dataclass(frozen=True)
class RootImage:
    name: str  # ROOT_SQUASHFS or NIX_STORE_SQUASHFS
    data: bytes


def find_root_image(segments: list[Segment]) -> tuple[int, Segment, Member] | None:
    for name in (ROOT_SQUASHFS, NIX_STORE_SQUASHFS):
        found = last_member(segments, name)
        if found is not None:
            return found
    return None


def check_initrd(directory: Path) -> tuple[list[Check], RootImage | None]:
    """The initrd checks, and the root squashfs image when it is sound enough to read."""
    path = directory / INITRD
    later = ("initrd.init", "initrd.squashfs")
    if not path.is_file():
        checks = [failed("initrd.segments", f"{INITRD} is missing")]
        return checks + [skipped(name, "no initrd to read") for name in later], None
    try:
        segments = read_segments(path)
    except (SegmentError, WorkError, UserError, OSError) as exc:
        checks = [failed("initrd.segments", str(exc).splitlines()[0])]
        return checks + [skipped(name, "initrd unreadable") for name in later], None
    summary = ", ".join(f"{s.compression} ({count(s.members, 'member')})" for s in segments)
    checks = [passed("initrd.segments", f"{len(segments)} segments: {summary}")]

    init = last_member(segments, "init")
    if init is None:
        checks.append(failed("initrd.init", "no /init in any segment"))
    elif not init[2].is_executable:
        checks.append(failed("initrd.init", f"/init is not an executable file ({init[2].mode:o})"))
    else:
        checks.append(passed("initrd.init", f"segment {init[0]}, mode {init[2].mode & 0o7777:o}"))

    found = find_root_image(segments)
    if found is None:
        wanted = f"/{ROOT_SQUASHFS} or /{NIX_STORE_SQUASHFS}"
        checks.append(failed("initrd.squashfs", f"no {wanted} in any segment"))
        return checks, None
    number, segment, member = found
    image = segment.payload[member.offset : member.offset + member.size]
    try:
        superblock = read_squashfs_superblock(image, member.size)
    except FormatError as exc:
        checks.append(failed("initrd.squashfs", f"/{member.name}: {exc}"))
        return checks, None
    checks.append(
        passed(
            "initrd.squashfs",
            f"segment {number}: /{member.name}: squashfs 4.0, {superblock.compressor}, "
            f"{superblock.bytes_used / (1 << 20):.1f} MiB, {superblock.inodes} inodes, "
            f"{superblock.block_size >> 10} KiB blocks",
        )
    )
    return checks, RootImage(member.name, image)


# --------------------------------------------------------------------------------------
# The image's contents, read with unsquashfs

LISTING_LINE = re.compile(
    r"^(?P<mode>[-dlcbps][-rwxsStT]{9})\s+\S+\s+(?P<size>\d+|\d+,\s*\d+)\s+"
    r"\d{4}-\d\d-\d\d \d\d:\d\d\s+squashfs-root(?P<path>/.*)?$"
)
EXTRACTED_DIRS = ("etc", "root", "home")  # all a check reads; small enough to extract whole
EXTRACTED_PREFIXES = tuple(f"{name}/" for name in EXTRACTED_DIRS)
KEY_SCAN_MAX_SIZE = 64 << 10
PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"
SYMLINK_HOPS = 40
SHOWN = 5


@dataclass(frozen=True)
class ImageEntry:
    kind: str  # the ls mode letter: "-" file, "d" directory, "l" symlink, ...
    size: int
    link_target: str | None


class ImageTree:
    """An image's full listing plus the small top-level trees extracted from it. Paths are
    relative to the image root ("etc/shadow"); symlinks resolve inside the image, never on
    the host."""

    def __init__(self, entries: dict[str, ImageEntry], extracted: Path) -> None:
        self.entries = entries
        self.extracted = extracted

    @classmethod
    def read(cls, squashfs: Path, extract_to: Path) -> ImageTree:
        listing = run(["unsquashfs", "-lls", squashfs], check=False)
        if listing.returncode != 0:
            raise FormatError(unsquashfs_error(listing.stdout))
        entries = parse_listing(listing.stdout.decode("utf-8", "replace"))
        if not entries:
            raise FormatError("unsquashfs listed no files")
        wanted = [name for name in EXTRACTED_DIRS if entries.get(name, NO_ENTRY).kind == "d"]
        extract = run(
            ["unsquashfs", "-n", "-no-xattrs", "-d", extract_to, squashfs, *wanted], check=False
        )
        if extract.returncode != 0:
            raise FormatError(unsquashfs_error(extract.stdout))
        return cls(entries, extract_to)

    def resolve(self, path: str) -> str | None:
        """The path with every symlink followed inside the image; None if it does not exist."""
        parts = deque(part for part in path.split("/") if part)
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.popleft()
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            entry = self.entries.get("/".join([*resolved, part]))
            if entry is None:
                return None
            if entry.link_target is not None:
                hops += 1
                if hops > SYMLINK_HOPS:
                    return None
                if entry.link_target.startswith("/"):
                    resolved = []
                parts.extendleft(reversed([p for p in entry.link_target.split("/") if p]))
                continue
            resolved.append(part)
        return "/".join(resolved)

    def read_text(self, path: str) -> str | None:
        """A regular file's text (following symlinks in the image); None if there is none."""
        resolved = self.resolve(path)
        if resolved is None or self.entries[resolved].kind != "-":
            return None
        return self.read_regular(resolved).decode("utf-8", "replace")

    def read_regular(self, resolved: str) -> bytes:
        if not resolved.startswith(EXTRACTED_PREFIXES):
            raise FormatError(f"/{resolved} is outside the extracted /etc, /root and /home")
        return (self.extracted / resolved).read_bytes()

    def glob(self, pattern: str) -> list[str]:
        """Files matching an absolute or relative-to-root glob, sorted like glob(3)."""
        directory, _, name_pattern = pattern.strip("/").rpartition("/")
        resolved_dir = self.resolve(directory)
        if resolved_dir is None:
            return []
        matches = []
        for path in self.entries:
            parent, _, name = path.rpartition("/")
            hidden = name.startswith(".") and not name_pattern.startswith(".")
            if parent == resolved_dir and not hidden and fnmatch.fnmatchcase(name, name_pattern):
                matches.append(path)
        return sorted(matches)


NO_ENTRY = ImageEntry("?", 0, None)


def unsquashfs_error(output: bytes) -> str:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return f"unsquashfs failed: {lines[-1] if lines else 'no output'}"


def parse_listing(text: str) -> dict[str, ImageEntry]:
    """`unsquashfs -lls` output -> {relative path: entry}."""
    entries: dict[str, ImageEntry] = {}
    for line in text.splitlines():
        match = LISTING_LINE.match(line)
        if match is None or not match["path"]:
            continue
        kind = match["mode"][0]
        path = match["path"][1:]
        target = None
        if kind == "l":
            path, _, target = path.partition(" -> ")
        size = int(match["size"]) if match["size"].isdigit() else 0
        entries[path] = ImageEntry(kind, size, target)
    return entries


def count(items: Sized, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def shown(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(f"/{p}" for p in paths[:SHOWN]) + more


def check_private_keys(name: str, tree: ImageTree) -> Check:
    by_name = [
        p for p in tree.entries if fnmatch.fnmatchcase(p.rpartition("/")[2], "ssh_host_*_key")
    ]
    scanned = [
        path
        for path, entry in tree.entries.items()
        if entry.kind == "-"
        and path.startswith(EXTRACTED_PREFIXES)
        and entry.size <= KEY_SCAN_MAX_SIZE
    ]
    by_content = [p for p in scanned if PRIVATE_KEY_MARKER in tree.read_regular(p)]
    found = sorted({*by_name, *by_content})
    if found:
        return failed(name, f"private keys in the image: {shown(found)}")
    return passed(name, f"none in {len(scanned)} small files under /etc, /root, /home")


def check_host_keys(name: str, tree: ImageTree) -> Check:
    keys = sorted(p for p in tree.entries if p.startswith("etc/ssh/ssh_host_"))
    if keys:
        return failed(name, f"baked SSH host keys: {shown(keys)}")
    return passed(name, "none in /etc/ssh (generated at each boot)")


def password_locked(field: str) -> bool:
    """`*`, `!`, `!*`, or `!` before a hash: no password can match."""
    return field == "*" or field.startswith("!")


def check_root_password(name: str, tree: ImageTree) -> Check:
    shadow = tree.read_text("etc/shadow")
    if shadow is None:
        return failed(name, "/etc/shadow is missing")
    root = [line.split(":") for line in shadow.splitlines() if line.startswith("root:")]
    if not root or len(root[0]) < 2:
        return failed(name, "/etc/shadow has no root entry")
    field = root[0][1]
    if field == "":
        return failed(name, "root has an empty password in /etc/shadow")
    if not password_locked(field):
        return failed(name, f"root has a password hash in /etc/shadow ({field[:3]}...)")
    passwd = tree.read_text("etc/passwd") or ""
    for line in passwd.splitlines():
        fields = line.split(":")
        # "x" sends login to /etc/shadow; anything else in passwd is used as the hash
        if (
            fields[0] == "root"
            and len(fields) > 1
            and not (fields[1] == "x" or password_locked(fields[1]))
        ):
            return failed(name, "root has a password in /etc/passwd")
    return passed(name, f"root password locked ({field[:2]!r})")


SSHD_DEFAULTS = {
    "permitrootlogin": "prohibit-password",
    "passwordauthentication": "yes",
    "kbdinteractiveauthentication": "yes",
}
SSHD_ALIASES = {"challengeresponseauthentication": "kbdinteractiveauthentication"}
SSHD_KEY_ONLY = {
    "permitrootlogin": {"prohibit-password", "without-password", "no"},
    "passwordauthentication": {"no"},
    "kbdinteractiveauthentication": {"no"},
}
SSHD_LINE = re.compile(r"^(\S+?)(?:\s*=\s*|\s+)(.*)$")
SSHD_MAX_DEPTH = 16


@dataclass
class SshdConfig:
    """What sshd would use: the first value of each keyword outside Match blocks, plus
    every value inside Match blocks (those apply to some connections)."""

    settings: dict[str, str]
    in_match: list[tuple[str, str, str]]  # (file, keyword, value)
    files: list[str]


def sshd_arguments(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def read_sshd_config(tree: ImageTree) -> SshdConfig:
    config = SshdConfig({}, [], [])
    read_sshd_file(tree, "etc/ssh/sshd_config", config, in_match=False, depth=0)
    return config


def read_sshd_file(
    tree: ImageTree, path: str, config: SshdConfig, in_match: bool, depth: int
) -> None:
    if depth > SSHD_MAX_DEPTH:
        raise FormatError(f"sshd Include nesting deeper than {SSHD_MAX_DEPTH} at /{path}")
    text = tree.read_text(path)
    if text is None:
        raise FormatError(f"/{path} is missing")
    config.files.append(path)
    for raw in text.splitlines():
        line = raw.strip()
        match = SSHD_LINE.match(line)
        if not line or line.startswith("#") or match is None:
            continue
        keyword = match[1].lower()
        keyword = SSHD_ALIASES.get(keyword, keyword)
        arguments = sshd_arguments(match[2])
        if keyword == "match":
            in_match = True  # to the end of this file, as sshd scopes Match in an include
        elif keyword == "include":
            for pattern in arguments:
                absolute = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
                for included in tree.glob(absolute):
                    read_sshd_file(tree, included, config, in_match, depth + 1)
        elif keyword in SSHD_DEFAULTS and arguments:
            value = arguments[0].lower()
            if in_match:
                config.in_match.append((path, keyword, value))
            else:
                config.settings.setdefault(keyword, value)


def check_sshd(name: str, tree: ImageTree) -> Check:
    config = read_sshd_config(tree)
    problems = []
    effective = {**SSHD_DEFAULTS, **config.settings}
    for keyword, allowed in SSHD_KEY_ONLY.items():
        if effective[keyword] not in allowed:
            source = "" if keyword in config.settings else " (sshd's default)"
            problems.append(f"{keyword} {effective[keyword]}{source}")
    problems += [
        f"{keyword} {value} in a Match block of /{path}"
        for path, keyword, value in config.in_match
        if value not in SSHD_KEY_ONLY[keyword]
    ]
    if problems:
        return failed(name, "not key-only: " + "; ".join(problems))
    settings = ", ".join(f"{k} {effective[k]}" for k in SSHD_KEY_ONLY)
    return passed(name, f"{settings} (from {len(config.files)} files)")


def check_authorized_keys(name: str, tree: ImageTree) -> Check:
    path = "root/.ssh/authorized_keys"
    text = tree.read_text(path)
    if text is None:
        return failed(name, f"/{path} is missing")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return failed(name, f"/{path} holds no keys")
    types = [public_key_type(line) for line in lines]
    bad = [number for number, key_type in enumerate(types, start=1) if key_type is None]
    if bad:
        return failed(name, f"/{path}: key lines {bad} are not valid public keys")
    return passed(name, f"{count(lines, 'key')} ({', '.join(sorted({t or '' for t in types}))})")


def check_service(name: str, tree: ImageTree, service: str, spec: dict[str, Any]) -> Check:
    enable = spec.get("enable")
    if not isinstance(enable, bool):
        return failed(name, f"manifest.json services.{service}.enable is {enable!r}, not a bool")
    unit = f"{service}.service"
    if tree.resolve(f"etc/systemd/system/{unit}") is None:
        return failed(name, f"/etc/systemd/system/{unit} is missing")
    links = sorted(
        path
        for path, entry in tree.entries.items()
        if entry.kind == "l" and fnmatch.fnmatchcase(path, f"etc/systemd/system/*.wants/{unit}")
    )
    dangling = [link for link in links if tree.resolve(link) is None]
    if dangling:
        return failed(name, f"enabled through a dangling link: {shown(dangling)}")
    if enable and not links:
        return failed(name, "manifest.json says enable, but no *.wants/ link enables it")
    if not enable and links:
        return failed(name, f"manifest.json says not enabled, but {shown(links)} enables it")
    wants = ", ".join(link.split("/")[-2] for link in links)
    return passed(name, f"unit present, {'enabled in ' + wants if links else 'not enabled'}")


TreeCheck = Callable[[str, ImageTree], Check]
TREE_CHECKS: dict[str, TreeCheck] = {
    "image.private-keys": check_private_keys,
    "image.host-keys": check_host_keys,
    "image.root-password": check_root_password,
    "image.sshd": check_sshd,
    "image.authorized-keys": check_authorized_keys,
}


def image_checks(manifest: Manifest | None) -> dict[str, TreeCheck]:
    """The checks of the image's contents: the fixed ones, then one per manifest service."""
    checks = dict(TREE_CHECKS)
    for service, spec in manifest.services.items() if manifest else ():
        checks[f"image.service:{service}"] = partial(check_service, service=service, spec=spec)
    return checks


def check_image(root: RootImage | None, manifest: Manifest | None) -> Iterator[Check]:
    checks = image_checks(manifest)
    if root is None:
        for name in ("image.read", *checks):
            yield skipped(name, "no readable root squashfs")
        return
    if root.name == NIX_STORE_SQUASHFS:
        yield from check_store_image(root, manifest, checks)
        return
    with tempfile.TemporaryDirectory(prefix="plasmaboot-verify-") as temp:
        image_path = Path(temp) / ROOT_SQUASHFS
        image_path.write_bytes(root.data)
        try:
            tree = ImageTree.read(image_path, Path(temp) / "root")
        except (FormatError, WorkError, UserError) as exc:
            yield failed("image.read", str(exc))
            for name in checks:
                yield skipped(name, "the image could not be read")
            return
        yield passed("image.read", f"{len(tree.entries)} entries")
        for name, check in checks.items():
            try:
                yield check(name, tree)
            except (FormatError, OSError) as exc:
                # a file that links out of the extracted trees, or cannot be read
                yield failed(name, str(exc))


NIX_INIT = re.compile(r"^init=/nix/store/([^/\s]+)/init$")
NOT_IN_STORE_IMAGE = (
    "NixOS image: /etc, /root and the units are made at boot by the activation script from "
    "the system closure, so they are not in the store squashfs to read"
)


def check_store_image(
    root: RootImage, manifest: Manifest | None, checks: dict[str, TreeCheck]
) -> Iterator[Check]:
    """A NixOS store image holds store paths, not a root filesystem: check that the system
    the kernel line boots (`init=/nix/store/<system>/init`) is in it; the root-filesystem
    checks do not apply."""
    with tempfile.TemporaryDirectory(prefix="plasmaboot-verify-") as temp:
        image_path = Path(temp) / NIX_STORE_SQUASHFS
        image_path.write_bytes(root.data)
        listing = run(["unsquashfs", "-lls", image_path], check=False)
    entries = parse_listing(listing.stdout.decode("utf-8", "replace"))
    if listing.returncode != 0 or not entries:
        reason = unsquashfs_error(listing.stdout) if listing.returncode else "no files listed"
        yield failed("image.read", reason)
        yield skipped("image.init", "the image could not be read")
    else:
        yield passed("image.read", f"{len(entries)} entries in the Nix store image")
        yield check_store_init(entries, manifest)
    for name in checks:
        yield skipped(name, NOT_IN_STORE_IMAGE)


def check_store_init(entries: dict[str, ImageEntry], manifest: Manifest | None) -> Check:
    name = "image.init"
    if manifest is None:
        return skipped(name, "no manifest to name the init")
    matches = [m for m in map(NIX_INIT.match, manifest.kernel_params) if m is not None]
    if not matches:
        return failed(name, "manifest.json kernel_params has no init=/nix/store/<system>/init")
    system = matches[-1][1]
    init = entries.get(f"{system}/init")
    if init is None or init.kind not in ("-", "l"):
        return failed(name, f"/nix/store/{system}/init is not in the store image")
    return passed(name, f"/nix/store/{system}/init is in the store image")


# --------------------------------------------------------------------------------------
# netboot.ipxe

IPXE_REFERENCE = re.compile(r"\$\{boot-server\}/([^/\s]+)/(\S+)")


def check_ipxe(directory: Path, manifest: Manifest | None) -> Iterator[Check]:
    path = directory / IPXE
    names = ("ipxe.header", "ipxe.files", "ipxe.kernel-line", "ipxe.boot")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"{IPXE} is missing" if not path.exists() else f"{IPXE} unreadable: {exc}"
        yield failed(names[0], reason)
        for name in names[1:]:
            yield skipped(name, "no script to read")
        return
    lines = [line.strip() for line in text.splitlines()]
    if lines and lines[0] == "#!ipxe":
        yield passed("ipxe.header", "#!ipxe")
    else:
        yield failed("ipxe.header", f"first line is {(lines or [''])[0][:40]!r}, not '#!ipxe'")
    yield check_ipxe_files(directory, text, manifest)
    commands = [line.split() for line in lines if line and not line.startswith("#")]
    kernel = [words for words in commands if words[0] == "kernel"]
    initrd = [words for words in commands if words[0] == "initrd"]
    if not kernel:
        yield failed("ipxe.kernel-line", "no kernel line")
    elif "initrd=initrd" not in kernel[0]:
        yield failed("ipxe.kernel-line", "the kernel line lacks initrd=initrd")
    elif not initrd:
        yield failed("ipxe.kernel-line", "no initrd line")
    else:
        yield passed("ipxe.kernel-line", " ".join(kernel[0][2:]))
    if ["boot"] in commands:
        yield passed("ipxe.boot", "boot")
    else:
        yield failed("ipxe.boot", "no boot command")


def check_ipxe_files(directory: Path, text: str, manifest: Manifest | None) -> Check:
    name = "ipxe.files"
    references = IPXE_REFERENCE.findall(text)
    files = sorted({file for _, file in references})
    problems = [f"{need} is not named" for need in (KERNEL, INITRD) if need not in files]
    if manifest is not None:
        wrong = sorted({label for label, _ in references if label != manifest.label})
        problems += [f"label {label!r} is not {manifest.label!r}" for label in wrong]
    problems += [f"{file} is not beside it" for file in files if not is_plain_file(directory, file)]
    if problems:
        return failed(name, "; ".join(problems))
    return passed(name, ", ".join(files))


def is_plain_file(directory: Path, name: str) -> bool:
    return "/" not in name and name not in (".", "..") and (directory / name).is_file()


# --------------------------------------------------------------------------------------
# manifest.json


def check_manifest(directory: Path) -> tuple[list[Check], Manifest | None]:
    try:
        manifest = read_manifest(directory)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        detail = f"{MANIFEST} does not parse: {where}: {first['msg']}"
        checks = [failed("manifest", detail)]
        return checks + [skipped(f"file:{n}", "no manifest") for n in HASHED_FILES], None
    except (OSError, UnicodeDecodeError) as exc:
        checks = [failed("manifest", f"{MANIFEST} unreadable: {exc}")]
        return checks + [skipped(f"file:{n}", "no manifest") for n in HASHED_FILES], None
    checks = [passed("manifest", f"{manifest.label} ({manifest.backend}, {manifest.distro})")]
    for name in sorted({*HASHED_FILES, *manifest.files}):
        checks.append(check_file_record(directory, manifest, name))
    return checks, manifest


def check_file_record(directory: Path, manifest: Manifest, name: str) -> Check:
    check = f"file:{name}"
    record = manifest.files.get(name)
    if record is None:
        return failed(check, f"{MANIFEST} has no record of {name}")
    if not is_plain_file(directory, name):
        return failed(check, f"{name} is missing")
    size = (directory / name).stat().st_size
    if size != record.size:
        return failed(check, f"size {size}, {MANIFEST} says {record.size}")
    digest = sha256_file(directory / name)
    if digest != record.sha256:
        return failed(check, f"sha256 {digest[:16]}..., {MANIFEST} says {record.sha256[:16]}...")
    return passed(check, f"sha256 {digest[:16]}..., {size} bytes")


# --------------------------------------------------------------------------------------


def verify_set(directory: Path) -> Report:
    """Run every check on the artifact set in `directory`."""
    if not directory.exists():
        raise UserError(f"{directory}: no such directory", hint="give an artifact set directory")
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory", hint="give an artifact set directory")
    if not (directory / MANIFEST).is_file():
        raise UserError(
            f"{directory}: no {MANIFEST}, so this is not an artifact set",
            hint="give the directory a build wrote, e.g. artifacts/<profile>",
        )
    checks, manifest = check_manifest(directory)
    checks += check_kernel(directory, manifest)
    initrd_checks, root = check_initrd(directory)
    checks += initrd_checks
    checks += check_image(root, manifest)
    checks += check_ipxe(directory, manifest)
    return Report(checks)
