"""The iPXE scripts `serve` answers with: a set's script pointed at one exact set, the boot
menu, the chain to a label, and (with an inventory) a machine's own script or the refusal an
unknown machine gets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.formats import FormatError
from plasmaboot.formats.ipxe import MAX_SCRIPT_SIZE, parse_netboot_script, render_netboot_script
from plasmaboot.serve.files import opened_within, read_within
from plasmaboot.serve.paths import BootSet, find_set, published_labels

MAX_MANIFEST_SIZE = 4 << 20


def render_script(
    text: str, base_url: str, url_prefix: str, extra_params: Sequence[str] = ()
) -> str:
    """The set's script pointed at one exact set (`base_url` + `url_prefix`), with
    `extra_params` (a machine's own) after the set's: read by the one parser, written by the
    one renderer, so a script of any other shape is never served (FormatError). A published
    script (naming its own `.sets/` directory) is read as well."""
    script = parse_netboot_script(text, published=True)
    params = [*script.kernel_params, *extra_params]
    return render_netboot_script(script.label, params, set_url=f"{base_url}{url_prefix}")


def set_parts(root: Path, found: BootSet) -> tuple[str, ...]:
    return found.directory.relative_to(root).parts


def read_script(root: Path, found: BootSet | None) -> str | None:
    """A set's netboot.ipxe, if it is there, a regular file of script size, and readable (a
    FIFO or a huge file put there never blocks or floods the server; a link swapped in is
    never followed out of the root)."""
    if found is None:
        return None
    raw = read_within(root, *set_parts(root, found), IPXE, limit=MAX_SCRIPT_SIZE + 1)
    if raw is None or len(raw) > MAX_SCRIPT_SIZE:
        return None
    try:
        return raw.decode().replace("\r\n", "\n").replace("\r", "\n")  # as read_text() did
    except UnicodeDecodeError:
        return None


def is_bootable(root: Path, label: str) -> bool:
    """`label` is a published set a node can boot: its script is plasmaboot's and its kernel
    and initrd are regular files inside the root."""
    found = find_set(root, label)
    text = read_script(root, found)
    if found is None or text is None:
        return False
    try:
        parse_netboot_script(text, published=True)
    except FormatError:
        return False
    for name in (KERNEL, INITRD):
        with opened_within(root, *set_parts(root, found), name) as handle:
            if handle is None:
                return False
    return True


def bootable_labels(root: Path) -> list[str]:
    """The labels a menu may offer, sorted."""
    return [label for label in published_labels(root) if is_bootable(root, label)]


def menu_text(root: Path, label: str) -> str:
    """One menu line: the label and what its manifest says, if it can be read."""
    found = find_set(root, label)
    if found is None:
        return label
    raw = read_within(root, *set_parts(root, found), MANIFEST, limit=MAX_MANIFEST_SIZE)
    if raw is None:
        return label
    try:
        data = json.loads(raw)
        details = f"{data['backend']}/{data['distro']}, kernel {data['kernel_version']}"
        text = f"{label} ({details}, built {data['built_at']})"
    except (ValueError, KeyError, TypeError):
        return label
    return "".join(c if c.isprintable() else " " for c in text)  # one line of the script


def boot_menu(root: Path, base_url: str, timeout: float) -> str:
    """A menu of the bootable labels; the first is chosen after `timeout` seconds."""
    labels = bootable_labels(root)
    if not labels:
        return "#!ipxe\necho plasmaboot: no images are published on this server\nexit 1\n"
    lines = ["#!ipxe", "menu plasmaboot: choose an image to boot"]
    lines += [f"item {label} {menu_text(root, label)}" for label in labels]
    lines += [
        f"choose --timeout {round(timeout * 1000)} --default {labels[0]} target || exit 1",
        f"chain {base_url}/${{target}}/{IPXE}",
        "",
    ]
    return "\n".join(lines)


def chain_script(base_url: str, label: str) -> str:
    return f"#!ipxe\nchain {base_url}/{label}/{IPXE}\n"
