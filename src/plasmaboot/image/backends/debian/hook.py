"""Make the package layer: trim a Debian root filesystem and turn it into boot parts.

The package layer depends only on the packages, the release and mirror, the module globs
and the documentation setting (the plan, `contract.HookPlan`), so every profile with the
same ones shares it; the rest of a profile is applied by `profile_layer`, without a chroot.
Runs inside mmdebstrap's customize hook (`python -m plasmaboot.image.backends.debian.hook ROOT`),
so it works the same in root mode and in unshare mode (where only the hook sees the files
as root). What it reads (the plan) and what it leaves (the outputs: kernel, root squashfs,
stage-1 modules, package list, step timings) are described in `contract`. Each step is a
small function; the order is `STEPS`, then `CONCURRENT_STEPS` side by side.
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.artifacts.layout import STATIC_NODES
from plasmaboot.image.backends.debian.contract import (
    ACCOUNT_FILES,
    INSIDE_OUT,
    INSIDE_PLAN,
    HookOutputs,
    HookPlan,
    Output,
    UnitInstall,
    parse_install,
)
from plasmaboot.log import Log
from plasmaboot.run import run

# Modules stage-1 needs before it can mount the root image (the Debian kernel builds them
# as modules); their dependencies are added from modules.dep.
STAGE1_MODULES = ("loop", "squashfs", "overlay")
KEPT_LOCALE_PREFIXES = ("en", "locale.alias")
# udev's hardware database: these sources only name vendors and models for people
# (ID_VENDOR_FROM_DATABASE, ID_MODEL_FROM_DATABASE: "Intel Corporation", a MAC prefix's
# owner); no rule, driver or interface name reads them. They are 12 of hwdb.bin's 13 MB
# and 3.3 MB of the zstd squashfs. The rest (interface names, keyboards, sensors,
# autosuspend, ...) is compiled again without them.
HWDB_DIR = "usr/lib/udev/hwdb.d"
HWDB_NAME_DATABASES = (
    "20-OUI.hwdb",
    "20-acpi-vendor.hwdb",
    "20-bluetooth-vendor-product.hwdb",
    "20-pci-vendor-model.hwdb",
    "20-sdio-vendor-model.hwdb",
    "20-usb-vendor-model.hwdb",
)


@dataclass
class Context:
    root: Path
    plan: HookPlan
    log: Log
    outputs: HookOutputs  # where the boot parts go (inside the chroot's /tmp)

    def chroot(self, *argv: str) -> None:
        run(["chroot", str(self.root), *argv], log=self.log)

    def write(self, relpath: str, text: str, mode: int = 0o644) -> Path:
        path = self.root / relpath.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        os.chmod(path, mode)
        return path

    def mask(self, relpath: str) -> None:
        """Point a unit or generator at /dev/null: systemd then never runs it."""
        link = self.root / relpath
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")

    def kernel_version(self) -> str:
        versions = sorted(p.name for p in (self.root / "usr/lib/modules").iterdir())
        if len(versions) != 1:
            raise RuntimeError(f"expected one kernel in the image, found {versions}")
        return versions[0]


# --------------------------------------------------------------------------------------
# Steps


def clean_package_caches(ctx: Context) -> None:
    """No apt lists or caches in the image: they are large and stale by the next boot."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in ctx.root.glob(pattern):
            if path.is_file():
                path.unlink()


def remove_host_keys(ctx: Context) -> None:
    """Host keys are made at each boot (the profile layer's plasmaboot-ssh-hostkeys unit)."""
    ssh = ctx.root / "etc/ssh"
    for key in ssh.glob("ssh_host_*") if ssh.is_dir() else []:
        key.unlink()


def lock_root_password(ctx: Context) -> None:
    ctx.chroot("usermod", "--lock", "root")


def configure_identity(ctx: Context) -> None:
    """Nothing that must be unique per machine stays in the image."""
    ctx.write("etc/hostname", "plasmaboot\n")
    ctx.write("etc/machine-id", "")  # empty: systemd makes a fresh one at each boot
    for stale in ("var/lib/dbus/machine-id", "var/lib/systemd/random-seed"):
        (ctx.root / stale).unlink(missing_ok=True)


def trim_documentation(ctx: Context) -> None:
    """dpkg excludes most of it; this catches what maintainer scripts create."""
    if ctx.plan.documentation:
        return
    for relpath in ("usr/share/man", "usr/share/info", "usr/share/doc-base"):
        shutil.rmtree(ctx.root / relpath, ignore_errors=True)
    locale_dir = ctx.root / "usr/share/locale"
    if locale_dir.is_dir():
        for child in locale_dir.iterdir():
            if not child.name.startswith(KEPT_LOCALE_PREFIXES):
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def trim_hardware_names(ctx: Context) -> None:
    """Without documentation, udev's vendor and model name databases go too (they name
    hardware for people, like man pages); hwdb.bin is compiled again from what is left,
    deterministically (same sources, same bytes)."""
    if ctx.plan.documentation:
        return
    hwdb = ctx.root / HWDB_DIR
    removed = [name for name in HWDB_NAME_DATABASES if (hwdb / name).is_file()]
    if not removed:
        return
    for name in removed:
        (hwdb / name).unlink()
    ctx.chroot("systemd-hwdb", "update", "--usr", "--strict")
    ctx.log.info(f"hwdb: {len(removed)} name databases removed, hwdb.bin compiled again")


def trim_kernel_modules(ctx: Context) -> None:
    """Keep the module trees a server needs (profile globs), then rebuild modules.dep."""
    version = ctx.kernel_version()
    tree = ctx.root / "usr/lib/modules" / version / "kernel"
    include, exclude = ctx.plan.include_modules, ctx.plan.exclude_modules
    removed = 0
    for module in list(tree.rglob("*.ko*")):
        rel = module.relative_to(tree).as_posix()
        keep = any(fnmatch.fnmatch(rel, g) for g in include) if include else True
        if not keep or any(fnmatch.fnmatch(rel, g) for g in exclude):
            module.unlink()
            removed += 1
    for directory in sorted(tree.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    # The kept modules stay as the package ships them (backports' `.ko.xz`): unpacked,
    # they are 4.1 MB smaller in the xz squashfs (1 MiB blocks) for twice its input and
    # about twice mksquashfs's time (docs/benchmarks.md, #16 "Size: xz in 1 MiB blocks").
    ctx.log.info(f"dropped {removed} kernel modules")
    ctx.chroot("depmod", "-a", version)


# kmod-static-nodes.service lists, at every boot, the device nodes (/dev/fuse,
# /dev/net/tun, /dev/loop-control, ...) whose modules load when first opened, and udevd
# waits for that list. It depends on the image's kernel alone, so the image's own kmod
# makes it once, here, where the unit would write it (/etc overrides /run), and the unit
# is masked: it sat on the way to udevd and the NIC (the lease came ~0.5-1 s sooner
# without it under TCG, docs/benchmarks.md). STATIC_NODES (artifacts.layout) names it.
def list_static_nodes(ctx: Context) -> None:
    version = ctx.kernel_version()
    # kmod reads /lib/modules/$(uname -r): in the chroot that is the build host's kernel
    alias = ctx.root / "usr/lib/modules" / os.uname().release
    borrowed = not alias.exists()
    if borrowed:
        alias.symlink_to(version)
    listing = ctx.root / STATIC_NODES
    try:
        listing.parent.mkdir(parents=True, exist_ok=True)
        ctx.chroot("kmod", "static-nodes", "--format=tmpfiles", f"--output=/{STATIC_NODES}")
    finally:
        if borrowed:
            alias.unlink()
    # kmod only warns (exit 0) when it finds no modules.devname: never mask the unit then
    lines = listing.read_text().splitlines() if listing.is_file() else []
    if not any(line.startswith(("c! ", "b! ")) for line in lines):
        raise RuntimeError(
            f"kmod static-nodes listed no device nodes in /{STATIC_NODES} "
            f"(is usr/lib/modules/{version}/modules.devname missing?)"
        )
    ctx.mask("etc/systemd/system/kmod-static-nodes.service")


# The installed system's initramfs (`plasmaboot install` puts it on the disk with the
# kernel): made here once per package layer, natively, instead of by update-initramfs on
# each node (over a thousand forks, 2-3 minutes under TCG). Generic, as the kernel is:
# initramfs-tools' module classes but `net` (the root is on a disk, never NFS), so every
# storage, filesystem, RAID and LVM driver the image keeps, and no NIC driver (9.5 of 30
# MB with MODULES=most); no resume device (the build host's swap must not be looked at).
# Its own configuration directory: the image's /etc/initramfs-tools stays as packaged.
INITRAMFS_CONF = """\
# plasmaboot: the installed system's generic initramfs, made at build time
MODULES=list
BUSYBOX=auto
KEYMAP=n
COMPRESS=gzip
COMPRESSLEVEL=1
RESUME=none
"""
INITRAMFS_CLASSES = "base ide scsi block ata dasd firewire mmc usb_storage fb"
INITRAMFS_HOOK = f"""\
#!/bin/sh
# plasmaboot: every module class of MODULES=most but net
case "$1" in prereqs) exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
auto_add_modules {INITRAMFS_CLASSES}
"""
INITRAMFS_CONFDIR = "tmp/plasmaboot-initramfs"  # inside the chroot; /tmp is not in the image
INITRAMFS_WORKDIR = "tmp/plasmaboot-initramfs-work"


def make_installed_initramfs(ctx: Context) -> None:
    """The installed system's initramfs (Output.INSTALLED_INITRD), from the image's own
    kernel modules (after trimming) and initramfs-tools, with mkinitramfs in the chroot."""
    version = ctx.kernel_version()
    if not (ctx.root / "usr/sbin/mkinitramfs").exists():
        ctx.log.info("no initramfs-tools in the image: no initramfs for installs")
        return
    ctx.write(f"{INITRAMFS_CONFDIR}/initramfs.conf", INITRAMFS_CONF)
    ctx.write(f"{INITRAMFS_CONFDIR}/modules", "")
    ctx.write(f"{INITRAMFS_CONFDIR}/hooks/plasmaboot-storage", INITRAMFS_HOOK, mode=0o755)
    for sub in ("scripts", "conf.d"):
        (ctx.root / INITRAMFS_CONFDIR / sub).mkdir(parents=True, exist_ok=True)
    (ctx.root / INITRAMFS_WORKDIR).mkdir(parents=True, exist_ok=True)
    inside = f"/{INITRAMFS_CONFDIR}/initrd.img"
    # Its work directory under /tmp too (it would be /var/tmp): mksquashfs reads the tree
    # at the same time (CONCURRENT_STEPS) and leaves tmp/ out.
    run(
        ["chroot", str(ctx.root), "mkinitramfs", "-d", f"/{INITRAMFS_CONFDIR}", "-o", inside,
         version],
        log=ctx.log,
        env={"SOURCE_DATE_EPOCH": str(build_epoch()), "TMPDIR": f"/{INITRAMFS_WORKDIR}"},
    )  # fmt: skip
    shutil.move(ctx.root / inside.lstrip("/"), ctx.outputs.path(Output.INSTALLED_INITRD))
    shutil.rmtree(ctx.root / INITRAMFS_CONFDIR)
    shutil.rmtree(ctx.root / INITRAMFS_WORKDIR)


def export_kernel(ctx: Context) -> None:
    """The kernel leaves the image (bzImage artifact); stage-1 gets its few modules. /boot
    stays in the tree for mkinitramfs (it reads the kernel's config there) and out of the
    squashfs (SQUASHFS_EXCLUDES): the kernel is not in the image twice."""
    version = ctx.kernel_version()
    shutil.copy2(ctx.root / "boot" / f"vmlinuz-{version}", ctx.outputs.path(Output.KERNEL))
    ctx.outputs.write_kernel_version(version)
    module_root = ctx.root / "usr/lib/modules" / version
    order = stage1_module_order(module_root)
    target = ctx.outputs.stage1_dir()
    names = [copy_module_plain(module_root / relpath, target) for relpath in order]
    ctx.outputs.write_stage1_order(names)


# How a kernel package may compress its modules (Debian's 6.1 ships plain .ko, its 6.12
# .ko.xz): stage-1's busybox insmod reads plain modules only, so they are unpacked here.
MODULE_DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".xz": lzma.decompress,
    ".gz": gzip.decompress,
}


def copy_module_plain(source: Path, target_dir: Path) -> str:
    """Copy a module into target_dir as a plain `.ko` (decompressed if it is not one) and
    return its new name."""
    name = source.name
    if name.endswith(".ko"):
        shutil.copy2(source, target_dir / name)
        return name
    stem, suffix = os.path.splitext(name)
    decompress = MODULE_DECOMPRESSORS.get(suffix)
    if decompress is None or not stem.endswith(".ko"):
        raise RuntimeError(f"stage-1 module {name}: expected .ko, .ko.xz or .ko.gz")
    (target_dir / stem).write_bytes(decompress(source.read_bytes()))
    return stem


def stage1_module_order(module_root: Path) -> list[str]:
    """Stage-1 modules and their dependencies, dependencies first (from modules.dep)."""
    deps: dict[str, list[str]] = {}
    for line in (module_root / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0]: p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in deps.get(path, []):
            visit(dep)
        if path not in order:
            order.append(path)

    for name in STAGE1_MODULES:
        if name in by_name:  # absent means built into the kernel
            visit(by_name[name])
    return order


# Units that make no sense on a stateless node running from RAM: package list refreshes,
# scheduled upgrades and backups of a dpkg database that vanishes at reboot, scrubbing and
# LVM monitoring of filesystems that are not there yet, and loading a kexec kernel
# (nixos-anywhere does its own). Masked, so they cost no CPU while the node boots.
UNNEEDED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "kexec-load.service",
    "kexec.service",
    "lvm2-monitor.service",
)
# mmdebstrap removes these in its own clean-up, which runs after our hook has made the
# squashfs (and fails if they are gone), so they are left in the tree and kept out of the
# image: its apt/dpkg build config, the policy-rc.d that forbids starting services, logs.
BUILD_LEFTOVERS = (
    "usr/sbin/policy-rc.d",
    "etc/apt/apt.conf.d/00mmdebstrap",
    "etc/apt/apt.conf.d/99mmdebstrap",
    "etc/dpkg/dpkg.cfg.d/99mmdebstrap",
    "etc/.resolv.conf.systemd-resolved.bak",  # the build host's resolver
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
)


