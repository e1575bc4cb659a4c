"""The content-addressed cache of finished artifact sets. A set is stored under the hash of
everything that went into it (the profile and the files it names, the extra keys, the
backend's own inputs), and is found again only while every byte still matches its
manifest: a damaged entry is a miss, and the next build replaces it.

Hashing every byte of three sets took most of a no-change rebuild (~0.5 s of 1.4 s for
~450 MB), so a lookup that hashed the files records what it saw (inode, size, mtime) in
`.checked-<key>.json` beside the entry, and the next lookup hashes only a file whose
record differs, or whose mtime is too close to the record's time to tell a later write
apart (git's "racily clean" rule). A change that keeps a file's inode, size and mtime is
the one damage it does not see."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from plasmaboot import __version__
from plasmaboot.artifacts.layout import MANIFEST, SET_FILES, present_files, sha256_file
from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.paths import cache_dir
from plasmaboot.profiles.model import Profile

PACKAGE = Path(__file__).resolve().parents[1]  # src/plasmaboot


def code_fingerprint(*extra: Path) -> str:
    """A hash of the code that makes a set around any backend's output (the image
    pipeline, the cpio writer, the manifest: every module of image/, formats/ and
    artifacts/), of `extra` (a backend's own data and tools) and of the version: part of
    the set's cache key, so a change to any of them misses instead of giving a stale set."""
    paths = [
        *sorted((PACKAGE / "image").rglob("*.py")),
        *sorted((PACKAGE / "formats").rglob("*.py")),
        *sorted((PACKAGE / "artifacts").rglob("*.py")),
        *extra,
    ]
    return files_fingerprint(__version__, paths)


def files_fingerprint(salt: str, paths: Sequence[Path]) -> str:
    """A hash of `salt` and the files' names and bytes (a missing file counts as missing),
    worked out once per process while the files keep their size and mtime."""
    states = tuple((path, *stat_or_none(path)) for path in paths)
    return hash_files(salt, states)


def stat_or_none(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def hash_files(salt: str, states: tuple[tuple[Path, int, int], ...]) -> str:
    digest = hashlib.sha256(salt.encode())
    for path, _, _ in states:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"(missing)")
    return digest.hexdigest()[:16]


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
        checked = read_checked(self.checked_path(key))
        for name, record in manifest.files.items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != record.size:
                return None
            if still_as_checked(path, checked):
                continue
            if sha256_file(path) != record.sha256:
                return None
        write_checked(self.checked_path(key), directory, list(manifest.files))
        return directory

    def checked_path(self, key: str) -> Path:
        """Beside the entry, not in it: an entry holds a set's files only."""
        return self.root / f".checked-{key}.json"

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


RACY_NS = 2_000_000_000  # a file written this close to the record is hashed again


def file_state(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def read_checked(path: Path) -> dict[str, object]:
    try:
        checked = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return checked if isinstance(checked, dict) else {}


def still_as_checked(path: Path, checked: dict[str, object]) -> bool:
    """The file is as it was when its bytes were last hashed and found good."""
    files, at = checked.get("files"), checked.get("at")
    if not isinstance(files, dict) or not isinstance(at, int):
        return False
    state = file_state(path)
    return files.get(path.name) == state and state[2] < at - RACY_NS


def write_checked(path: Path, directory: Path, names: list[str]) -> None:
    """Record the files just found good (best effort: a read-only cache just hashes)."""
    record = {"at": time.time_ns(), "files": {n: file_state(directory / n) for n in names}}
    temp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        temp.write_text(json.dumps(record))
        os.replace(temp, path)
    except OSError:
        temp.unlink(missing_ok=True)


def copy_set(source: Path, target: Path) -> None:
    """The set's files from `source` into `target`: hard links where the filesystem allows."""
    for name in present_files(source, SET_FILES):
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)
