"""From a request path to a file of a set, safely: the path is split and checked before it
comes near the file system, and every file is resolved inside the served root."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from plasmaboot.artifacts.layout import IPXE, SETS_DIR
from plasmaboot.formats.ipxe import BOOT_SCRIPT

SETS_PREFIX = "sets"
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class UnsafePath(ValueError):
    """A request path that could leave the served tree or name a hidden file."""


def request_segments(raw_target: str) -> tuple[str, ...]:
    """Split a raw request target (`/a/b?q`, still percent-encoded) into decoded segments.

    Refused (UnsafePath): anything not starting with one `/`; empty segments except a trailing
    one; backslashes, NUL and control characters, raw or encoded; encoded slashes (`%2f`);
    malformed escapes; and any segment starting with `.` (`.`, `..`, `%2e%2e`, dotfiles).
    A trailing `/` gives a last segment "", which no route matches (no directory listings).
    """
    path = raw_target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or path.startswith("//"):
        raise UnsafePath("the path must start with a single '/'")
    if path == "/":
        return ()
    if PERCENT_ESCAPE.search(path):
        raise UnsafePath("malformed percent escape")
    raw_segments = path[1:].split("/")
    segments = []
    for index, raw in enumerate(raw_segments):
        if raw == "" and index != len(raw_segments) - 1:
            raise UnsafePath("empty path segment")
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError as exc:
            raise UnsafePath("path is not UTF-8") from exc
        if "/" in segment or "\\" in segment:
            raise UnsafePath("slash or backslash inside a segment")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in segment):
            raise UnsafePath("control character in the path")
        if segment.startswith("."):
            raise UnsafePath("segments may not start with '.'")
        segments.append(segment)
    return tuple(segments)


def resolve_within(root: Path, *parts: str) -> Path | None:
    """`root/parts...` with every symlink resolved, or None if it is missing or outside root."""
    try:
        path = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return path if path.is_relative_to(root) else None


@dataclass(frozen=True)
class BootSet:
    """One artifact set as the server addresses it: its directory and its URL prefix."""

    directory: Path
    url_prefix: str  # "/sets/<set-dir-name>" or "/<label>" for a plain directory


def find_set(root: Path, label: str) -> BootSet | None:
    """Resolve `root/<label>` once: the set it points at now, addressed by its own name."""
    if not LABEL.fullmatch(label):
        return None
    directory = resolve_within(root, label)
    if directory is None or not directory.is_dir():
        return None
    parts = directory.relative_to(root).parts
    if len(parts) == 2 and parts[0] == SETS_DIR and LABEL.fullmatch(parts[1]):
        return BootSet(directory, f"/{SETS_PREFIX}/{parts[1]}")
    if len(parts) == 1 and LABEL.fullmatch(parts[0]):
        return BootSet(directory, f"/{parts[0]}")
    return None


def find_exact_set(root: Path, name: str) -> BootSet | None:
    """`root/.sets/<name>`, addressed as /sets/<name>."""
    if not LABEL.fullmatch(name):
        return None
    directory = resolve_within(root, SETS_DIR, name)
    if directory is None or not directory.is_dir() or directory.parent != root / SETS_DIR:
        return None
    return BootSet(directory, f"/{SETS_PREFIX}/{name}")


def published_labels(root: Path) -> list[str]:
    """Labels under root that resolve to a set with a boot script, sorted."""
    labels = []
    for entry in sorted(root.iterdir()):
        if entry.name in (SETS_PREFIX, BOOT_SCRIPT):
            continue
        found = find_set(root, entry.name)
        if found is not None and (found.directory / IPXE).is_file():
            labels.append(entry.name)
    return labels