# Generators run before systemd can start anything, each a process of its own. SysV
# scripts are not used on these nodes, and auto-mounting partitions found on local disks
# is the last thing an installer wants. A RAM image never resumes from hibernation, has
# no integritytab or veritytab (its root is a squashfs checked by the manifest), and is
# replaced, never updated offline. All of these go, and boot is shorter for it.
MASKED_GENERATORS = (
    "systemd-sysv-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
    "systemd-system-update-generator",
)
# python3 registers .pyc files as executables with the kernel (binfmt_misc); with it
# gone, and no other package registering a format, systemd-binfmt is skipped (its run
# took ~1.6 s of a busy boot under TCG, `systemd-analyze blame`).
UNNEEDED_FILES = ("usr/lib/binfmt.d/python3*.conf",)
# Ordering it after networkd too was tried: no gain (it then starts as the lease arrives,
# next to sshd's first greeting; docs/benchmarks.md).
RESOLVED_LATER = """\
# plasmaboot: DNS is not needed to reach the node; let sshd have the CPU first.
[Unit]
After=ssh.service
"""
# The node runs from RAM: a "persistent" journal would be a second copy in the tmpfs
# overlay, and flushing it there costs CPU early in the boot.
JOURNAL_VOLATILE = """\
# plasmaboot: the node runs from RAM; keep the journal in /run only.
[Journal]
Storage=volatile
"""


# Nothing but sshd and the enabled services listens on the node's network: resolved's
# LLMNR (0.0.0.0:5355) and multicast DNS answer name queries from the whole segment.
RESOLVED_NO_LISTENERS = """\
# plasmaboot: nothing but sshd and the enabled services listens on the network.
[Resolve]
LLMNR=no
MulticastDNS=no
"""


def mask_unneeded_units(ctx: Context) -> None:
    for unit in UNNEEDED_UNITS:
        ctx.mask(f"etc/systemd/system/{unit}")
    ctx.write("etc/systemd/system/systemd-resolved.service.d/10-plasmaboot.conf", RESOLVED_LATER)
    ctx.write("etc/systemd/resolved.conf.d/10-plasmaboot.conf", RESOLVED_NO_LISTENERS)
    ctx.write("etc/systemd/journald.conf.d/10-plasmaboot.conf", JOURNAL_VOLATILE)
    for generator in MASKED_GENERATORS:
        ctx.mask(f"etc/systemd/system-generators/{generator}")
    for pattern in UNNEEDED_FILES:
        for path in ctx.root.glob(pattern):
            path.unlink()


# Written where systemd-update-done would write them on a first boot.
UPDATE_STAMPS = ("etc/.updated", "var/.updated")


