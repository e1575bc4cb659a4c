"""How a backend describes its options: one dataclass field per option, from which the
command line takes its flag, type, default, range and help."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.image.backend import BackendOptions, BackendType, flag, option
from plasmaboot.image.backends.debian.backend import DebianBackend, DebianOptions
from plasmaboot.image.backends.nix import NixOptions


@dataclass(frozen=True)
class SampleOptions(BackendOptions):
    tree_path: Path | None = option(None, help="a directory")
    level: int = option(3, help="how hard", minimum=1, maximum=5)
    name: str = option("x", help="a name", metavar="NAME")


def test_each_field_is_described() -> None:
    rows = {info.name: info for info in SampleOptions.describe()}
    assert list(rows) == ["tree_path", "level", "name"]
    assert (rows["tree_path"].flag, rows["tree_path"].value_type) == ("--tree-path", Path)
    assert rows["tree_path"].default is None
    assert (rows["level"].value_type, rows["level"].minimum, rows["level"].maximum) == (int, 1, 5)
    assert (rows["name"].metavar, rows["name"].help) == ("NAME", "a name")
    assert flag("squashfs_level") == "--squashfs-level"


def test_given_lists_the_options_away_from_their_defaults() -> None:
    assert SampleOptions().given() == []
    assert SampleOptions(level=4, name="y").given() == ["--level", "--name"]
    assert SampleOptions(level=3).given() == []  # the default, even when spelled out


def test_ranges_are_checked_and_options_are_frozen() -> None:
    SampleOptions(level=5).check()
    with pytest.raises(UserError, match="--level: expected 1 to 5, got 0"):
        SampleOptions(level=0).check()
    with pytest.raises(FrozenInstanceError):
        SampleOptions().level = 4  # type: ignore[misc]


def test_the_real_backends_describe_their_options() -> None:
    assert [info.flag for info in DebianOptions.describe()] == [
        "--release",
        "--mirror",
        "--security-mirror",
        "--snapshot",
        "--squashfs-level",
        "--squashfs-compression",
        "--squashfs-block-size",
    ]
    assert [info.flag for info in NixOptions.describe()] == ["--flake", "--plasmacloud"]


def test_a_backend_is_made_only_with_its_own_options() -> None:
    debian = BackendType(name="debian", options=DebianOptions, make=DebianBackend, auto_rank=2)
    assert isinstance(debian.create(), DebianBackend)
    with pytest.raises(TypeError, match="debian takes DebianOptions"):
        debian.create(NixOptions())
