"""The interface every backend implements: turn a resolved Profile into a kernel and an
initrd in a staging directory. The pipeline does the rest (iPXE script, manifest,
checks, publishing), so both backends give the same artifact set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile


@dataclass(frozen=True)
class BuildRequest:
    profile: Profile
    staging: Path  # write bzImage and initrd here
    log: Log
    ssh_keys: tuple[Path, ...] = ()  # extra public keys from --ssh-key
    release: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    cache_dir: Path | None = None  # shared cache (e.g. downloaded .deb files)
    flake: Path | None = None  # nix: the flake to build from


@dataclass(frozen=True)
class BuildResult:
    kernel_version: str
    distro: str  # "debian bookworm", "nixos 24.05", ...
    extra_kernel_params: tuple[str, ...] = ()  # nix: ("init=/nix/store/...-toplevel/init",)
    packages: dict[str, str] = field(default_factory=dict)  # name -> version


class Backend(Protocol):
    name: str

    def check_available(self) -> None:
        """Raise UserError naming what to install when the backend cannot run here."""

    def cache_inputs(self, request: BuildRequest) -> dict[str, str]:
        """Everything besides the profile that changes the image (for the cache key)."""

    def build(self, request: BuildRequest) -> BuildResult:
        """Write `bzImage` and `initrd` into request.staging."""
