"""An image's files as `unsquashfs` reads them: the full listing, and the small top-level
trees a check reads (/etc, /root, /home) extracted to a temporary directory. Symlinks are
followed inside the image, never on the host."""

from __future__ import annotations

import fnmatch
import re
import shutil
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.formats import FormatError
from plasmaboot.run import run
from plasmaboot.verify.layers import DirLayer

LISTING_LINE = re.compile(
    r"^(?P<mode>[-dlcbps][-rwxsStT]{9})\s+\S+\s+(?P<size>\d+|\d+,\s*\d+)\s+"
    r"\d{4}-\d\d-\d\d \d\d:\d\d\s+squashfs-root(?P<path>/.*)?$"
)
EXTRACTED_DIRS = ("etc", "root", "home")  # all a check reads; small enough to extract whole
EXTRACTED_PREFIXES = tuple(f"{name}/" for name in EXTRACTED_DIRS)
SYMLINK_HOPS = 40


@dataclass(frozen=True)
class ImageEntry:
    kind: str  # the ls mode letter: "-" file, "d" directory, "l" symlink, ...
    size: int
    link_target: str | None


NO_ENTRY = ImageEntry("?", 0, None)


class ImageTree:
    """An image's full listing plus the small top-level trees extracted from it. Paths are
    relative to the image root ("etc/shadow"); symlinks resolve inside the image, never on
    the host."""

    scanned_where = "under /etc, /root, /home"  # the small files check_private_keys reads
    unread_reason = "outside the extracted /etc, /root and /home"

    def __init__(self, entries: dict[str, ImageEntry], extracted: Path) -> None:
        self.entries = entries
        self.extracted = extracted

    @classmethod
    def read(cls, squashfs: Path, extract_to: Path) -> ImageTree:
        entries = list_squashfs(squashfs)
        wanted = [name for name in EXTRACTED_DIRS if entries.get(name, NO_ENTRY).kind == "d"]
        extract = run(
            ["unsquashfs", "-n", "-no-xattrs", "-d", extract_to, squashfs, *wanted], check=False
        )
        if extract.returncode != 0:
            raise FormatError(unsquashfs_error(extract.stdout))
        return cls(entries, extract_to)

    def stack(self, layers: Iterable[DirLayer]) -> None:
        """Put directory layers above the image, bottom first, as stage-1's overlay does:
        an upper entry hides a lower one of the same path (and, unless both are
        directories, everything under it)."""
        for layer in layers:
            for path, item in sorted(layer.files.items()):
                below = self.entries.get(path)
                if below is not None and not (below.kind == "d" and item.kind == "d"):
                    self.hide(path)
                self.entries[path] = ImageEntry(item.kind, len(item.data), item.link_target)
                if not path.startswith(EXTRACTED_PREFIXES) and path not in EXTRACTED_DIRS:
                    continue
                target = self.extracted / path
                if item.kind == "d":
                    target.mkdir(parents=True, exist_ok=True)
                elif item.kind == "-":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(item.data)

    def hide(self, path: str) -> None:
        """Forget `path` and what is under it (an upper layer's entry replaces it)."""
        for name in [p for p in self.entries if p == path or p.startswith(f"{path}/")]:
            del self.entries[name]
        target = self.extracted / path
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)

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

    def readable(self, resolved: str) -> bool:
        """Whether the file at `resolved` was extracted, so a check can read it."""
        return resolved.startswith(EXTRACTED_PREFIXES)

    def read_regular(self, resolved: str) -> bytes:
        if not self.readable(resolved):
            raise FormatError(f"/{resolved} is {self.unread_reason}")
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


def list_squashfs(squashfs: Path) -> dict[str, ImageEntry]:
    """Every entry of the image (`unsquashfs -lls`); a FormatError if it cannot be listed."""
    listing = run(["unsquashfs", "-lls", squashfs], check=False)
    if listing.returncode != 0:
        raise FormatError(unsquashfs_error(listing.stdout))
    entries = parse_listing(listing.stdout.decode("utf-8", "replace"))
    if not entries:
        raise FormatError("unsquashfs listed no files")
    return entries


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
