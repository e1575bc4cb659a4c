"""The Debian backend: mmdebstrap builds the root filesystem from real Debian packages,
the customize hook applies the profile and makes the squashfs, and we assemble the initrd
(stage-1 segment + root segment) the NixOS netboot way."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from plasmaboot import __version__
from plasmaboot.artifacts.layout import INITRD, KERNEL, ROOT_SQUASHFS
from plasmaboot.catalog import native_package_names, packages_path
from plasmaboot.errors import UserError
from plasmaboot.formats.cpio import Compression, Entry, concatenate, write_segment
from plasmaboot.image.backend import (
    BackendOptions,
    BackendType,
    BuildRequest,
    BuildResult,
    Suitability,
    option,
)
from plasmaboot.image.backends import register
from plasmaboot.image.backends.debian.contract import (
    INSIDE_OUT,
    INSIDE_PLAN,
    HookOutputs,
    HookPlan,
    HookResult,
)
from plasmaboot.profiles.model import Profile
from plasmaboot.run import require_tool, run

STAGE1_INIT = Path(__file__).parent / "stage1" / "init"
BUSYBOX = Path("/bin/busybox")
HOOKS = Path("/usr/share/mmdebstrap/hooks")
# Always in the image: what boots, networks and logs in, whatever the profile says.
SYSTEM_PACKAGES = (
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "ca-certificates",
)
DPKG_EXCLUDES = (
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/doc/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)
# Licences stay (they are small and Debian asks for them); en* translations stay.
DPKG_INCLUDES = (
    "/usr/share/doc/*/copyright",
    "/usr/share/locale/en*",
    "/usr/share/locale/locale.alias",
)
# A cold build takes minutes; a stalled mirror must not hold a build (or CI) for ever.
# mmdebstrap prints a line at least every few seconds while it downloads and installs; the
# longest quiet stretch is mksquashfs in our hook (~40 s at level 15 on 2 cores).
MMDEBSTRAP_TIMEOUT = 3 * 3600.0
MMDEBSTRAP_IDLE_TIMEOUT = 15 * 60.0
HOOK_MODULE = "plasmaboot.image.backends.debian.hook"


DEFAULT_MIRROR = "http://deb.debian.org/debian"
RELEASE_PATTERN = re.compile(r"[a-z][a-z0-9-]*")
# The mirror is one word of an apt sources line and of mmdebstrap's command line.
MIRROR_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\s\u2028\u2029]")


@dataclass(frozen=True)
class DebianOptions(BackendOptions):
    """The Debian backend's options (`--release`, `--mirror`, `--squashfs-level`)."""

    release: str = option("bookworm", help="the release to install")
    mirror: str = option(DEFAULT_MIRROR, help="the mirror URL")
    # Measured on control-plane's tree with 128 KiB blocks: zstd 9 makes 121.1 MB in 5 s,
    # 12 makes 121.0 MB in 16 s, 15 makes 113.2 MB in 41 s. 9 keeps builds fast; a
    # smaller image is one --squashfs-level away.
    squashfs_level: int = option(
        9,
        help="zstd level of the root squashfs (higher: smaller, slower)",
        minimum=1,
        maximum=22,
    )

    def check(self) -> None:
        super().check()
        if not RELEASE_PATTERN.fullmatch(self.release):
            raise UserError(
                f"--release: expected a Debian release name like bookworm, got {self.release!r}"
            )
        if MIRROR_FORBIDDEN.search(self.mirror):
            # urlsplit drops newlines and tabs; apt's sources line would not
            raise UserError(
                f"--mirror: expected a URL with no spaces or control characters, "
                f"got {self.mirror!r}",
                hint=f"for example {DEFAULT_MIRROR}",
            )
        url = urlsplit(self.mirror)
        if url.scheme not in {"http", "https", "file"} or (
            url.scheme != "file" and not url.hostname
        ):
            raise UserError(
                f"--mirror: expected an http(s):// or file:// URL, got {self.mirror!r}",
                hint=f"for example {DEFAULT_MIRROR}",
            )
        if url.username or url.password:
            raise UserError(
                "--mirror: the URL carries credentials, which would be written into the image",
                hint="put them in the host's /etc/apt/auth.conf.d/ instead and pass a plain URL",
            )


@dataclass(frozen=True)
class WorkDir:
    """The backend's scratch directory for one build (inside the staging directory)."""

    path: Path

    @property
    def plan(self) -> Path:  # uploaded to the hook as contract.INSIDE_PLAN
        return self.path / Path(INSIDE_PLAN).name

    @property
    def out(self) -> Path:  # the hook's outputs arrive here (mmdebstrap sync-out)
        return self.path / "out"

    @property
    def new_debs(self) -> Path:  # the .debs this build downloaded, for the shared cache
        return self.path / "new-debs"


