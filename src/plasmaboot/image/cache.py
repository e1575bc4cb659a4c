"""The content-addressed cache of finished artifact sets. A set is stored under the hash of
everything that went into it (the profile and the files it names, the extra keys, the
backend's own inputs), and is found again only while every byte still matches its
manifest: a damaged entry is a miss, and the next build replaces it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.artifacts.layout import MANIFEST, SET_FILES, sha256_file
from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.paths import cache_dir
from plasmaboot.profiles.model import Profile


def cache_key(profile: Profile, backend_inputs: Mapping[str, str], ssh_keys: Sequence[Path]) -> str:
    """The key of the set these inputs make."""
    body = {
        "profile": profile.content_hash(),
        "inputs": dict(backend_inputs),
        "ssh_keys": [Path(key).read_text() for key in ssh_keys],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SetCache:
    """Finished sets, one directory per key: `<root>/<key>/` holds the set's files."""

    root: Path

    @classmethod
    def default(cls) -> SetCache:
        """The user's cache ($PLASMABOOT_CACHE, else $XDG_CACHE_HOME/plasmaboot)."""
        return cls(cache_dir() / "sets")

    def lookup(self, key: str) -> Path | None:
        """The cached set for `key`, if it is complete and every byte checks out."""
        directory = self.root / key
        if not (directory / MANIFEST).is_file():
            return None
        try:
            manifest = read_manifest(directory)
        except ValueError:
            return None
        for name, record in manifest.files.items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != record.size:
                return None
            if sha256_file(path) != record.sha256:
                return None
        return directory

    def store(self, staged: Path, key: str) -> None:
        """Put a finished set under `key`, replacing an older entry (a --no-cache rebuild
        refreshes it). Safe against a concurrent writer of the same key: the entry is
        filled under a name of its own and renamed into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        copy_set(staged, temp)
        final = self.root / key
        retired = self.root / f".old-{key}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            if final.exists():
                os.rename(final, retired)
            os.rename(temp, final)
        except OSError:
            # another build stored the same key at the same moment: theirs is as good as ours
            shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def copy_set(source: Path, target: Path) -> None:
    """The set's files from `source` into `target`: hard links where the filesystem allows."""
    for name in SET_FILES:
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)
