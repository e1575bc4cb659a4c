"""verify.sshd: sshd's settings worked out as sshd does (first value wins, Includes where
they stand, Match blocks apart)."""

from __future__ import annotations

from pathlib import Path

from artifact_sets import SSHD_MAIN, make_squashfs, make_tree
from plasmaboot.verify.sshd import read_sshd_config
from plasmaboot.verify.tree import ImageTree


def image_tree(tmp_path: Path, sshd_config: str) -> ImageTree:
    tree = make_tree(tmp_path / "tree", "k\n")
    (tree / "etc/ssh/sshd_config").write_text(sshd_config)
    image = make_squashfs(tree, tmp_path / "img")
    return ImageTree.read(image, tmp_path / "extracted")


def test_sshd_first_match_wins_across_includes(tmp_path: Path) -> None:
    # the drop-in is included first, so its "no" wins over the later "yes"
    config = read_sshd_config(image_tree(tmp_path, SSHD_MAIN + "PasswordAuthentication yes\n"))
    assert config.settings["passwordauthentication"] == "no"
    assert config.files == ["etc/ssh/sshd_config", "etc/ssh/sshd_config.d/plasmaboot.conf"]


def test_sshd_match_blocks_are_kept_apart(tmp_path: Path) -> None:
    text = SSHD_MAIN + "Match Address 10.0.0.0/8\n  PasswordAuthentication yes\n"
    config = read_sshd_config(image_tree(tmp_path, text))
    assert config.settings["passwordauthentication"] == "no"
    assert config.in_match == [("etc/ssh/sshd_config", "passwordauthentication", "yes")]


def test_sshd_aliases_and_equals_signs_are_read(tmp_path: Path) -> None:
    text = "ChallengeResponseAuthentication=yes\nInclude sshd_config.d/*.conf\n"
    config = read_sshd_config(image_tree(tmp_path, text))
    assert config.settings["kbdinteractiveauthentication"] == "yes"  # read first: it wins
    assert config.settings["passwordauthentication"] == "no"
