"""The mmdebstrap hook's steps, each on a small fake root filesystem in tmp_path (as
mmdebstrap leaves it before the hook runs), with a stand-in `chroot` first on PATH that
records each call and answers the two whose output the hook reads (kmod static-nodes,
dpkg-query). The real thing runs in every image build
(tests/integration/test_debian_build.py)."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plasmaboot.formats.squashfs import read_squashfs_superblock
from plasmaboot.image.backends.debian import hook
from plasmaboot.image.backends.debian.contract import (
    INSIDE_OUT,
    INSIDE_PLAN,
    SQUASHFS_BLOCK_SIZES,
    HookOutputs,
    HookPlan,
    Output,
    UnitInstall,
)
from plasmaboot.image.backends.debian.hook import (
    STATIC_NODES,
    Context,
    copy_module_plain,
    export_kernel,
    list_static_nodes,
    mask_unneeded_units,
    parse_install,
    remove_host_keys,
    restore_build_replacements,
    stage1_module_order,
    trim_documentation,
    trim_hardware_names,
    trim_kernel_modules,
)
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

from conftest import KERNEL_RELEASE, make_kernel

AUTHORIZED_KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake op\n"
)
# The modules of the fake kernel, by path under kernel/, and what each needs (modules.dep).
MODULES = {
    "drivers/block/loop.ko": [],
    "fs/squashfs/squashfs.ko": ["lib/zstd/zstd_decompress.ko"],
    "lib/zstd/zstd_decompress.ko": [],
    "fs/overlayfs/overlay.ko": [],
    "drivers/net/e1000/e1000.ko.xz": [],
    "drivers/net/wireless/ath/ath.ko": [],
    "sound/core/snd.ko": [],
}
FAKE_CHROOT = """\
#!/bin/sh
root="$1"; shift
printf '%s\\n' "$*" >> "{record}"
case "$1" in
  kmod)
    for arg in "$@"; do
      case "$arg" in
        --output=*) printf 'c! /dev/fuse 0600 - - - 10:229\\n' > "$root${{arg#--output=}}";;
      esac
    done;;
  dpkg-query) printf 'openssh-server\\t1:9.2p1-2\\nsystemd\\t252.30-1\\n';;
  mkinitramfs)
    # as Debian's: the kernel's config from /boot, its work under $TMPDIR (or /var/tmp)
    [ -f "$root/boot/config-$6" ] || {{ echo "no /boot/config-$6" >&2; exit 1; }}
    touch "$root${{TMPDIR:-/var/tmp}}/mkinitramfs_XXXXXX" || exit 1
    cp "$root$3/initramfs.conf" "$root/initramfs.conf.seen"
    printf 'initramfs of %s, SOURCE_DATE_EPOCH=%s\\n' "$6" "$SOURCE_DATE_EPOCH" > "$root$5";;
esac
"""

ChrootCalls = Callable[[], list[str]]


@pytest.fixture
def chroot_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ChrootCalls:
    """Put the stand-in chroot first on PATH; the result lists its calls so far, one string
    each (the arguments after the root)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    record = tmp_path / "chroot-calls"
    script = bin_dir / "chroot"
    script.write_text(FAKE_CHROOT.format(record=record))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return lambda: record.read_text().splitlines() if record.exists() else []


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root filesystem with what the hook's steps look at: a kernel and its modules, host
    keys, documentation, apt lists, the build's replacements."""
    root = tmp_path / "root"
    modules = root / "usr/lib/modules" / KERNEL_RELEASE
    for relpath in MODULES:
        body = f"module {relpath}"
        if relpath.endswith(".xz"):
            write(modules / "kernel" / relpath).write_bytes(lzma.compress(body.encode()))
        else:
            write(modules / "kernel" / relpath, body)
    write(
        modules / "modules.dep",
        "".join(
            f"kernel/{path}: {' '.join(f'kernel/{dep}' for dep in deps)}\n"
            for path, deps in MODULES.items()
        ),
    )
    (root / "boot").mkdir()
    make_kernel(root / "boot" / f"vmlinuz-{KERNEL_RELEASE}")
    write(root / "boot" / f"config-{KERNEL_RELEASE}")
    write(root / "etc/ssh/ssh_host_ed25519_key", "host private key")
    write(root / "etc/ssh/ssh_host_ed25519_key.pub", "host public key")
    write(root / "usr/share/man/man1/ls.1.gz")
    write(root / "usr/share/info/coreutils.info.gz")
    write(root / "usr/share/doc-base/coreutils")
    write(root / "usr/share/locale/de/LC_MESSAGES/coreutils.mo")
    write(root / "usr/share/locale/en_GB/LC_MESSAGES/coreutils.mo")
    write(root / "usr/share/locale/locale.alias")
    write(root / "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease")
    write(root / "var/cache/apt/archives/bash_5.2_amd64.deb")
    write(root / "usr/lib/systemd/system/systemd-resolved.service")
    write(root / "etc/resolv.conf", "nameserver 192.0.2.1\n")
    write(root / "usr/sbin/start-stop-daemon", "#!/bin/sh\n# mmdebstrap's stand-in\n")
    write(root / "usr/sbin/start-stop-daemon.REAL", "\x7fELF the real one")
    write(root / "usr/lib/binfmt.d/python3.11.conf")
    return root


def worker(**changes: dict[str, object]) -> Profile:
    """The built-in worker profile, with changes to its resolved settings, by section:
    worker(network={"dhcp": False})."""
    profile = ProfileStore().resolve("worker")
    return profile.model_copy(
        update={
            section: getattr(profile, section).model_copy(update=values)
            if section != "sysctl"
            else values
            for section, values in changes.items()
        }
    )


def make_context(
    root: Path, profile: Profile | None = None, level: int = 1, compression: str = "zstd"
) -> Context:
    plan = HookPlan.for_profile(
        profile or worker(), squashfs_level=level, squashfs_compression=compression
    )
    outputs = HookOutputs(root / "tmp/plasmaboot-out")
    outputs.directory.mkdir(parents=True, exist_ok=True)
    return Context(root=root, plan=plan, log=Log(), outputs=outputs)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------
# trim_*


def test_trim_documentation(fake_root: Path) -> None:
    trim_documentation(make_context(fake_root, worker(system={"documentation": False})))
    share = fake_root / "usr/share"
    assert not (share / "man").exists() and not (share / "info").exists()
    assert not (share / "doc-base").exists()
    assert sorted(p.name for p in (share / "locale").iterdir()) == ["en_GB", "locale.alias"]


def test_documentation_is_kept_when_the_profile_wants_it(fake_root: Path) -> None:
    trim_documentation(make_context(fake_root, worker(system={"documentation": True})))
    assert (fake_root / "usr/share/man/man1/ls.1.gz").is_file()
    assert (fake_root / "usr/share/locale/de/LC_MESSAGES/coreutils.mo").is_file()


HWDB_SOURCES = ("20-OUI.hwdb", "20-pci-vendor-model.hwdb", "20-net-ifname.hwdb", "60-keyboard.hwdb")


def with_hwdb(root: Path) -> Path:
    hwdb = root / "usr/lib/udev/hwdb.d"
    for name in HWDB_SOURCES:
        write(hwdb / name, f"# {name}\n")
    return hwdb


