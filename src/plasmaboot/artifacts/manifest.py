"""manifest.json: the size and sha256 of every file of a set, and what was built: the
resolved profile (every setting, with its content hash), backend, distro, kernel and its
command line, packages (with what each occupies), and seconds per step. Stages after the
build read it, never the profile files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from plasmaboot.artifacts.layout import MANIFEST, sha256_file
from plasmaboot.profiles.model import NAME_PATTERN, Profile

MANIFEST_VERSION = 2


class FileRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    sha256: str
    size: int


class LayerRecord(BaseModel):
    """One layer of an image (docs/layers.md): where its bytes are in a set file, their
    hash, and whether this build made it or reused it from the cache."""

    model_config = ConfigDict(frozen=True)

    name: str  # "stage1", "10-packages", "50-profile"
    kind: str  # "segment": a whole initrd segment; "squashfs": one member's data
    file: str  # the set file that holds it ("initrd")
    member: str | None = None  # for a squashfs: its path in the initrd
    offset: int
    size: int
    sha256: str
    reused: bool = False


class Manifest(BaseModel):
    """What manifest.json holds: enough to check every byte and to know what was built."""

    model_config = ConfigDict(extra="allow")

    version: int = MANIFEST_VERSION
    profile: str
    variant: str | None = None
    # the one name rule (a profile name, or profile-variant): the label becomes a path
    label: Annotated[str, Field(pattern=NAME_PATTERN)]
    content_hash: str
    # every setting the image was built from: later stages judge the image against this
    resolved_profile: Profile
    cache_key: str
    backend: str
    distro: str
    kernel_version: str
    kernel_params: list[str]
    files: dict[str, FileRecord]
    packages: dict[str, str]
    # bytes each package occupies (Debian: dpkg's Installed-Size) and each kernel module tree
    # (`drivers/net`, `fs`, ...): optional, so manifests written before them still read
    package_sizes: dict[str, int] = {}
    module_sizes: dict[str, int] = {}
    steps: dict[str, float]
    built_at: str
    plasmaboot_version: str
    # the image's layers (Debian); the Nix backend makes one image, not layers: empty
    layers: list[LayerRecord] = []


def file_records(directory: Path, names: tuple[str, ...]) -> dict[str, FileRecord]:
    return {
        name: FileRecord(
            sha256=sha256_file(directory / name), size=(directory / name).stat().st_size
        )
        for name in names
        if (directory / name).is_file()
    }


def write_manifest(directory: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    (directory / MANIFEST).write_text(text, encoding="utf-8")


def read_manifest(directory: Path) -> Manifest:
    return Manifest.model_validate_json((directory / MANIFEST).read_text(encoding="utf-8"))
