"""Image customization steps that can be checked without a build: here, the static device
node list, with the chroot replaced by a stand-in for kmod (the real kmod runs in every
image build: tests/test_build.py checks its list in the CI image)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plasmaboot.image.backends.debian.hook import (
    STATIC_NODES,
    Context,
    list_static_nodes,
    render_dhcp_network,
)
from plasmaboot.log import Log

IMAGE_KERNEL = "6.1.0-test-amd64"
KMOD_LIST = "c! /dev/fuse 0600 - - - 10:229\nd /dev/net 0755 - - -\n"


@dataclass
class FakeKmodContext(Context):
    """`kmod static-nodes` in the chroot: reads /lib/modules/$(uname -r), as kmod does."""

    writes: str | None = KMOD_LIST
    fails: bool = False
    seen_kernel_dir: Path | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def chroot(self, *argv: str) -> None:
        self.calls.append(argv)
        kernel_dir = self.root / "usr/lib/modules" / os.uname().release
        self.seen_kernel_dir = kernel_dir.resolve() if kernel_dir.exists() else None
        if self.fails:
            raise RuntimeError("kmod failed")
        if self.writes is not None:
            (self.root / STATIC_NODES).write_text(self.writes)


def make_context(root: Path, kernel: str = IMAGE_KERNEL, **kmod: Any) -> FakeKmodContext:
    (root / "usr/lib/modules" / kernel).mkdir(parents=True)
    plan: Any = None  # list_static_nodes does not read the plan
    return FakeKmodContext(root=root, plan=plan, log=Log(), out=root / "out", **kmod)


def test_kmod_sees_the_image_kernel_under_the_host_name_then_the_name_is_given_back(
    tmp_path: Path,
) -> None:
    ctx = make_context(tmp_path)
    list_static_nodes(ctx)
    assert ctx.calls == [("kmod", "static-nodes", "--format=tmpfiles", f"--output=/{STATIC_NODES}")]
    assert ctx.seen_kernel_dir == (tmp_path / "usr/lib/modules" / IMAGE_KERNEL).resolve()
    assert sorted(p.name for p in (tmp_path / "usr/lib/modules").iterdir()) == [IMAGE_KERNEL]
    assert (tmp_path / STATIC_NODES).read_text() == KMOD_LIST
    unit = tmp_path / "etc/systemd/system/kmod-static-nodes.service"
    assert os.readlink(unit) == "/dev/null"


def test_an_image_kernel_named_like_the_host_is_used_as_it_is(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, kernel=os.uname().release)
    list_static_nodes(ctx)
    kernel_dir = tmp_path / "usr/lib/modules" / os.uname().release
    assert ctx.seen_kernel_dir == kernel_dir.resolve()
    assert kernel_dir.is_dir() and not kernel_dir.is_symlink()  # not removed afterwards


def test_a_failing_kmod_leaves_no_borrowed_name_and_no_mask(tmp_path: Path) -> None:
    ctx = make_context(tmp_path, fails=True)
    with pytest.raises(RuntimeError, match="kmod failed"):
        list_static_nodes(ctx)
    assert sorted(p.name for p in (tmp_path / "usr/lib/modules").iterdir()) == [IMAGE_KERNEL]
    assert not (tmp_path / "etc/systemd/system/kmod-static-nodes.service").is_symlink()


@pytest.mark.parametrize("writes", [None, "# Device nodes to trigger on-demand loading\n"])
def test_an_empty_list_fails_the_build_and_keeps_the_unit(
    tmp_path: Path, writes: str | None
) -> None:
    """kmod only warns, and exits 0, when the kernel has no modules.devname."""
    ctx = make_context(tmp_path, writes=writes)
    with pytest.raises(RuntimeError, match=r"listed no device nodes .*modules\.devname"):
        list_static_nodes(ctx)
    assert not (tmp_path / "etc/systemd/system/kmod-static-nodes.service").is_symlink()


def test_dhcp_network_file_without_an_mtu_leaves_the_link_alone() -> None:
    assert render_dhcp_network(None) == (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        "[Match]\nType=ether\nKind=!*\n\n"
        "[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )


def test_dhcp_network_file_sets_the_profiles_mtu() -> None:
    assert render_dhcp_network(9000) == (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        "[Match]\nType=ether\nKind=!*\n\n"
        "[Link]\nMTUBytes=9000\n\n"
        "[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )
