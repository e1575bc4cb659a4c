"""Apply a resolved profile to a Debian root filesystem and turn it into boot parts.

Runs inside mmdebstrap's customize hook (`python -m plasmaboot.image.backends.debian.hook ROOT`),
so it works the same in root mode and in unshare mode (where only the hook sees the files
as root). What it reads (the plan) and what it leaves (the outputs: kernel, root squashfs,
stage-1 modules, package list, step timings) are described in `contract`. Each step is a
small function; the order is `STEPS`.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmaboot.artifacts.layout import STATIC_NODES
from plasmaboot.image.backends.debian.contract import (
    INSIDE_OUT,
    INSIDE_PLAN,
    HookOutputs,
    HookPlan,
    Output,
)
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile, ResolvedService
from plasmaboot.run import run

# Modules stage-1 needs before it can mount the root image (the Debian kernel builds them
# as modules); their dependencies are added from modules.dep.
STAGE1_MODULES = ("loop", "squashfs", "overlay")
KEPT_LOCALE_PREFIXES = ("en", "locale.alias")
SSHD_DROP_IN = """\
# plasmaboot: root logs in with a key, never with a password.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
# host keys are made at each boot (plasmaboot-ssh-hostkeys.service)
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
"""
HOST_KEYGEN_UNIT = """\
# plasmaboot: one image boots many machines, so SSH host keys are made at each boot
# (on the tmpfs overlay) and never stored in the image.
[Unit]
Description=Generate per-boot SSH host keys
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=ssh.service shutdown.target
Conflicts=shutdown.target
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
# ed25519 and ECDSA only: an RSA key takes seconds to make on a slow CPU, at every boot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=multi-user.target
RequiredBy=ssh.service
"""
WAIT_ONLINE_DROP_IN = """\
# plasmaboot: a node is online when any NIC is configured, not all of them.
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60
"""


@dataclass
class Context:
    root: Path
    plan: HookPlan
    log: Log
    outputs: HookOutputs  # where the boot parts go (inside the chroot's /tmp)

    @property
    def profile(self) -> Profile:
        return self.plan.profile

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


# Debian's ssh.service waits for network.target, which waits for systemd-resolved: on a slow
# or emulated CPU that is many seconds in which the node is up but cannot be reached. sshd
# needs neither network nor DNS to listen, so our copy of the unit (same service, same
# options) starts as soon as the filesystems and the per-boot host keys are there.
SSH_UNIT = """\
[Unit]
Description=OpenBSD Secure Shell server (plasmaboot: started early)
Documentation=man:sshd(8) man:sshd_config(5)
DefaultDependencies=no
After=local-fs.target plasmaboot-ssh-hostkeys.service
Requires=plasmaboot-ssh-hostkeys.service
Before=shutdown.target
Conflicts=shutdown.target
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/usr/sbin/sshd -t
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartPreventExitStatus=255
Type=notify
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""


