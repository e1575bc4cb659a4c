"""The figures of `plasmaboot report`, as plain data (what report.json holds and the plots
draw): size over builds per label, seconds per build step over builds, and where the bytes
of each current image go (its largest packages and kernel module trees)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plasmaboot.artifacts.layout import MANIFEST
from plasmaboot.artifacts.manifest import Manifest, read_manifest
from plasmaboot.report.history import read_history

TOP_PACKAGES = 15
TOP_MODULE_TREES = 12


def current_sets(artifacts: Path) -> dict[str, Manifest]:
    """The current set of each label under `artifacts` (`<label>` with a manifest)."""
    found: dict[str, Manifest] = {}
    try:
        entries = sorted(os.scandir(artifacts), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not (Path(entry.path) / MANIFEST).is_file():
            continue
        try:
            found[entry.name] = read_manifest(Path(entry.path))
        except (ValidationError, ValueError, OSError):
            continue  # a damaged set is verify's business; the report shows the others
    return found


def top(sizes: dict[str, int], count: int) -> tuple[list[tuple[str, int]], int]:
    """The `count` largest entries (largest first, then by name) and the sum of the rest."""
    ordered = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
    return ordered[:count], sum(size for _, size in ordered[count:])


def image_bytes(manifest: Manifest) -> dict[str, Any]:
    packages, other_packages = top(manifest.package_sizes, TOP_PACKAGES)
    modules, other_modules = top(manifest.module_sizes, TOP_MODULE_TREES)
    return {
        "set_built_at": manifest.built_at,
        "backend": manifest.backend,
        "kernel_version": manifest.kernel_version,
        "files": {name: record.size for name, record in sorted(manifest.files.items())},
        "packages": len(manifest.packages),
        "packages_installed_bytes": sum(manifest.package_sizes.values()),
        "top_packages": [[name, size] for name, size in packages],
        "other_packages_bytes": other_packages,
        "module_trees": [[name, size] for name, size in modules],
        "other_module_trees_bytes": other_modules,
    }


def collect_figures(artifacts: Path) -> dict[str, Any]:
    history = read_history(artifacts)
    sizes: dict[str, list[dict[str, Any]]] = {}
    steps: dict[str, list[dict[str, Any]]] = {}
    for record in history:
        label = str(record.get("label") or record["profile"])
        record_sizes = record.get("sizes", {})
        kernel, initrd = int(record_sizes.get("kernel", 0)), int(record_sizes.get("initrd", 0))
        sizes.setdefault(label, []).append(
            {
                "at": record.get("at", ""),
                "set": record.get("set", ""),
                "kernel": kernel,
                "initrd": initrd,
                "total": int(record_sizes.get("total", kernel + initrd)),
                "layers": record_sizes.get("layers", {}),
                "packages": record.get("packages", 0),
            }
        )
        if record.get("cache") != "hit":  # a cache hit has no steps of its own
            steps.setdefault(label, []).append(
                {
                    "at": record.get("at", ""),
                    "set": record.get("set", ""),
                    "seconds": record.get("seconds", 0),
                    "steps": top_level_steps(record.get("steps", {})),
                }
            )
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifacts": str(artifacts),
        "builds": len(history),
        "size_over_builds": sizes,
        "step_seconds_over_builds": steps,
        "images": {label: image_bytes(m) for label, m in current_sets(artifacts).items()},
    }


def top_level_steps(steps: dict[str, float]) -> dict[str, float]:
    """The build's own steps (`mmdebstrap`, `initrd`, ...); the hook's `customize.*` steps
    run inside mmdebstrap, so they are summed into one `customize` entry for reference (its
    last two run side by side, so the sum is more than the hook's wall time)."""
    result: dict[str, float] = {}
    for name, seconds in steps.items():
        key = name.split(".", 1)[0] if "." in name else name
        result[key] = round(result.get(key, 0.0) + float(seconds), 3)
    return result