def mark_image_updated(ctx: Context) -> None:
    """Tell systemd the image is already up to date with its /usr. Without the stamps every
    boot counts as "/usr was updated": units gated on ConditionNeedsUpdate= run again, and
    one of them, systemd-sysusers, sits on the boot's critical path (udevd and networkd wait
    for it; ~1 s under TCG). The image is made whole here and never updated in place, so
    the stamps are true: sysusers runs one last time first, and /usr is not touched after.
    """
    ctx.chroot("systemd-sysusers")
    # No time in the squashfs is later than the build's date (make_squashfs clamps them).
    # /usr is dated one second before it and the stamps at it: ConditionNeedsUpdate compares
    # whole seconds first (squashfs keeps no more), so every boot reads "up to date", and
    # the stamps say /usr's time as systemd-update-done would.
    epoch = build_epoch()
    usr_ns = (epoch - 1) * 1_000_000_000
    os.utime(ctx.root / "usr", ns=(usr_ns, usr_ns))
    for relpath in UPDATE_STAMPS:
        stamp = ctx.write(
            relpath,
            "# plasmaboot: the image was built whole; nothing to update at boot.\n"
            f"TIMESTAMP_NSEC={usr_ns}\n",
        )
        os.utime(stamp, (epoch, epoch))


def build_epoch() -> int:
    """The build's date (SOURCE_DATE_EPOCH, set by the backend from the archive's state):
    the latest time the image holds. Now, when the hook is run by hand."""
    given = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(given) if given.isdigit() else int(time.time())


def restore_build_replacements(ctx: Context) -> None:
    """mmdebstrap swaps start-stop-daemon for a do-nothing stand-in while packages install;
    the real one goes back before the squashfs is made. DNS comes from DHCP through
    systemd-resolved, never from the build host's resolv.conf: its stub (the profile layer
    points it at the DHCP servers instead when a DNS service holds port 53)."""
    real = ctx.root / "usr/sbin/start-stop-daemon.REAL"
    if real.exists():
        os.replace(real, ctx.root / "usr/sbin/start-stop-daemon")
    resolv = ctx.root / "etc/resolv.conf"
    if (ctx.root / "usr/lib/systemd/system/systemd-resolved.service").exists():
        resolv.unlink(missing_ok=True)
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")


def record_packages(ctx: Context) -> None:
    """Every package with its version and installed size (dpkg's Installed-Size, KiB), and
    the bytes of each kernel module tree as the image holds it (after trimming)."""
    query = "${Package}\t${Version}\t${Installed-Size}\n"
    proc = run(["chroot", str(ctx.root), "dpkg-query", "-W", "-f", query], log=None)
    packages: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for line in proc.stdout.decode().splitlines():
        name, version, kib = [*line.split("\t"), "", ""][:3]
        if name:
            packages[name] = version
            sizes[name] = int(kib) * 1024 if kib.isdigit() else 0
    ctx.outputs.write_packages(packages)
    ctx.outputs.write_sizes(sizes, module_tree_sizes(ctx.root))


def module_tree_sizes(root: Path) -> dict[str, int]:
    """Bytes under each kernel module tree: `drivers/<dir>` and the other top directories of
    lib/modules/<version>/kernel (`fs`, `net`, `sound`, ...), summed over kernel versions."""
    sizes: dict[str, int] = {}
    for kernel_dir in sorted(root.glob("lib/modules/*/kernel")):
        for path in kernel_dir.rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            parts = path.relative_to(kernel_dir).parts
            tree = "/".join(parts[:2]) if parts[0] == "drivers" and len(parts) > 2 else parts[0]
            if len(parts) == 1:
                tree = "(top)"
            sizes[tree] = sizes.get(tree, 0) + path.stat().st_size
    return sizes


UNIT_DIRS = ("usr/lib/systemd/system", "etc/systemd/system")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".target", ".path", ".mount")


def export_base(ctx: Context) -> None:
    """What the profile layer reads from this one, left beside it: the unit files and
    their [Install] sections (to enable units without systemctl) and the account files
    (to add the services' users to)."""
    units: dict[str, UnitInstall] = {}
    for relpath in UNIT_DIRS:  # /etc after /usr: the one systemd would load wins
        directory = ctx.root / relpath
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            if path.suffix in UNIT_SUFFIXES and path.is_file() and not path.is_symlink():
                units[path.name] = parse_install(f"/{relpath}/{path.name}", path.read_text())
    ctx.outputs.write_units(units)
    accounts = ctx.outputs.accounts_dir()
    for name in ACCOUNT_FILES:
        shutil.copyfile(ctx.root / "etc" / name, accounts / name)


