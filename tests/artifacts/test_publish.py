"""artifacts.publish: a set is published atomically behind its label's symlink; the
previous set stays for a node that is still fetching it, and older ones are pruned."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import KEEP_GENERATIONS, sets_dir
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.errors import UserError
from published_sets import NAMES, make_source


def test_publish_makes_a_symlinked_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    final = publish_atomically(make_source(tmp_path / "a", "one"), out, "worker", NAMES)
    link = out / "worker"
    assert link.is_symlink()
    assert link.resolve() == final.resolve()
    assert (link / "initrd").read_text() == "initrd:one"
    assert stat.S_IMODE((final / "initrd").stat().st_mode) == 0o644


def test_republish_swaps_and_keeps_the_previous_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    first = publish_atomically(make_source(tmp_path / "a", "one"), out, "worker", NAMES)
    second = publish_atomically(make_source(tmp_path / "b", "two"), out, "worker", NAMES)
    assert first != second
    assert (out / "worker" / "bzImage").read_text() == "bzImage:two"
    # a node that fetched the old script can still finish downloading the old set
    assert (first / "initrd").read_text() == "initrd:one"


def test_identical_content_gives_the_same_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    first = publish_atomically(make_source(tmp_path / "a", "same"), out, "w", NAMES)
    again = publish_atomically(make_source(tmp_path / "b", "same"), out, "w", NAMES)
    assert first == again
    assert [p.name for p in sets_dir(out).iterdir()] == [first.name]


def test_old_sets_are_pruned(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    for index in range(5):
        publish_atomically(make_source(tmp_path / str(index), str(index)), out, "w", NAMES)
        publish_atomically(make_source(tmp_path / f"o{index}", str(index)), out, "other", NAMES)
    worker_sets = [p for p in sets_dir(out).iterdir() if p.name.startswith("w-")]
    assert len(worker_sets) == KEEP_GENERATIONS
    other_sets = [p for p in sets_dir(out).iterdir() if p.name.startswith("other-")]
    assert len(other_sets) == KEEP_GENERATIONS


def test_a_plain_directory_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    make_source(out / "worker", "hand-copied")
    publish_atomically(make_source(tmp_path / "a", "new"), out, "worker", NAMES)
    assert (out / "worker").is_symlink()
    assert (out / "worker" / "initrd").read_text() == "initrd:new"


def test_failed_copy_leaves_previous_set(tmp_path: Path) -> None:
    out = tmp_path / "pxe"
    publish_atomically(make_source(tmp_path / "a", "one"), out, "w", NAMES)
    broken = make_source(tmp_path / "b", "two")
    (broken / "initrd").unlink()
    with pytest.raises(UserError, match="initrd: cannot read it"):
        publish_atomically(broken, out, "w", NAMES)
    assert (out / "w" / "initrd").read_text() == "initrd:one"
    assert not [p for p in sets_dir(out).iterdir() if p.name.startswith(".staging-")]
