"""Publishing a set to a PXE server's directory: the same atomic commit a build uses."""

from __future__ import annotations

import shutil
from pathlib import Path

from plasmaboot.artifacts.layout import commit_set, staging_dir


def publish_atomically(source: Path, parent: Path, label: str, names: tuple[str, ...]) -> Path:
    """Copy `names` from `source` into `parent/label/` so the whole set appears at once;
    until then, and if anything fails, the previous set stays current and intact."""
    parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(parent, label)
    try:
        for name in names:
            shutil.copy2(source / name, staged / name)
        return commit_set(staged, parent, label, names)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