# Mount points stay in the image, their contents do not.
SQUASHFS_EXCLUDES = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*", "boot/*", *BUILD_LEFTOVERS)


# Compressor, level and block size are the plan's (contract.py says why zstd 19 in 1 MiB
# blocks is the default). Every file read at boot decompresses the whole block holding it;
# zstd decodes a 1 MiB block fast enough under TCG that fewer, larger reads win (xz in the
# same blocks does not: it reached SSH 3.4 s later).
def make_squashfs(ctx: Context) -> None:
    level = str(ctx.plan.squashfs_level)
    output = ctx.outputs.path(Output.ROOT_SQUASHFS)
    block_size = str(ctx.plan.squashfs_block_size)
    options = ["-noappend", "-no-progress", "-quiet", "-b", block_size]
    # The same tree gives the same bytes. SOURCE_DATE_EPOCH (the build's date): mksquashfs
    # makes it the filesystem's time and clamps every later file time to it, so what the
    # build wrote (with the build's clock) carries it and what packages shipped keeps its
    # own time (mksquashfs refuses -mkfs-time/-all-time beside it). Entries go in name
    # order (mksquashfs sorts each directory), blocks in a fixed order whatever its
    # threads do (-reproducible).
    compression = (
        ["-comp", "zstd", "-Xcompression-level", level]
        if ctx.plan.squashfs_compression == "zstd"
        else ["-comp", "xz", "-Xbcj", "x86"]
    )
    excludes = ["-wildcards", "-e", *SQUASHFS_EXCLUDES]
    run(
        [
            "mksquashfs",
            str(ctx.root),
            str(output),
            *options,
            "-reproducible",
            *compression,
            *excludes,
        ],
        log=ctx.log,
        env={"SOURCE_DATE_EPOCH": str(build_epoch())},
    )


STEPS: list[Callable[[Context], None]] = [
    clean_package_caches,
    remove_host_keys,
    lock_root_password,
    configure_identity,
    mask_unneeded_units,
    trim_documentation,
    trim_hardware_names,
    trim_kernel_modules,
    list_static_nodes,
    export_kernel,
    record_packages,
    restore_build_replacements,
    mark_image_updated,
    export_base,
]
# Then these two at once, on the finished tree: each writes only outside what the squashfs
# takes (mkinitramfs under /tmp). mksquashfs's threads and mkinitramfs's forks (14 s alone,
# mostly one process at a time) share the build's CPUs: mksquashfs took as long as alone
# and control-plane's cold build went 103.1 -> 95.1 s (median of 3; docs/benchmarks.md,
# "Peers").
CONCURRENT_STEPS: list[Callable[[Context], None]] = [make_installed_initramfs, make_squashfs]


def apply_plan(root: Path, plan: HookPlan, log: Log, outputs: HookOutputs) -> dict[str, float]:
    ctx = Context(root=root, plan=plan, log=log, outputs=outputs)
    timings: dict[str, float] = {}

    def apply(step: Callable[[Context], None]) -> None:
        started = time.monotonic()
        with log.step(step.__name__):
            step(ctx)
        timings[step.__name__] = round(time.monotonic() - started, 3)

    for step in STEPS:
        apply(step)
    # Both run to their end even if one fails (the pool waits); every failure is logged
    # (one cause, a full disk, can fail both), then the first of the list raises.
    with ThreadPoolExecutor(max_workers=len(CONCURRENT_STEPS)) as pool:
        running = {step.__name__: pool.submit(apply, step) for step in CONCURRENT_STEPS}
    first: BaseException | None = None
    for name, future in running.items():
        error = future.exception()
        if error is not None:
            log.write(f"{name} failed: {error}")
            first = first or error
    if first is not None:
        raise first
    return timings


def main(argv: list[str]) -> int:
    """The hook's entry point: ROOT is the chroot. The plan was uploaded into ROOT and the
    boot parts are left in ROOT's /tmp for mmdebstrap to sync out as the calling user: in
    unshare mode this process is the namespace's root, which cannot use the user's files."""
    root = Path(argv[0])
    plan = HookPlan.read(root / INSIDE_PLAN.lstrip("/"))
    outputs = HookOutputs(root / INSIDE_OUT.lstrip("/"))
    outputs.directory.mkdir(parents=True, exist_ok=True)
    with Log(stream=sys.stdout) as log:
        outputs.write_steps(apply_plan(root, plan, log, outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
