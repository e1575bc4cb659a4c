"""Where plasmaboot finds its data (profiles, catalog) and keeps its cache, and how it reads a
file a user names (regular files only, never more than it needs)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The directory holding `profiles/` and `catalog/`.

    An installed wheel carries them in `plasmaboot/_data`; a source checkout (editable
    install) uses the repository root, so the Nix flake and Python read the same files.
    """
    packaged = PACKAGE_DIR / "_data"
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent.parent


def builtin_profiles_dir() -> Path:
    return data_dir() / "profiles"


def cache_dir() -> Path:
    """The content-addressed cache: $PLASMABOOT_CACHE, else $XDG_CACHE_HOME/plasmaboot."""
    explicit = os.environ.get("PLASMABOOT_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "plasmaboot"


def read_regular_file(path: Path, limit: int) -> bytes | None:
    """At most `limit` bytes of `path`, or None if it is not a regular file. A device is
    never opened (opening some has effects: /dev/watchdog arms a reboot) and the file is
    opened without blocking, so a FIFO put there meanwhile is refused, never waited on."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        return handle.read(limit)


class NotASmallFile(ValueError):
    """A file that is not a regular file of at most the limit: str() says which, in words
    ("not a regular file", "larger than 16 MiB") that a caller puts after the file's name."""


def read_small_file(path: Path, limit: int) -> bytes:
    """All of `path`, a regular file of at most `limit` bytes, read once (what a caller
    checks is what was read). OSError when it cannot be opened; NotASmallFile when it is a
    FIFO, device or directory (never opened, never waited on) or larger than `limit`
    (never read past it)."""
    raw = read_regular_file(path, limit + 1)
    if raw is None:
        raise NotASmallFile("not a regular file")
    if len(raw) > limit:
        raise NotASmallFile(f"larger than {describe_size(limit)}")
    return raw


def describe_size(size: int) -> str:
    """64 KiB, 16 MiB, 1000 bytes: a limit as people write it."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"