def debian_packages(profile: Profile) -> tuple[list[str], list[str]]:
    """The profile's packages under their Debian names, and those Debian does not have."""
    names, skipped = native_package_names(
        "debian", [*SYSTEM_PACKAGES, *profile.packages, *profile.kernel.firmware]
    )
    return names, skipped


def source_fingerprint() -> str:
    """A hash of everything besides the profile that shapes the image bytes: the code that
    writes them, the package name map and the busybox stage-1 runs, so a change to any of
    them misses the cache instead of giving a stale hit."""
    package = Path(__file__).resolve().parents[3]  # src/plasmaboot
    inputs = [
        *sorted((package / "image").rglob("*.py")),
        *sorted((package / "formats").rglob("*.py")),
        STAGE1_INIT,
        *sorted((package / "artifacts").rglob("*.py")),
        packages_path(),
        BUSYBOX,
    ]
    digest = hashlib.sha256(__version__.encode())
    for path in inputs:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"(missing)")
    return digest.hexdigest()[:16]


class DebianBackend:
    name = "debian"

    def __init__(self, options: DebianOptions | None = None) -> None:
        self.options = options or DebianOptions()

    def check_options(self) -> None:
        self.options.check()

    def check_available(self) -> None:
        for tool in ("mmdebstrap", "mksquashfs", "chroot"):
            require_tool(tool)
        if not BUSYBOX.is_file():
            raise UserError(
                f"{BUSYBOX} is missing (stage-1 needs a static busybox)",
                hint="install it: apt-get install busybox-static (or run `make setup`)",
            )
        if os.geteuid() != 0 and shutil.which("newuidmap") is None:
            raise UserError(
                "building as a non-root user needs mmdebstrap's unshare mode and newuidmap",
                hint="install it: apt-get install uidmap, or build as root",
            )

    def suitability(self) -> Suitability:
        """Builds wherever its tools are installed: no network probe is needed."""
        try:
            self.check_available()
        except UserError as exc:
            return Suitability(usable=False, reason=f"debian: {exc.message}")
        return Suitability(usable=True)

    def cache_inputs(self, request: BuildRequest) -> dict[str, str]:
        return {
            "backend": self.name,
            "release": self.options.release,
            "mirror": self.options.mirror,
            "squashfs_level": str(self.options.squashfs_level),
            "code": source_fingerprint(),
        }

    def build(self, request: BuildRequest) -> BuildResult:
        work = WorkDir(request.staging / ".work")
        work.path.mkdir()
        try:
            return self.build_in(request, work)
        finally:
            shutil.rmtree(work.path, ignore_errors=True)

    def build_in(self, request: BuildRequest, work: WorkDir) -> BuildResult:
        log, profile = request.log, request.profile
        packages, skipped = debian_packages(profile)
        for name in skipped:
            log.info(f"package {name!r} is not available on Debian; skipped")
        plan = HookPlan(
            profile=profile,
            authorized_keys=authorized_keys(request),
            squashfs_level=self.options.squashfs_level,
        )
        plan.write(work.plan)
        work.out.mkdir()
        with log.step("mmdebstrap"):
            run(
                self.mmdebstrap_command(request, packages, work),
                log=log,
                on_line=lambda line: progress_from_line(request, line),
                timeout=MMDEBSTRAP_TIMEOUT,
                idle_timeout=MMDEBSTRAP_IDLE_TIMEOUT,
            )
        if request.cache_dir is not None:
            store_new_debs(work.new_debs, request.cache_dir, self.options.release)
        hook = HookOutputs(work.out).read()
        with log.step("stage1"):
            write_segment(stage1_entries(hook), work.path / "stage1.cpio.gz", Compression.GZIP)
        with log.step("initrd"):
            root_entry = Entry(ROOT_SQUASHFS, stat.S_IFREG | 0o444, source=hook.root_squashfs)
            write_segment([root_entry], work.path / "root.cpio", Compression.NONE)
            segments = [work.path / "stage1.cpio.gz", work.path / "root.cpio"]
            concatenate(segments, request.staging / INITRD)
        shutil.move(hook.kernel, request.staging / KERNEL)
        for step, seconds in hook.steps.items():
            log.steps[f"customize.{step}"] = seconds
        return BuildResult(
            kernel_version=hook.kernel_version,
            distro=f"debian {self.options.release}",
            packages=hook.packages,
        )

    def mmdebstrap_command(
        self, request: BuildRequest, packages: list[str], work: WorkDir
    ) -> list[str]:
        profile = request.profile
        mode = "root" if os.geteuid() == 0 else "unshare"
        debs = [s.package_file for s in profile.services.values() if s.package_file]
        components = "main,non-free-firmware" if profile.kernel.firmware else "main"
        command = [
            "mmdebstrap",
            f"--mode={mode}",
            "--variant=minbase",
            f"--components={components}",
            '--aptopt=APT::Install-Recommends "false"',
            '--aptopt=APT::Install-Suggests "false"',
            "--dpkgopt=force-unsafe-io",
            f"--include={','.join(packages)}",
            f"--hook-dir={HOOKS / 'merged-usr'}",
            f"--hook-dir={HOOKS / 'eatmydata'}",
            # The kernel's postinst would build an initramfs we never use: skip it.
            '--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename'
            " --add /usr/sbin/update-initramfs"
            " && printf '#!/bin/sh\\nexit 0\\n' > \"$1/usr/sbin/update-initramfs\""
            ' && chmod 755 "$1/usr/sbin/update-initramfs"',
            "--skip=download/empty",
        ]
        if not profile.system.documentation:
            command += [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES]
            command += [f"--dpkgopt=path-include={p}" for p in DPKG_INCLUDES]
        command += service_deb_hooks(debs)
        if request.cache_dir is not None:
            debs_dir = request.cache_dir / "debs" / self.options.release
            debs_dir.mkdir(parents=True, exist_ok=True)
            work.new_debs.mkdir()
            command += [
                '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
                f"--setup-hook=sync-in {debs_dir} /var/cache/apt/archives/",
                f"--customize-hook=sync-out /var/cache/apt/archives {work.new_debs}",
            ]
        command += [
            # the profile is applied inside mmdebstrap, so unshare mode works as well as root
            f"--customize-hook=upload {work.plan} {INSIDE_PLAN}",
            f'--customize-hook={sys.executable} -m {HOOK_MODULE} "$1"',
            f"--customize-hook=sync-out {INSIDE_OUT} {work.out}",
            self.options.release,
            "/dev/null",
            self.options.mirror,
        ]
        return command


