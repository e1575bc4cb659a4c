"""Manifests and histories for the tests of report/ (and the status page): sets that hold
only manifest.json, with packages, sizes and steps chosen by the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plasmaboot.artifacts.manifest import FileRecord, Manifest, write_manifest
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

MIB = 1 << 20


def worker_profile(**sections: dict[str, Any]) -> Profile:
    """The built-in worker profile, with some sections' fields replaced."""
    profile = ProfileStore().resolve("worker")
    for section, values in sections.items():
        current = getattr(profile, section)
        profile = profile.model_copy(update={section: current.model_copy(update=values)})
    return profile


def make_manifest(
    directory: Path,
    *,
    profile: Profile | None = None,
    packages: dict[str, str] | None = None,
    package_sizes: dict[str, int] | None = None,
    module_sizes: dict[str, int] | None = None,
    kernel_version: str = "6.1.0-28-amd64",
    initrd_size: int = 100 * MIB,
    steps: dict[str, float] | None = None,
    **extra: Any,
) -> Manifest:
    profile = profile or worker_profile()
    manifest = Manifest(
        profile=profile.name,
        variant=profile.variant,
        label=profile.label,
        content_hash=profile.content_hash(),
        resolved_profile=profile,
        cache_key="0" * 16,
        backend="debian",
        distro="debian bookworm",
        kernel_version=kernel_version,
        kernel_params=["console=ttyS0"],
        files={
            "bzImage": FileRecord(sha256="a" * 64, size=8 * MIB),
            "initrd": FileRecord(sha256="b" * 64, size=initrd_size),
            "netboot.ipxe": FileRecord(sha256="c" * 64, size=300),
        },
        packages=packages if packages is not None else {"bash": "5.2.15-2+b7"},
        package_sizes=package_sizes or {},
        module_sizes=module_sizes or {},
        steps=steps if steps is not None else {"mmdebstrap": 100.0, "initrd": 5.0},
        built_at="2026-01-01T00:00:00+00:00",
        plasmaboot_version="0.1.0",
        **extra,
    )
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(directory, manifest)
    return manifest
