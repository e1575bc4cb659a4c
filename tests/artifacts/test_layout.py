"""artifacts.layout: the staging directories a build leaves when it stops are cleaned up,
those of a build still running are not."""

from __future__ import annotations

import os
from pathlib import Path

from plasmaboot.artifacts.layout import (
    INSTALLED_INITRD,
    clean_stale,
    present_files,
    sets_dir,
    staging_dir,
)
from plasmaboot.artifacts.publish import publish_atomically
from published_sets import NAMES, make_source


def test_clean_stale_removes_leftovers_only(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    publish_atomically(make_source(tmp_path / "a", "one"), out, "w", NAMES)
    leftover = staging_dir(out, "w")
    (leftover / "initrd").write_text("half")
    clean_stale(out)
    assert not leftover.exists()
    assert (out / "w" / "initrd").read_text() == "initrd:one"


def test_clean_stale_keeps_a_running_builds_staging(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    sets = sets_dir(out)
    sets.mkdir(parents=True)
    alive = sets / f".staging-{os.getppid()}-w-abc"  # our parent: surely running
    dead = sets / ".staging-999999999-w-abc"  # no such process
    alive.mkdir()
    dead.mkdir()
    clean_stale(out)
    assert alive.exists()
    assert not dead.exists()


def test_an_optional_set_file_is_listed_only_when_the_set_holds_it(tmp_path: Path) -> None:
    assert present_files(tmp_path, ("bzImage",)) == ("bzImage",)
    (tmp_path / INSTALLED_INITRD).mkdir()  # a directory is not the file
    assert present_files(tmp_path, ("bzImage",)) == ("bzImage",)
    (tmp_path / INSTALLED_INITRD).rmdir()
    (tmp_path / INSTALLED_INITRD).write_bytes(b"x")
    assert present_files(tmp_path, ("bzImage",)) == ("bzImage", INSTALLED_INITRD)