def service_deb_hooks(debs: list[str]) -> list[str]:
    """Install the services' own .deb files inside the chroot (with their dependencies from
    the mirror). mmdebstrap's --include takes local .debs, but apt hands dpkg a host path
    that dpkg cannot see once chrooted, so we upload them first."""
    if not debs:
        return []
    inside = [f"/tmp/plasmaboot-{index}-{Path(deb).name}" for index, deb in enumerate(debs)]
    hooks = [
        f"--customize-hook=upload {deb} {target}" for deb, target in zip(debs, inside, strict=True)
    ]
    hooks.append(
        '--customize-hook=chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install'
        " --yes --no-install-recommends " + " ".join(inside)
    )
    hooks.append("--customize-hook=rm -f " + " ".join(f'"$1"{target}' for target in inside))
    return hooks


def authorized_keys(request: BuildRequest) -> str:
    """root's authorized_keys: the profile's key files and --ssh-key, each line once."""
    lines: list[str] = []
    for path in [*map(Path, request.profile.ssh.authorized_keys), *request.ssh_keys]:
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and line not in lines:
                lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def stage1_entries(hook: HookResult) -> list[Entry]:
    modules = sorted(hook.stage1_modules)
    return [
        Entry("init", stat.S_IFREG | 0o755, source=STAGE1_INIT),
        Entry("bin/busybox", stat.S_IFREG | 0o755, source=BUSYBOX),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("dev/kmsg", stat.S_IFCHR | 0o600, rdev=(1, 11)),  # until devtmpfs is mounted
        Entry("etc/stage1-modules", stat.S_IFREG | 0o644, source=hook.stage1_order),
        *[Entry(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, source=m) for m in modules],
        *[Entry(d, stat.S_IFDIR | 0o755) for d in ("proc", "sys", "run", "sysroot", "tmp")],
    ]


def store_new_debs(new_debs: Path, cache_dir: Path, release: str) -> None:
    """Add the .deb files this build downloaded to the shared cache (reused by later builds)."""
    target = cache_dir / "debs" / release
    for deb in new_debs.glob("*.deb"):
        if (target / deb.name).exists():
            continue
        # Builds run with --jobs are threads of this one process, and two of them may store
        # the same .deb at once: each copies to a name of its own, then renames (atomic).
        handle, temp = tempfile.mkstemp(dir=target, prefix=f".{deb.name}.")
        os.close(handle)
        try:
            shutil.copy2(deb, temp)
            os.replace(temp, target / deb.name)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def progress_from_line(request: BuildRequest, line: str) -> None:
    """Turn mmdebstrap's "I: ..." lines and our hook's steps into progress updates."""
    log = request.log
    if log.progress is None:
        return
    if line.startswith("I: "):
        log.progress(log.subject, f"mmdebstrap: {line[3:].rstrip('.')}", None)
    elif "==> " in line:
        log.progress(log.subject, f"customize: {line.split('==> ', 1)[1]}", None)


# auto tries nix first: debian is the backend that builds anywhere
register(
    BackendType(name=DebianBackend.name, options=DebianOptions, make=DebianBackend, auto_rank=2)
)