def configure_ssh(ctx: Context) -> None:
    ctx.write("etc/ssh/sshd_config.d/10-plasmaboot.conf", SSHD_DROP_IN)
    ssh_dir = ctx.root / "root/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    ctx.write("root/.ssh/authorized_keys", ctx.plan.authorized_keys, mode=0o600)
    for key in (ctx.root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    ctx.write("etc/systemd/system/plasmaboot-ssh-hostkeys.service", HOST_KEYGEN_UNIT)
    ctx.write("etc/systemd/system/ssh.service", SSH_UNIT)
    ctx.chroot("systemctl", "enable", "plasmaboot-ssh-hostkeys.service", "ssh.service")


def lock_root_password(ctx: Context) -> None:
    ctx.chroot("usermod", "--lock", "root")


def configure_network(ctx: Context) -> None:
    network = ctx.profile.network
    if not network.dhcp:
        return
    ctx.write("etc/systemd/network/80-plasmaboot-dhcp.network", render_dhcp_network(network.mtu))
    ctx.write(
        "etc/systemd/system/systemd-networkd-wait-online.service.d/plasmaboot.conf",
        WAIT_ONLINE_DROP_IN,
    )
    ctx.chroot("systemctl", "enable", "systemd-networkd.service", "systemd-resolved.service")


def render_dhcp_network(mtu: int | None) -> str:
    """systemd-networkd's .network file for DHCP on every Ethernet NIC, with the profile's
    network.mtu when it sets one (networkd ignores a DHCP server's MTU option by default, so
    this one holds)."""
    link = f"[Link]\nMTUBytes={mtu}\n\n" if mtu is not None else ""
    return (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        f"[Match]\nType=ether\nKind=!*\n\n{link}[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )


def configure_console(ctx: Context) -> None:
    ctx.chroot("systemctl", "enable", f"serial-getty@{ctx.profile.console.serial}.service")


def configure_identity(ctx: Context) -> None:
    """Nothing that must be unique per machine stays in the image."""
    ctx.write("etc/hostname", "plasmaboot\n")
    ctx.write("etc/machine-id", "")  # empty: systemd makes a fresh one at each boot
    for stale in ("var/lib/dbus/machine-id", "var/lib/systemd/random-seed"):
        (ctx.root / stale).unlink(missing_ok=True)


def configure_sysctl(ctx: Context) -> None:
    if not ctx.profile.sysctl:
        return
    lines = [f"{key} = {value}" for key, value in ctx.profile.sysctl.items()]
    ctx.write("etc/sysctl.d/90-plasmaboot.conf", "\n".join(["# plasmaboot", *lines]) + "\n")


def configure_kernel_modules(ctx: Context) -> None:
    if not ctx.profile.kernel.modules:
        return
    ctx.write(
        "etc/modules-load.d/plasmaboot.conf",
        "\n".join(["# plasmaboot", *ctx.profile.kernel.modules]) + "\n",
    )


def configure_services(ctx: Context) -> None:
    for service in ctx.profile.services.values():
        # the user is made by mark_image_updated's sysusers run, with every other one
        ctx.write(
            f"usr/lib/sysusers.d/plasmaboot-{service.name}.conf",
            f'u {service.user} - "PlasmaCloud {service.name}" /var/lib/{service.name}\n',
        )
        settings = {**service.ports, **service.settings}
        ctx.write(service.config, render_toml(settings))
        ctx.write(f"etc/systemd/system/{service.name}.service", render_unit(service))
    enabled = [f"{s.name}.service" for s in ctx.profile.services.values() if s.enable]
    if enabled:
        ctx.chroot("systemctl", "enable", *enabled)


def render_unit(service: ResolvedService) -> str:
    name = service.name
    binary = f"/usr/bin/{service.binary}"
    limits = []
    if service.memory_max:
        limits.append(f"MemoryMax={service.memory_max}")
    if service.cpu_quota:
        limits.append(f"CPUQuota={service.cpu_quota}")
    return "\n".join(
        [
            "# plasmaboot: disabled unless the profile enables it",
            "[Unit]",
            f"Description=PlasmaCloud {name}: {service.description}",
            "Wants=network-online.target",
            "After=network-online.target",
            # a service whose package was not given is skipped, and says why in its status
            f"ConditionPathExists={binary}",
            "",
            "[Service]",
            f"User={service.user}",
            f"Group={service.user}",
            f"ExecStart={binary} --config {service.config}",
            f"StateDirectory={name}",
            "Restart=on-failure",
            *limits,
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def render_toml(table: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """A small TOML writer for service settings: scalars, arrays, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    table_arrays: list[tuple[tuple[str, ...], list[dict[str, Any]]]] = []
    for key, value in table.items():
        if isinstance(value, dict):
            tables.append(((*path, key), value))
        elif is_table_array(value):
            table_arrays.append(((*path, key), value))
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for sub_path, sub in tables:
        lines.append(f"\n[{'.'.join(toml_key(p) for p in sub_path)}]")
        lines.append(render_toml(sub, sub_path).rstrip("\n"))
    for sub_path, items in table_arrays:
        for item in items:
            lines.append(f"\n[[{'.'.join(toml_key(p) for p in sub_path)}]]")
            lines.append(render_toml(item, sub_path).rstrip("\n"))
    return "\n".join(line for line in lines if line) + "\n"


def is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; keep non-ASCII as UTF-8.
    # JSON leaves DEL raw, which a TOML string may not hold.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return toml_string(str(value))


def trim_documentation(ctx: Context) -> None:
    """dpkg excludes most of it; this catches what maintainer scripts create."""
    if ctx.profile.system.documentation:
        return
    for relpath in ("usr/share/man", "usr/share/info", "usr/share/doc-base"):
        shutil.rmtree(ctx.root / relpath, ignore_errors=True)
    locale_dir = ctx.root / "usr/share/locale"
    if locale_dir.is_dir():
        for child in locale_dir.iterdir():
            if not child.name.startswith(KEPT_LOCALE_PREFIXES):
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def trim_kernel_modules(ctx: Context) -> None:
    """Keep the module trees a server needs (profile globs), then rebuild modules.dep."""
    version = ctx.kernel_version()
    tree = ctx.root / "usr/lib/modules" / version / "kernel"
    include, exclude = ctx.profile.kernel.include_modules, ctx.profile.kernel.exclude_modules
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


def export_kernel(ctx: Context) -> None:
    """The kernel leaves the image (bzImage artifact); stage-1 gets its few modules."""
    version = ctx.kernel_version()
    shutil.copy2(ctx.root / "boot" / f"vmlinuz-{version}", ctx.outputs.path(Output.KERNEL))
    ctx.outputs.write_kernel_version(version)
    module_root = ctx.root / "usr/lib/modules" / version
    order = stage1_module_order(module_root)
    target = ctx.outputs.stage1_dir()
    for relpath in order:
        shutil.copy2(module_root / relpath, target / Path(relpath).name)
    ctx.outputs.write_stage1_order([Path(relpath).name for relpath in order])
    for path in (ctx.root / "boot").iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


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


def mask_unneeded_units(ctx: Context) -> None:
    for unit in UNNEEDED_UNITS:
        ctx.mask(f"etc/systemd/system/{unit}")
    ctx.write("etc/systemd/system/systemd-resolved.service.d/10-plasmaboot.conf", RESOLVED_LATER)
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
    usr = (ctx.root / "usr").stat()
    # ConditionNeedsUpdate compares whole seconds first; squashfs keeps only seconds, so a
    # stamp one second newer than /usr reads as "up to date" on every boot.
    stamp_time = usr.st_mtime_ns + 1_000_000_000
    for relpath in UPDATE_STAMPS:
        stamp = ctx.write(
            relpath,
            "# plasmaboot: the image was built whole; nothing to update at boot.\n"
            f"TIMESTAMP_NSEC={usr.st_mtime_ns}\n",
        )
        os.utime(stamp, ns=(stamp_time, stamp_time))


def restore_build_replacements(ctx: Context) -> None:
    """mmdebstrap swaps start-stop-daemon for a do-nothing stand-in while packages install;
    the real one goes back before the squashfs is made. DNS comes from DHCP through
    systemd-resolved, never from the build host's resolv.conf."""
    real = ctx.root / "usr/sbin/start-stop-daemon.REAL"
    if real.exists():
        os.replace(real, ctx.root / "usr/sbin/start-stop-daemon")
    resolv = ctx.root / "etc/resolv.conf"
    if (ctx.root / "usr/lib/systemd/system/systemd-resolved.service").exists():
        resolv.unlink(missing_ok=True)
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")


def record_packages(ctx: Context) -> None:
    proc = run(
        ["chroot", str(ctx.root), "dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
        log=None,
    )
    packages = dict(line.split("\t", 1) for line in proc.stdout.decode().splitlines() if line)
    ctx.outputs.write_packages(packages)


# Mount points stay in the image, their contents do not.
SQUASHFS_EXCLUDES = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*", *BUILD_LEFTOVERS)


# Every file read at boot decompresses the whole block holding it. With 1 MiB blocks the
# control-plane initrd was 113.6 MB, with 128 KiB 122.3 MB, and (measured together with
# the update stamps) boots reached DHCP ~3 s sooner under TCG: systemd, udevd and networkd
# start from many small reads.
SQUASHFS_BLOCK_SIZE = "128K"


def make_squashfs(ctx: Context) -> None:
    level = str(ctx.plan.squashfs_level)
    output = ctx.outputs.path(Output.ROOT_SQUASHFS)
    options = ["-noappend", "-no-progress", "-quiet", "-b", SQUASHFS_BLOCK_SIZE]
    compression = ["-comp", "zstd", "-Xcompression-level", level]
    excludes = ["-wildcards", "-e", *SQUASHFS_EXCLUDES]
    run(["mksquashfs", str(ctx.root), str(output), *options, *compression, *excludes], log=ctx.log)


STEPS: list[Callable[[Context], None]] = [
    clean_package_caches,
    configure_ssh,
    lock_root_password,
    configure_network,
    configure_console,
    configure_identity,
    configure_sysctl,
    configure_kernel_modules,
    configure_services,
    mask_unneeded_units,
    trim_documentation,
    trim_kernel_modules,
    list_static_nodes,
    export_kernel,
    record_packages,
    restore_build_replacements,
    mark_image_updated,
    make_squashfs,
]


def apply_plan(root: Path, plan: HookPlan, log: Log, outputs: HookOutputs) -> dict[str, float]:
    ctx = Context(root=root, plan=plan, log=log, outputs=outputs)
    timings: dict[str, float] = {}
    for step in STEPS:
        started = time.monotonic()
        with log.step(step.__name__):
            step(ctx)
        timings[step.__name__] = round(time.monotonic() - started, 3)
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
