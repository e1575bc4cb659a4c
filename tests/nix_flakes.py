"""The flakes the Nix tests evaluate and build: a copy of plasmaboot's own, and the fixture
flake (tests/fixtures/nixflake: no inputs, builds in seconds), built through the command
line. The offline nix settings are the `offline_nix` fixture (conftest.py)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from conftest import REPO, plasmaboot

FIXTURE_FLAKE = REPO / "tests" / "fixtures" / "nixflake"

needs_nix = pytest.mark.skipif(shutil.which("nix") is None, reason="nix is not installed")


def copy_flake_sources(target: Path) -> None:
    """The plasmaboot flake's files, outside git (so nix treats the copy as a path flake)."""
    for name in ("nix", "profiles", "catalog"):
        shutil.copytree(REPO / name, target / name)
    shutil.copy(REPO / "flake.nix", target / "flake.nix")


def copy_fixture_flake(target: Path) -> Path:
    """A copy of the fixture flake with a fresh nonce, so nix really builds it."""
    shutil.copytree(FIXTURE_FLAKE, target)
    (target / "nonce").write_text(secrets.token_hex(8))
    return target


def fixture_initrd_text(path: Path) -> str:
    """The fixture initrd: one gzip member, then zero padding."""
    return zlib.decompressobj(wbits=31).decompress(path.read_bytes()).decode()


def nix_build(
    flake: Path, out: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return plasmaboot(
        "build",
        "--backend",
        "nix",
        "--flake",
        str(flake),
        "--output-dir",
        str(out),
        "--json",
        "--no-ssh-key",  # the fixture's images are built, never logged into
        *args,
        env=env,
    )
