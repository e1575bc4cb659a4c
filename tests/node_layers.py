"""Reading a per-node segment back in tests: its members, and its files on disk."""

from __future__ import annotations

import stat
from pathlib import Path

from plasmaboot.formats.cpio import read_members


def members(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, contents) of every archive in `data` (back to back, NUL padded)."""
    found: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while pos < len(data):
        listed, pos = read_members(data, pos)
        for member in listed:
            found[member.name] = (member.mode, data[member.offset : member.offset + member.size])
        while pos < len(data) and data[pos] == 0:
            pos += 1
    return found


def write_node(directory: Path, data: bytes) -> None:
    """The segment's files under `directory`, as the kernel unpacks them."""
    for name, (mode, contents) in members(data).items():
        target = directory / name
        if stat.S_ISDIR(mode):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents)
            target.chmod(stat.S_IMODE(mode))
