"""The iPXE scripts `serve` answers with: a set's script pointed at one exact set, the boot
menu, the chain to a label, and (with an inventory) a machine's own script or the refusal an
unknown machine gets."""

from __future__ import annotations

import json
import re
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.formats.ipxe import BOOT_SERVER
from plasmaboot.serve.paths import find_set, published_labels, resolve_within

# `${boot-server}/<label>/bzImage` as the build writes it; the label part is replaced.
BOOT_FILE_URL = re.compile(r"\$\{boot-server\}/[^/\s]+/(" + f"{KERNEL}|{INITRD}" + r")(?=[\s?]|$)")


def render_script(text: str, base_url: str, url_prefix: str) -> str:
    """Point the kernel/initrd URLs at one set and fill in `${boot-server}`."""
    text = BOOT_FILE_URL.sub(lambda m: f"{base_url}{url_prefix}/{m.group(1)}", text)
    return text.replace(BOOT_SERVER, base_url)


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


def add_kernel_params(script: str, params: list[str]) -> str:
    """The script with `params` appended to its kernel line (they were checked by the one
    kernel-parameter rule when the inventory was loaded)."""
    lines = script.splitlines()
    kernel = [index for index, line in enumerate(lines) if line.startswith("kernel ")]
    if len(kernel) != 1:
        raise ValueError(f"expected one kernel line in the set's script, found {len(kernel)}")
    lines[kernel[0]] = " ".join([lines[kernel[0]], *params])
    return "\n".join(lines) + "\n"
