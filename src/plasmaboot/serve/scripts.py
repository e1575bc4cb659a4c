"""The iPXE scripts `serve` answers with: a set's script pointed at one exact set, the boot
menu, the chain to a label, and (with an inventory) a machine's own script or the refusal an
unknown machine gets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from plasmaboot.artifacts.layout import IPXE, MANIFEST
from plasmaboot.formats.ipxe import parse_netboot_script, render_netboot_script
from plasmaboot.serve.paths import find_set, published_labels, resolve_within


def render_script(
    text: str, base_url: str, url_prefix: str, extra_params: Sequence[str] = ()
) -> str:
    """The set's script pointed at one exact set (`base_url` + `url_prefix`), with
    `extra_params` (a machine's own) after the set's: read by the one parser, written by the
    one renderer, so a script of any other shape is never served (FormatError)."""
    script = parse_netboot_script(text)
    params = [*script.kernel_params, *extra_params]
    return render_netboot_script(script.label, params, set_url=f"{base_url}{url_prefix}")


def menu_text(root: Path, label: str) -> str:
    """One menu line: the label and what its manifest says, if it can be read."""
    found = find_set(root, label)
    if found is None or resolve_within(found.directory, MANIFEST) is None:
        return label
    try:
        data = json.loads((found.directory / MANIFEST).read_text(encoding="utf-8"))
        details = f"{data['backend']}/{data['distro']}, kernel {data['kernel_version']}"
        text = f"{label} ({details}, built {data['built_at']})"
    except (OSError, ValueError, KeyError, TypeError):
        return label
    return "".join(c if c.isprintable() else " " for c in text)  # one line of the script


def boot_menu(root: Path, base_url: str) -> str:
    labels = published_labels(root)
    if not labels:
        return "#!ipxe\necho plasmaboot: no images are published on this server\nexit 1\n"
    lines = ["#!ipxe", "menu plasmaboot: choose an image to boot"]
    lines += [f"item {label} {menu_text(root, label)}" for label in labels]
    lines += [
        f"choose --default {labels[0]} target || exit 1",
        f"chain {base_url}/${{target}}/{IPXE}",
        "",
    ]
    return "\n".join(lines)


def chain_script(base_url: str, label: str) -> str:
    return f"#!ipxe\nchain {base_url}/{label}/{IPXE}\n"
