"""Fixtures of the verify tests: a real key pair, and a complete set made to order."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_sets import make_initrd, make_ipxe, make_squashfs, make_tree, rehash
from plasmaboot.artifacts.layout import KERNEL

from conftest import make_kernel

TreeEdit = Callable[[Path], None]


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A real ed25519 key pair from ssh-keygen: (public line, private key file text)."""
    key = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    return key.with_suffix(".pub").read_text(), key.read_text()


@pytest.fixture
def make_set(tmp_path: Path, keypair: tuple[str, str]) -> Callable[..., Path]:
    """Build a complete artifact set; `edit` changes the root tree before it is squashed."""

    def build(edit: TreeEdit | None = None) -> Path:
        directory = tmp_path / "set"
        directory.mkdir()
        tree = make_tree(tmp_path / "tree", keypair[0])
        if edit is not None:
            edit(tree)
        make_initrd(directory, make_squashfs(tree, tmp_path / "root.squashfs"))
        make_kernel(directory / KERNEL)
        make_ipxe(directory)
        rehash(directory)
        return directory

    return build
