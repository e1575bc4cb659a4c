"""The build history: one JSON line per build, appended to OUTPUT_DIR/history.jsonl.

Each line is written with one write(2) on a file opened O_APPEND, so builds running at the
same time never interleave their lines. The file is bounded: past MAX_BYTES it is renamed to
history.jsonl.1 (the one before is dropped) under an exclusive lock, and a new one begins.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from plasmaboot import __version__
from plasmaboot.artifacts.layout import INITRD, KERNEL
from plasmaboot.artifacts.manifest import Manifest

HISTORY = "history.jsonl"
MAX_BYTES = 4 << 20  # about 4000 builds per generation
RECORD_VERSION = 1


def history_path(output_dir: Path) -> Path:
    return output_dir / HISTORY


def layer_sizes(manifest: Manifest) -> dict[str, int]:
    """The size of each layer of the image, by name (`manifest.layers`, docs/layers.md); a
    manifest without layers (a Nix image, a set built before layers) gives {}."""
    return {layer.name: layer.size for layer in manifest.layers}


def history_record(
    manifest: Manifest, set_id: str, cache_hit: bool, seconds: float, built_at: str
) -> dict[str, Any]:
    """What one build adds to the history (everything a report plots)."""
    kernel = manifest.files.get(KERNEL)
    initrd = manifest.files.get(INITRD)
    return {
        "record": RECORD_VERSION,
        "at": built_at,
        "profile": manifest.profile,
        "variant": manifest.variant,
        "label": manifest.label,
        "backend": manifest.backend,
        "content_hash": manifest.content_hash,
        "set": set_id,
        "seconds": round(seconds, 3),
        "steps": dict(manifest.steps),
        "sizes": {
            "kernel": kernel.size if kernel else 0,
            "initrd": initrd.size if initrd else 0,
            "files": {name: record.size for name, record in sorted(manifest.files.items())},
            # what a node downloads: every file of the set (a layered set may have several
            # initrd files; the script is a few hundred bytes)
            "total": sum(record.size for record in manifest.files.values()),
            "layers": layer_sizes(manifest),
        },
        "packages": len(manifest.packages),
        "kernel_version": manifest.kernel_version,
        "cache": "hit" if cache_hit else "miss",
        "version": __version__,
    }


def append_history(output_dir: Path, record: dict[str, Any], max_bytes: int = MAX_BYTES) -> Path:
    """Append one record as one line; rotate the file first when it is past `max_bytes`."""
    path = history_path(output_dir)
    line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size + len(line) > max_bytes and os.fstat(fd).st_size > 0:
            # the file is rotated while we hold its lock; a writer that opened the old file
            # meanwhile appends to history.jsonl.1, which is still a whole line
            os.replace(path, path.with_name(HISTORY + ".1"))
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def read_history(output_dir: Path) -> list[dict[str, Any]]:
    """Every record, oldest first (the rotated generation, then the current file). A line
    that is not a JSON object (a disk that filled mid-line) is skipped."""
    records: list[dict[str, Any]] = []
    current = history_path(output_dir)
    for path in (current.with_name(HISTORY + ".1"), current):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("profile"), str):
                records.append(record)
    return records
