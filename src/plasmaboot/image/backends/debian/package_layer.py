"""The package layer's cache: the squashfs of the installed packages (made by mmdebstrap and
the hook), with the kernel, the stage-1 modules and what the profile layer reads from it,
stored under the hash of exactly what it is made from, so every profile with the same
packages, release, mirror, module globs and documentation setting shares one entry:

    <cache>/layers/packages/<key>/   the hook's outputs (contract.Output) + layer.json

An entry is found again only while every file of it matches layer.json (its size and
sha256: the squashfs, the kernel, the installed system's initramfs, ...): a damaged or
missing file is a miss, and the next build replaces the entry, so a set never ships a
damaged copy under a freshly computed hash. Two builds of one key wait for each other (a lock
file per key), so a layer is made once even with --jobs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from plasmaboot import __version__
from plasmaboot.artifacts.layout import sha256_file
from plasmaboot.catalog import packages_path
from plasmaboot.image.backends.debian.contract import Output
from plasmaboot.image.cache import files_fingerprint

LAYER_JSON = "layer.json"
# What the package layer is made by: a change to any of these makes a new key.
HERE = Path(__file__).parent
PACKAGE_LAYER_CODE = (
    HERE / "hook.py",
    HERE / "contract.py",
    HERE / "backend.py",
    HERE / "package_layer.py",
    HERE.parents[2] / "run.py",
)


def package_layer_fingerprint() -> str:
    """A hash of the code and data that make the package layer (not the profile layer's
    code, nor stage-1: changing those keeps the package layer)."""
    return files_fingerprint(__version__, [*PACKAGE_LAYER_CODE, packages_path()])


def package_layer_key(inputs: Mapping[str, object]) -> str:
    """The key of the package layer these inputs make (see DebianBackend.package_inputs)."""
    body = json.dumps({**inputs, "code": package_layer_fingerprint()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class PackageLayer:
    """One package layer: the hook's outputs in `directory`, and its squashfs's hash."""

    key: str
    directory: Path
    sha256: str
    size: int

    @property
    def squashfs(self) -> Path:
        return self.directory / Output.ROOT_SQUASHFS

    @classmethod
    def describe(cls, directory: Path, key: str) -> PackageLayer:
        squashfs = directory / Output.ROOT_SQUASHFS
        return cls(key, directory, sha256_file(squashfs), squashfs.stat().st_size)

    def write_record(self, inputs: Mapping[str, object]) -> None:
        record = {
            "key": self.key,
            "sha256": self.sha256,
            "size": self.size,
            "files": describe_files(self.directory),
            "inputs": inputs,
        }
        (self.directory / LAYER_JSON).write_text(json.dumps(record, indent=1, sort_keys=True))


def describe_files(directory: Path) -> dict[str, dict[str, object]]:
    """Every regular file of an entry but its record, by path under it: size and sha256."""
    files: dict[str, dict[str, object]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != LAYER_JSON:
            name = path.relative_to(directory).as_posix()
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return files


def files_match(directory: Path, files: Mapping[str, Mapping[str, object]]) -> bool:
    """Whether each recorded file is there with its size and sha256 (sizes first: cheap)."""
    if any(Path(name).is_absolute() or ".." in Path(name).parts for name in files):
        return False  # a record naming files outside its entry is not ours
    paths = {name: directory / name for name in files}
    if any(path.is_symlink() or not path.is_file() for path in paths.values()):
        return False
    if any(paths[name].stat().st_size != files[name]["size"] for name in files):
        return False
    return all(sha256_file(paths[name]) == files[name]["sha256"] for name in files)


@dataclass(frozen=True)
class PackageLayerCache:
    root: Path  # <cache>/layers/packages

    @classmethod
    def under(cls, cache_dir: Path) -> PackageLayerCache:
        return cls(cache_dir / "layers" / "packages")

    def entries(self) -> list[Path]:
        """The stored layers (what `bench/layer_rebuild.py` counts)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if (p / LAYER_JSON).is_file())

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the key's lock: a second build of the same layer waits, then finds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f".{key}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def lookup(self, key: str) -> PackageLayer | None:
        """The stored layer, if every file of it matches its record (an entry recorded
        before files were, or with its squashfs left out of them, is a miss)."""
        directory = self.root / key
        try:
            record = json.loads((directory / LAYER_JSON).read_text())
            files = record["files"]
            squashfs = files[Output.ROOT_SQUASHFS.value]
            if (squashfs["size"], squashfs["sha256"]) != (record["size"], record["sha256"]):
                return None
            if not files_match(directory, files):
                return None
            return PackageLayer(key, directory, record["sha256"], record["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, outputs: Path, key: str, inputs: Mapping[str, object]) -> PackageLayer:
        """Move the hook's outputs in under `key` (replacing an older entry: a --no-cache
        build refreshes it) and return the stored layer."""
        self.root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        os.rmdir(temp)
        shutil.move(outputs, temp)
        layer = PackageLayer.describe(temp, key)
        layer.write_record(inputs)
        final = self.root / key
        retired = self.root / f".old-{key}-{os.getpid()}-{time.monotonic_ns()}"
        if final.exists():
            os.rename(final, retired)
        os.rename(temp, final)
        shutil.rmtree(retired, ignore_errors=True)
        return PackageLayer(key, final, layer.sha256, layer.size)
