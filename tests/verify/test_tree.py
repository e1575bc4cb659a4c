"""verify.tree: an image's listing and extracted trees, symlinks resolved inside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from artifact_sets import make_squashfs, make_tree
from plasmaboot.verify.tree import ImageTree, parse_listing

TreeEdit = Callable[[Path], None]


def image_tree(tmp_path: Path, edit: TreeEdit) -> ImageTree:
    tree = make_tree(tmp_path / "tree", "k\n")
    edit(tree)
    image = make_squashfs(tree, tmp_path / "img")
    return ImageTree.read(image, tmp_path / "extracted")


def test_image_tree_resolves_links_inside_the_image(tmp_path: Path) -> None:
    def edit(tree: Path) -> None:
        (tree / "etc/shadow").rename(tree / "etc/shadow.real")
        (tree / "etc/shadow").symlink_to("/etc/shadow.real")
        (tree / "etc/ssh/loop").symlink_to("loop")

    tree = image_tree(tmp_path, edit)
    assert tree.resolve("etc/shadow") == "etc/shadow.real"
    assert tree.read_text("etc/shadow") == (tmp_path / "tree/etc/shadow.real").read_text()
    assert tree.resolve("etc/systemd/system/multi-user.target.wants/x.service") == (
        "etc/systemd/system/x.service"
    )
    assert tree.resolve("etc/ssh/loop") is None
    assert tree.glob("/etc/ssh/sshd_config.d/*.conf") == ["etc/ssh/sshd_config.d/plasmaboot.conf"]


def test_listing_lines_become_entries() -> None:
    listing = (
        "drwxr-xr-x root/root                63 2024-01-01 00:00 squashfs-root\n"
        "drwxr-xr-x root/root                63 2024-01-01 00:00 squashfs-root/etc\n"
        "-rw-r--r-- root/root               120 2024-01-01 00:00 squashfs-root/etc/shadow\n"
        "lrwxrwxrwx root/root                 9 2024-01-01 00:00 squashfs-root/etc/mtab -> "
        "/proc/mounts\n"
        "crw-r--r-- root/root             1,  3 2024-01-01 00:00 squashfs-root/dev/null\n"
        "Parallel unsquashfs: Using 2 processors\n"
    )
    entries = parse_listing(listing)
    assert set(entries) == {"etc", "etc/shadow", "etc/mtab", "dev/null"}
    assert entries["etc/shadow"].kind == "-" and entries["etc/shadow"].size == 120
    assert entries["etc/mtab"].link_target == "/proc/mounts"
    assert entries["dev/null"].kind == "c" and entries["dev/null"].size == 0
