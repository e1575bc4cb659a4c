"""The layout of artifact sets on disk, and how a set is committed atomically.

    artifacts/<label>/bzImage  initrd  netboot.ipxe  manifest.json  build.log

A set is always replaced whole. Each set lives in `.sets/<label>-<content id>/` and
`<label>` is a symlink to the current one, switched with a single rename(2): a reader (a
PXE server, `serve`, a node booting) sees the previous complete set or the new complete set,
never a mix. The previous set is kept, so a node half-way through downloading it finishes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from plasmaboot.errors import UserError

KERNEL = "bzImage"
INITRD = "initrd"
IPXE = "netboot.ipxe"
MANIFEST = "manifest.json"
BUILD_LOG = "build.log"
BOOT_FILES = (KERNEL, INITRD, IPXE)
HASHED_FILES = (KERNEL, INITRD, IPXE)
# What a finished set holds (what the cache keeps and a build commits).
SET_FILES = (KERNEL, INITRD, IPXE, MANIFEST, BUILD_LOG)
# The installed system's initramfs (the Debian backend's, for `plasmaboot install`; never
# booted over the network): in a set when the backend made one, hashed in its manifest.
INSTALLED_INITRD = "installed-initrd"
OPTIONAL_SET_FILES = (INSTALLED_INITRD,)


def present_files(directory: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` and those of OPTIONAL_SET_FILES that `directory` holds."""
    return (*names, *(name for name in OPTIONAL_SET_FILES if (directory / name).is_file()))


# Inside the initrd: the root filesystem image the Debian backend makes, and the Nix store
# image of a NixOS netboot initrd.
ROOT_SQUASHFS = "root.squashfs"
# The Debian image's layers (docs/layers.md): stage-1 stacks every `layers/*` entry, top
# first in reverse name order; the package layer is a squashfs, the profile layer (and a
# per-node one, `layers/90-node/`, added by serve) a directory.
LAYERS_DIR = "layers"
PACKAGE_LAYER = f"{LAYERS_DIR}/10-packages.squashfs"
PROFILE_LAYER = f"{LAYERS_DIR}/50-profile"
NIX_STORE_SQUASHFS = "nix-store.squashfs"
# Inside a Debian root image: kmod's list of the device nodes whose modules load on first
# open (/dev/fuse, /dev/net/tun, ...), made at build time; boot-test checks each is a device.
STATIC_NODES = "etc/tmpfiles.d/static-nodes.conf"
STAGING_PREFIX = ".staging-"
SETS_DIR = ".sets"
KEEP_GENERATIONS = 2


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_writable_dir(directory: Path, option: str) -> None:
    """Create `directory` if needed and check it can take files, before any work starts."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise UserError(
            f"{option} {directory}: cannot write there ({exc.strerror})",
            hint="choose a directory you can write, or fix its permissions",
        ) from exc


def sets_dir(parent: Path) -> Path:
    return parent / SETS_DIR


def staging_owner(name: str) -> int | None:
    """The pid in a staging name (`.staging-<pid>-<label>-...`), if it has one."""
    head = name.removeprefix(STAGING_PREFIX).split("-", 1)[0]
    return int(head) if head.isdigit() else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path) -> None:
    """Remove staging directories and temporary links left by a build that was killed.
    A staging directory whose process still runs belongs to a concurrent build: kept."""
    if not parent.is_dir():
        return
    sets = sets_dir(parent)
    for child in [*(sets.iterdir() if sets.is_dir() else []), *parent.iterdir()]:
        if child.name.startswith(STAGING_PREFIX):
            owner = staging_owner(child.name)
            if owner is not None and owner != os.getpid() and process_alive(owner):
                continue
            if child.is_symlink() or child.is_file():
                child.unlink(missing_ok=True)
            else:
                shutil.rmtree(child, ignore_errors=True)


def staging_dir(parent: Path, label: str) -> Path:
    """A fresh directory under `parent/.sets` (same filesystem, so rename is atomic)."""
    sets = sets_dir(parent)
    sets.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{label}-", dir=sets))


def set_id(directory: Path, names: tuple[str, ...]) -> str:
    """A short content id of a set: the same bytes give the same id."""
    return content_id({name: sha256_file(directory / name) for name in names})


def content_id(digests: Mapping[str, str]) -> str:
    """The id of a set whose files have these sha256 digests (16 hex digits)."""
    digest = hashlib.sha256()
    for name in sorted(digests):
        digest.update(name.encode() + b"\0" + digests[name].encode())
    return digest.hexdigest()[:16]


def commit_set(
    staged: Path, parent: Path, label: str, names: tuple[str, ...], content_id: str | None = None
) -> Path:
    """Make the staged set current: rename it to `.sets/<label>-<id>`, then point the
    `parent/<label>` symlink at it with one rename(2). Returns the set's directory.
    `content_id` saves re-hashing when the caller already knows the files' hashes."""
    for name in names:
        os.chmod(staged / name, 0o644)
        fsync_file(staged / name)  # the bytes are on disk before any name points at them
    os.chmod(staged, 0o755)
    fsync_dir(staged)
    final = sets_dir(parent) / f"{label}-{content_id or set_id(staged, names)}"
    if final.exists():  # identical content is already there: keep it, drop the copy
        shutil.rmtree(staged)
    else:
        os.rename(staged, final)
    link = parent / label
    if link.is_dir() and not link.is_symlink():
        # a plain directory from an older layout or a user: retire it; the next build's
        # clean-up removes it (a staging name whose process has ended)
        os.rename(link, sets_dir(parent) / f"{STAGING_PREFIX}{os.getpid()}-replaced-{label}")
    temp_link = parent / f"{STAGING_PREFIX}{os.getpid()}-{label}.link"
    temp_link.unlink(missing_ok=True)
    temp_link.symlink_to(Path(SETS_DIR) / final.name)
    os.replace(temp_link, link)
    fsync_dir(parent)
    prune_sets(parent, label, keep=final)
    return final


def prune_sets(parent: Path, label: str, keep: Path, generations: int = KEEP_GENERATIONS) -> None:
    """Keep the current set and the previous ones (a node may still be downloading them)."""
    sets = sorted(
        (
            p
            for p in sets_dir(parent).glob(f"{label}-*")
            if p.is_dir() and p != keep and set_label(p.name) == label
        ),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in sets[generations - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def set_label(set_name: str) -> str:
    """`control-plane-0123abcd...` -> `control-plane`."""
    return set_name.rsplit("-", 1)[0]


def fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