def test_trim_hardware_names_keeps_what_rules_read_and_compiles_again(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    hwdb = with_hwdb(fake_root)
    trim_hardware_names(make_context(fake_root, worker(system={"documentation": False})))
    # interface names and keyboard maps are read by udev's rules: kept
    assert sorted(p.name for p in hwdb.iterdir()) == ["20-net-ifname.hwdb", "60-keyboard.hwdb"]
    assert chroot_calls() == ["systemd-hwdb update --usr --strict"]
    trim_hardware_names(make_context(fake_root, worker(system={"documentation": False})))
    assert len(chroot_calls()) == 1  # nothing left to remove: hwdb.bin is not rebuilt


def test_hardware_names_are_kept_with_documentation(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    hwdb = with_hwdb(fake_root)
    trim_hardware_names(make_context(fake_root, worker(system={"documentation": True})))
    assert sorted(p.name for p in hwdb.iterdir()) == sorted(HWDB_SOURCES)
    assert chroot_calls() == []


def kept_modules(root: Path) -> list[str]:
    tree = root / "usr/lib/modules" / KERNEL_RELEASE / "kernel"
    return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())


def test_trim_kernel_modules(fake_root: Path, chroot_calls: ChrootCalls) -> None:
    profile = worker(
        kernel={
            "include_modules": ["drivers/*", "fs/*", "lib/*"],
            "exclude_modules": ["drivers/net/wireless/*"],
        }
    )
    trim_kernel_modules(make_context(fake_root, profile))
    assert kept_modules(fake_root) == [
        "drivers/block/loop.ko",
        "drivers/net/e1000/e1000.ko.xz",
        "fs/overlayfs/overlay.ko",
        "fs/squashfs/squashfs.ko",
        "lib/zstd/zstd_decompress.ko",
    ]
    tree = fake_root / "usr/lib/modules" / KERNEL_RELEASE / "kernel"
    assert not (tree / "sound").exists()  # emptied directories go too
    assert not (tree / "drivers/net/wireless").exists()
    assert chroot_calls() == [f"depmod -a {KERNEL_RELEASE}"]  # modules.dep made anew


@pytest.mark.parametrize("compression", ["xz", "zstd"])
def test_kept_modules_stay_as_shipped_under_either_compressor(
    fake_root: Path, chroot_calls: ChrootCalls, compression: str
) -> None:
    """Unpacked, they would be 4.1 MB smaller in the xz squashfs for twice mksquashfs's
    time: they stay `.ko.xz` (docs/benchmarks.md, #16 "Size: xz in 1 MiB blocks")."""
    tree = fake_root / "usr/lib/modules" / KERNEL_RELEASE / "kernel"
    trim_kernel_modules(make_context(fake_root, compression=compression))
    assert (tree / "drivers/net/e1000/e1000.ko.xz").is_file()
    assert not (tree / "drivers/net/e1000/e1000.ko").exists()
    assert chroot_calls() == [f"depmod -a {KERNEL_RELEASE}"]


def test_no_include_globs_keep_every_module_but_the_excluded(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    trim_kernel_modules(
        make_context(
            fake_root, worker(kernel={"include_modules": [], "exclude_modules": ["sound/*"]})
        )
    )
    assert len(kept_modules(fake_root)) == len(MODULES) - 1
    assert chroot_calls() == [f"depmod -a {KERNEL_RELEASE}"]


# --------------------------------------------------------------------------------------
# export_kernel and stage-1's modules


def test_stage1_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/overlayfs/overlay.ko:\n"
        "kernel/fs/squashfs/squashfs.ko: kernel/lib/zstd.ko\n"
        "kernel/lib/zstd.ko:\n"
        "kernel/drivers/net/e1000.ko:\n"
    )
    order = stage1_module_order(tmp_path)
    assert order == [
        "kernel/lib/zstd.ko",
        "kernel/fs/squashfs/squashfs.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ]


def test_stage1_modules_shipped_compressed_are_given_to_stage1_plain(tmp_path: Path) -> None:
    """Backports kernels ship .ko.xz; stage-1's busybox insmod reads plain modules only."""
    root = tmp_path / "modules"
    body = b"\x7fELF module body" * 100
    write(root / "kernel/fs/squashfs/squashfs.ko.xz").write_bytes(lzma.compress(body))
    write(root / "kernel/drivers/block/loop.ko.gz").write_bytes(gzip.compress(body))
    write(root / "kernel/fs/overlayfs/overlay.ko").write_bytes(body)
    (root / "modules.dep").write_text(
        "kernel/fs/squashfs/squashfs.ko.xz: kernel/drivers/block/loop.ko.gz\n"
        "kernel/drivers/block/loop.ko.gz:\n"
        "kernel/fs/overlayfs/overlay.ko:\n"
    )
    order = stage1_module_order(root)
    assert order == [
        "kernel/drivers/block/loop.ko.gz",
        "kernel/fs/squashfs/squashfs.ko.xz",
        "kernel/fs/overlayfs/overlay.ko",
    ]
    target = tmp_path / "stage1"
    target.mkdir()
    names = [copy_module_plain(root / relpath, target) for relpath in order]
    assert names == ["loop.ko", "squashfs.ko", "overlay.ko"]
    assert all((target / name).read_bytes() == body for name in names)


def test_a_module_compressed_another_way_fails_the_build_by_name(tmp_path: Path) -> None:
    write(tmp_path / "loop.ko.zst")
    with pytest.raises(RuntimeError, match=r"loop\.ko\.zst: expected \.ko, \.ko\.xz or \.ko\.gz"):
        copy_module_plain(tmp_path / "loop.ko.zst", tmp_path)


def test_export_kernel(fake_root: Path) -> None:
    ctx = make_context(fake_root)
    export_kernel(ctx)
    out = ctx.outputs.directory
    boot = fake_root / "boot"
    assert (out / "bzImage").read_bytes()[0x202:0x206] == b"HdrS"
    assert (out / "kernel_version").read_text().strip() == KERNEL_RELEASE
    assert (out / "stage1-modules.txt").read_text().split() == [
        "loop.ko",
        "zstd_decompress.ko",
        "squashfs.ko",
        "overlay.ko",
    ]
    assert sorted(p.name for p in (out / "stage1-modules").iterdir()) == [
        "loop.ko",
        "overlay.ko",
        "squashfs.ko",
        "zstd_decompress.ko",
    ]
    # /boot stays for mkinitramfs (it reads the kernel's config there); the squashfs leaves
    # it out (test_the_hook_fills_the_contracts_outputs)
    assert (boot / f"config-{KERNEL_RELEASE}").is_file()


# --------------------------------------------------------------------------------------
# list_static_nodes: the chroot replaced by a stand-in for kmod that checks what it sees

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


def kmod_context(root: Path, kernel: str = IMAGE_KERNEL, **kmod: Any) -> FakeKmodContext:
    (root / "usr/lib/modules" / kernel).mkdir(parents=True)
    base = make_context(root)
    return FakeKmodContext(root=root, plan=base.plan, log=Log(), outputs=base.outputs, **kmod)


def test_kmod_sees_the_image_kernel_under_the_host_name_then_the_name_is_given_back(
    tmp_path: Path,
) -> None:
    ctx = kmod_context(tmp_path)
    list_static_nodes(ctx)
    assert ctx.calls == [("kmod", "static-nodes", "--format=tmpfiles", f"--output=/{STATIC_NODES}")]
    assert ctx.seen_kernel_dir == (tmp_path / "usr/lib/modules" / IMAGE_KERNEL).resolve()
    assert sorted(p.name for p in (tmp_path / "usr/lib/modules").iterdir()) == [IMAGE_KERNEL]
    assert (tmp_path / STATIC_NODES).read_text() == KMOD_LIST
    unit = tmp_path / "etc/systemd/system/kmod-static-nodes.service"
    assert os.readlink(unit) == "/dev/null"


def test_an_image_kernel_named_like_the_host_is_used_as_it_is(tmp_path: Path) -> None:
    ctx = kmod_context(tmp_path, kernel=os.uname().release)
    list_static_nodes(ctx)
    kernel_dir = tmp_path / "usr/lib/modules" / os.uname().release
    assert ctx.seen_kernel_dir == kernel_dir.resolve()
    assert kernel_dir.is_dir() and not kernel_dir.is_symlink()  # not removed afterwards


def test_a_failing_kmod_leaves_no_borrowed_name_and_no_mask(tmp_path: Path) -> None:
    ctx = kmod_context(tmp_path, fails=True)
    with pytest.raises(RuntimeError, match="kmod failed"):
        list_static_nodes(ctx)
    assert sorted(p.name for p in (tmp_path / "usr/lib/modules").iterdir()) == [IMAGE_KERNEL]
    assert not (tmp_path / "etc/systemd/system/kmod-static-nodes.service").is_symlink()


@pytest.mark.parametrize("writes", [None, "# Device nodes to trigger on-demand loading\n"])
def test_an_empty_list_fails_the_build_and_keeps_the_unit(
    tmp_path: Path, writes: str | None
) -> None:
    """kmod only warns, and exits 0, when the kernel has no modules.devname."""
    ctx = kmod_context(tmp_path, writes=writes)
    with pytest.raises(RuntimeError, match=r"listed no device nodes .*modules\.devname"):
        list_static_nodes(ctx)
    assert not (tmp_path / "etc/systemd/system/kmod-static-nodes.service").is_symlink()


# --------------------------------------------------------------------------------------
# The whole hook, as mmdebstrap runs it, and its outputs read back by the backend's side


def test_the_hook_fills_the_contracts_outputs(fake_root: Path, chroot_calls: ChrootCalls) -> None:
    plan = HookPlan.for_profile(worker(), squashfs_level=1)
    write(fake_root / "usr/lib/systemd/system/ssh.service", SSH_UNIT_FILE)
    for name in ("passwd", "group", "shadow", "gshadow"):
        write(fake_root / "etc" / name, f"root:x:0:0::/root:/bin/sh ({name})\n")
    (fake_root / "tmp").mkdir()
    plan.write(fake_root / INSIDE_PLAN.lstrip("/"))
    assert hook.main([str(fake_root)]) == 0
    result = HookOutputs(fake_root / INSIDE_OUT.lstrip("/")).read()
    assert result.kernel_version == KERNEL_RELEASE
    assert result.packages == {"openssh-server": "1:9.2p1-2", "systemd": "252.30-1"}
    assert sorted(result.steps) == sorted(s.__name__ for s in hook.STEPS + hook.CONCURRENT_STEPS)
    assert [p.name for p in result.stage1_modules][-1] == "overlay.ko"
    listing = subprocess.run(
        ["unsquashfs", "-l", str(result.root_squashfs)], check=True, capture_output=True, text=True
    ).stdout
    assert "squashfs-root/etc/hostname" in listing
    assert "squashfs-root/root/.ssh/authorized_keys" not in listing  # the profile layer's
    assert "squashfs-root/tmp/" not in listing  # the plan and the outputs stay out
    assert "squashfs-root/boot\n" in listing  # an empty /boot: the kernel is not in it twice
    assert "squashfs-root/boot/" not in listing
    assert "ssh_host_ed25519_key" not in listing
    assert f"depmod -a {KERNEL_RELEASE}" in chroot_calls()
    # what the profile layer reads from this one
    assert result.units["ssh.service"] == UnitInstall(
        path="/usr/lib/systemd/system/ssh.service",
        wanted_by=("multi-user.target",),
        alias=("sshd.service",),
    )
    assert result.accounts["shadow"] == "root:x:0:0::/root:/bin/sh (shadow)\n"


def test_the_initramfs_and_the_squashfs_are_made_side_by_side(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of CONCURRENT_STEPS waits for the other to start: run one after the other, the
    first would wait in vain and the barrier break."""
    barrier = threading.Barrier(2, timeout=10)

    def make_installed_initramfs(ctx: Context) -> None:
        barrier.wait()

    def make_squashfs(ctx: Context) -> None:
        barrier.wait()

    monkeypatch.setattr(hook, "STEPS", [])
    monkeypatch.setattr(hook, "CONCURRENT_STEPS", [make_installed_initramfs, make_squashfs])
    ctx = make_context(fake_root)
    timings = hook.apply_plan(fake_root, ctx.plan, Log(), ctx.outputs)
    assert sorted(timings) == ["make_installed_initramfs", "make_squashfs"]


def test_a_failed_concurrent_step_fails_the_hook_after_the_other_ends(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No build step is left running behind an error (mksquashfs writing on after the
    hook has failed)."""
    ended: list[str] = []

    def make_installed_initramfs(ctx: Context) -> None:
        raise RuntimeError("mkinitramfs failed")

    def make_squashfs(ctx: Context) -> None:
        time.sleep(0.3)
        ended.append("make_squashfs")

    monkeypatch.setattr(hook, "STEPS", [])
    monkeypatch.setattr(hook, "CONCURRENT_STEPS", [make_installed_initramfs, make_squashfs])
    ctx = make_context(fake_root)
    with pytest.raises(RuntimeError, match="mkinitramfs failed"):
        hook.apply_plan(fake_root, ctx.plan, Log(), ctx.outputs)
    assert ended == ["make_squashfs"]


def test_when_both_concurrent_steps_fail_both_are_in_the_log(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One cause (a full disk) can fail both: the second's error is not lost."""

    def make_installed_initramfs(ctx: Context) -> None:
        time.sleep(0.2)
        raise RuntimeError("mkinitramfs: No space left on device")

    def make_squashfs(ctx: Context) -> None:
        raise RuntimeError("mksquashfs: No space left on device")

    monkeypatch.setattr(hook, "STEPS", [])
    monkeypatch.setattr(hook, "CONCURRENT_STEPS", [make_installed_initramfs, make_squashfs])
    ctx = make_context(fake_root)
    with Log(tmp_path / "hook.log") as log, pytest.raises(RuntimeError, match="mkinitramfs"):
        hook.apply_plan(fake_root, ctx.plan, log, ctx.outputs)
    text = (tmp_path / "hook.log").read_text()
    assert "make_installed_initramfs failed: mkinitramfs: No space left" in text
    assert "make_squashfs failed: mksquashfs: No space left" in text


SSH_UNIT_FILE = """\
[Unit]
Description=OpenBSD Secure Shell server
[Service]
ExecStart=/usr/sbin/sshd -D
[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""


def test_remove_host_keys(fake_root: Path) -> None:
    remove_host_keys(make_context(fake_root))
    assert not list((fake_root / "etc/ssh").glob("ssh_host_*"))  # made at each boot instead


def test_parse_install_reads_what_systemctl_enable_reads() -> None:
    text = (
        "[Unit]\nWantedBy=ignored.target\n[Install]\nWantedBy=a.target b.target\n"
        "RequiredBy=c.service\nAlias=d.service\nAlso=e.socket\n# WantedBy=f.target\n"
        "WantedBy=\nWantedBy=g.target\nDefaultInstance=ttyS0\n"
    )
    assert parse_install("/x.service", text) == UnitInstall(
        path="/x.service",
        wanted_by=("g.target",),  # an empty value resets the list
        required_by=("c.service",),
        alias=("d.service",),
        also=("e.socket",),
        default_instance="ttyS0",
    )


def test_module_trees_are_measured_by_directory(tmp_path: Path) -> None:
    from plasmaboot.image.backends.debian.hook import module_tree_sizes

    kernel = tmp_path / "lib/modules/6.1.0-28-amd64/kernel"
    for relative, size in [
        ("drivers/net/ethernet/intel/e1000e.ko", 300),
        ("drivers/net/virtio_net.ko", 100),
        ("drivers/gpu/drm/drm.ko", 50),
        ("drivers/foo.ko", 7),
        ("fs/btrfs/btrfs.ko", 40),
        ("net/ipv4/tcp.ko", 2),
    ]:
        (kernel / relative).parent.mkdir(parents=True, exist_ok=True)
        (kernel / relative).write_bytes(b"x" * size)
    (kernel / "fs/link.ko").symlink_to("btrfs/btrfs.ko")
    assert module_tree_sizes(tmp_path) == {
        "drivers/net": 400,
        "drivers/gpu": 50,
        "drivers": 7,
        "fs": 40,
        "net": 2,
    }


def test_resolved_listens_on_nothing_and_its_stub_answers_names(fake_root: Path) -> None:
    """LLMNR and multicast DNS off on every image; /etc/resolv.conf is resolved's stub (the
    profile layer swaps it when an enabled DNS service needs port 53)."""
    ctx = make_context(fake_root)
    mask_unneeded_units(ctx)
    write(fake_root / "usr/lib/systemd/system/systemd-resolved.service", "[Unit]\n")
    restore_build_replacements(ctx)
    dropins = fake_root / "etc/systemd/resolved.conf.d"
    text = "".join(p.read_text() for p in sorted(dropins.glob("*.conf")))
    settings = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    assert settings == ["LLMNR=no", "MulticastDNS=no"]
    stub = "../run/systemd/resolve/stub-resolv.conf"
    assert os.readlink(fake_root / "etc/resolv.conf") == stub


def build_squashfs(
    root: Path, monkeypatch: pytest.MonkeyPatch, epoch: int, compression: str = "zstd"
) -> bytes:
    """Run the whole hook on `root` with this build date; the root squashfs it made."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
    plan = HookPlan.for_profile(worker(), squashfs_level=1, squashfs_compression=compression)
    for name in ("passwd", "group", "shadow", "gshadow"):
        write(root / "etc" / name, f"root:x:0:0::/root:/bin/sh ({name})\n")
    (root / "tmp").mkdir(exist_ok=True)
    plan.write(root / INSIDE_PLAN.lstrip("/"))
    assert hook.main([str(root)]) == 0
    return HookOutputs(root / INSIDE_OUT.lstrip("/")).read().root_squashfs.read_bytes()


def test_the_same_tree_gives_the_same_squashfs_whenever_it_is_built(
    fake_root: Path, tmp_path: Path, chroot_calls: ChrootCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files made at different times (the build's clock) give the same bytes: every time
    in the image is the build's date, and so are the update stamps' contents."""
    epoch = 1_796_005_301
    other, later = tmp_path / "other-root", tmp_path / "later-root"
    shutil.copytree(fake_root, other, symlinks=True)
    shutil.copytree(fake_root, later, symlinks=True)
    for path in [other, *other.rglob("*")]:
        os.utime(path, (epoch + 12345, epoch + 12345), follow_symlinks=False)
    first = build_squashfs(fake_root, monkeypatch, epoch)
    assert build_squashfs(other, monkeypatch, epoch) == first
    assert build_squashfs(later, monkeypatch, epoch + 1) != first  # the date is in it
    image = tmp_path / "first.squashfs"
    image.write_bytes(first)
    listing = subprocess.run(
        ["unsquashfs", "-lls", "-UTC", str(image)], check=True, capture_output=True, text=True
    ).stdout
    dates = {" ".join(line.split()[3:5]) for line in listing.splitlines() if line.strip()}
    assert dates == {"2026-11-30 02:21"}
    superblock = subprocess.run(
        ["unsquashfs", "-s", "-UTC", str(image)], check=True, capture_output=True, text=True
    ).stdout
    assert "Mon Nov 30 02:21:41 2026" in superblock
    # the update stamps: at the build's date, /usr a second before, as the stamps say
    assert (fake_root / "usr").stat().st_mtime == epoch - 1
    for stamp in hook.UPDATE_STAMPS:
        assert (fake_root / stamp).stat().st_mtime == epoch
        assert f"TIMESTAMP_NSEC={(epoch - 1) * 10**9}" in (fake_root / stamp).read_text()


@pytest.mark.parametrize("compression", ["zstd", "xz"])
def test_the_squashfs_has_the_plans_compressor_and_is_reproducible(
    fake_root: Path,
    tmp_path: Path,
    chroot_calls: ChrootCalls,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
) -> None:
    other = tmp_path / "other-root"
    shutil.copytree(fake_root, other, symlinks=True)
    image = build_squashfs(fake_root, monkeypatch, 1_796_005_301, compression)
    assert build_squashfs(other, monkeypatch, 1_796_005_301, compression) == image
    superblock = read_squashfs_superblock(image, len(image))
    assert superblock.compressor == compression
    assert superblock.block_size == SQUASHFS_BLOCK_SIZES[compression]  # 1 MiB xz, 128 KiB zstd
    (tmp_path / "image.squashfs").write_bytes(image)
    listing = subprocess.run(
        ["unsquashfs", "-l", str(tmp_path / "image.squashfs")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "e1000.ko.xz" in listing  # the modules stay as shipped


def test_the_squashfs_has_the_plans_block_size(
    fake_root: Path, chroot_calls: ChrootCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796005301")
    ctx = make_context(fake_root, compression="xz")
    ctx = Context(
        root=ctx.root,
        plan=ctx.plan.model_copy(update={"squashfs_block_size": 256 * 1024}),
        log=ctx.log,
        outputs=ctx.outputs,
    )
    hook.make_squashfs(ctx)
    image = ctx.outputs.path(Output.ROOT_SQUASHFS).read_bytes()
    superblock = read_squashfs_superblock(image, len(image))
    assert (superblock.compressor, superblock.block_size) == ("xz", 256 * 1024)


def test_the_installed_systems_initramfs_is_made_in_the_chroot(
    fake_root: Path, chroot_calls: ChrootCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mkinitramfs with a configuration of its own (the image's /etc/initramfs-tools is left
    as packaged), the build's date, its output in the hook's outputs, nothing left behind."""
    write(fake_root / "usr/sbin/mkinitramfs", "#!/bin/sh\n")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ctx = make_context(fake_root)
    hook.make_installed_initramfs(ctx)
    confdir = "/tmp/plasmaboot-initramfs"
    assert chroot_calls() == [f"mkinitramfs -d {confdir} -o {confdir}/initrd.img {KERNEL_RELEASE}"]
    made = ctx.outputs.path(Output.INSTALLED_INITRD)
    assert made.read_text() == f"initramfs of {KERNEL_RELEASE}, SOURCE_DATE_EPOCH=1700000000\n"
    assert not (fake_root / confdir.lstrip("/")).exists()
    # its work under /tmp (the squashfs, made at the same time, leaves tmp/ out), then gone
    assert not (fake_root / "tmp/plasmaboot-initramfs-work").exists()
    assert not (fake_root / "var/tmp").exists()
    conf = (fake_root / "initramfs.conf.seen").read_text()
    assert "MODULES=list\n" in conf and "RESUME=none\n" in conf and "COMPRESS=gzip\n" in conf
    assert not (fake_root / "etc/initramfs-tools").exists()


def test_the_initramfs_takes_every_module_class_of_most_but_the_network() -> None:
    """initramfs-tools' MODULES=most is auto_add_modules with these classes; the root of an
    installed system is on a disk, so NIC drivers (a third of the size) stay out."""
    most = [
        "base",
        "net",
        "ide",
        "scsi",
        "block",
        "ata",
        "dasd",
        "firewire",
        "mmc",
        "usb_storage",
        "fb",
    ]
    assert hook.INITRAMFS_CLASSES.split() == [c for c in most if c != "net"]
    assert f"auto_add_modules {hook.INITRAMFS_CLASSES}\n" in hook.INITRAMFS_HOOK


def test_an_image_without_initramfs_tools_gets_no_installed_initramfs(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    ctx = make_context(fake_root)
    hook.make_installed_initramfs(ctx)
    assert chroot_calls() == []
    assert not ctx.outputs.path(Output.INSTALLED_INITRD).exists()
