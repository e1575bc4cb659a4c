"""Where plasmaboot finds its data (profiles, catalog) and keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The directory holding `profiles/` and `catalog/`.

    An installed wheel carries them in `plasmaboot/_data`; a source checkout (editable
    install) uses the repository root, so the Nix flake and Python read the same files.
    """
    packaged = PACKAGE_DIR / "_data"
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent.parent


def builtin_profiles_dir() -> Path:
    return data_dir() / "profiles"


def cache_dir() -> Path:
    """The content-addressed cache: $PLASMABOOT_CACHE, else $XDG_CACHE_HOME/plasmaboot."""
    explicit = os.environ.get("PLASMABOOT_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "plasmaboot"
