"""The image's layers (docs/layers.md): every layer manifest.json names is where it says in
the initrd and has the hash it records (`initrd.layers`), and the directory layers under
/layers/ (the profile layer, a per-node one) are read the way stage-1 stacks them, above
the package squashfs, so the image checks judge what a node will see."""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, LAYERS_DIR
from plasmaboot.artifacts.manifest import LayerRecord, Manifest
from plasmaboot.checks import Check, count, failed, passed, skipped
from plasmaboot.formats.cpio import Segment

NAME = "initrd.layers"
NO_LAYERS = "the image has no layers (the Nix backend makes one store image)"


@dataclass(frozen=True)
class LayerFile:
    kind: str  # the ls mode letter: "-" file, "d" directory, "l" symlink
    data: bytes  # a file's bytes; empty for a directory
    link_target: str | None = None


@dataclass(frozen=True)
class DirLayer:
    """A directory layer: its name (`50-profile`) and its entries by path in the image."""

    name: str
    files: dict[str, LayerFile]


KINDS = {stat.S_IFREG: "-", stat.S_IFDIR: "d", stat.S_IFLNK: "l"}


def dir_layers(segments: list[Segment]) -> list[DirLayer]:
    """The initrd's directory layers, bottom first (stage-1 stacks the last name on top).
    A later segment's member replaces an earlier one of the same name, as in the kernel."""
    layers: dict[str, dict[str, LayerFile]] = {}
    for segment in segments:
        for member in segment.members:
            parts = member.name.split("/", 2)
            if parts[0] != LAYERS_DIR or len(parts) < 2 or parts[1].endswith(".squashfs"):
                continue
            files = layers.setdefault(parts[1], {})
            if len(parts) == 2:
                continue
            kind = KINDS.get(stat.S_IFMT(member.mode), "?")
            data = segment.payload[member.offset : member.offset + member.size]
            files[parts[2]] = LayerFile(kind, data if kind == "-" else b"", member.link_target)
    return [DirLayer(name, layers[name]) for name in sorted(layers)]


def check_layers(directory: Path, manifest: Manifest | None) -> Check:
    """Each layer of the manifest, at its offset in its file, has its recorded hash."""
    if manifest is None:
        return skipped(NAME, "no manifest to name the layers")
    if not manifest.layers:
        return skipped(NAME, NO_LAYERS)
    problems = [
        problem for layer in manifest.layers if (problem := layer_problem(directory, layer))
    ]
    if problems:
        return failed(NAME, "; ".join(problems))
    states = ", ".join(
        f"{layer.name} {layer.size / (1 << 20):.1f} MiB" for layer in manifest.layers
    )
    return passed(NAME, f"{count(manifest.layers, 'layer')} match manifest.json: {states}")


def layer_problem(directory: Path, layer: LayerRecord) -> str | None:
    if layer.file != INITRD:
        return f"{layer.name}: in {layer.file!r}, not in the {INITRD}"
    path = directory / INITRD
    try:
        with path.open("rb") as handle:
            handle.seek(layer.offset)
            digest = hashlib.sha256()
            left = layer.size
            while left > 0 and (chunk := handle.read(min(left, 1 << 20))):
                digest.update(chunk)
                left -= len(chunk)
    except OSError as exc:
        return f"{layer.name}: cannot read the {INITRD} ({exc.strerror})"
    if left > 0:
        return f"{layer.name}: the {INITRD} ends before the layer does"
    found = digest.hexdigest()
    if found != layer.sha256:
        return f"{layer.name}: sha256 {found[:16]}..., manifest.json says {layer.sha256[:16]}..."
    return None
