"""Sets as `publish` leaves them, for the tests of artifacts/, serve/ and the command line:
a directory of boot files whose bytes say what they are, and a served root with one label.
(Complete sets that verify accepts are in artifact_sets.py.)"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script

NAMES = ("bzImage", "initrd", "netboot.ipxe")
SERVED_NAMES = (KERNEL, INITRD, IPXE, MANIFEST)


def make_source(directory: Path, content: str) -> Path:
    """A directory with the three boot files: kernel and initrd holding `<name>:<content>`,
    a boot script whose kernel line carries `content=<content>`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (KERNEL, INITRD):
        (directory / name).write_text(f"{name}:{content}")
    (directory / IPXE).write_text(render_netboot_script("src", [f"content={content}"]))
    return directory


SCRIPT = (
    "#!ipxe\n"
    "# plasmaboot: cp\n"
    "kernel ${boot-server}/cp/bzImage initrd=initrd console=ttyS0\n"
    "initrd --name initrd ${boot-server}/cp/initrd\n"
    "boot\n"
)
MANIFEST_TEXT = (
    '{"backend": "debian", "distro": "bookworm", "kernel_version": "6.1.0",'
    ' "built_at": "2026-01-01T00:00:00Z"}\n'
)


@dataclass
class Published:
    root: Path
    set_name: str
    files: dict[str, bytes]


def write_set(directory: Path, seed: int) -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        KERNEL: bytes((seed + i) % 251 for i in range(4096)),
        INITRD: os.urandom(100_000),
        IPXE: SCRIPT.encode(),
        MANIFEST: MANIFEST_TEXT.encode(),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def publish(tmp: Path, root: Path, seed: int, label: str = "cp") -> Published:
    source = tmp / f"src-{label}-{seed}"
    files = write_set(source, seed)
    final = publish_atomically(source, root, label, SERVED_NAMES)
    return Published(root, final.name, files)
