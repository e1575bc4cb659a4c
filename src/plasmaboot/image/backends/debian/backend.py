"""The Debian backend: mmdebstrap builds the root filesystem from real Debian packages,
the customize hook applies the profile and makes the squashfs, and we assemble the initrd
(stage-1 segment + root segment) the NixOS netboot way."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from plasmaboot import __version__
from plasmaboot.artifacts.layout import ROOT_SQUASHFS
from plasmaboot.catalog import native_package_names, packages_path
from plasmaboot.errors import UserError
from plasmaboot.formats.cpio import Compression, Entry, concatenate, write_segment
from plasmaboot.image.backend import BuildRequest, BuildResult
from plasmaboot.image.backends.debian import hook as customize
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
# Measured on control-plane's tree with 128 KiB blocks: zstd 9 makes 121.1 MB in 5 s,
# 12 makes 121.0 MB in 16 s, 15 makes 113.2 MB in 41 s. 9 keeps builds fast; a smaller
# image is one --squashfs-level away.
DEFAULT_SQUASHFS_LEVEL = 9
# A cold build takes minutes; a stalled mirror must not hold a build (or CI) for ever.
# mmdebstrap prints a line at least every few seconds while it downloads and installs; the
# longest quiet stretch is mksquashfs in our hook (~40 s at level 15 on 2 cores).
MMDEBSTRAP_TIMEOUT = 3 * 3600.0
MMDEBSTRAP_IDLE_TIMEOUT = 15 * 60.0


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

    def __init__(self, squashfs_level: int = DEFAULT_SQUASHFS_LEVEL) -> None:
        self.squashfs_level = squashfs_level

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

    def cache_inputs(self, request: BuildRequest) -> dict[str, str]:
        return {
            "backend": self.name,
            "release": request.release,
            "mirror": request.mirror,
            "squashfs_level": str(self.squashfs_level),
            "code": source_fingerprint(),
        }

    def build(self, request: BuildRequest) -> BuildResult:
        work = request.staging / ".work"
        work.mkdir()
        try:
            return self._build(request, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _build(self, request: BuildRequest, work: Path) -> BuildResult:
        log, profile = request.log, request.profile
        packages, skipped = debian_packages(profile)
        for name in skipped:
            log.info(f"package {name!r} is not available on Debian; skipped")
        plan = customize.Plan(
            profile=profile,
            authorized_keys=request_authorized_keys(request),
            squashfs_level=self.squashfs_level,
        )
        plan.dump(work / "plan.json")
        out = work / "out"  # the hook's boot parts arrive here (mmdebstrap sync-out)
        out.mkdir()
        with log.step("mmdebstrap"):
            run(
                self.mmdebstrap_command(request, packages, work),
                log=log,
                on_line=lambda line: progress_from_line(request, line),
                timeout=MMDEBSTRAP_TIMEOUT,
                idle_timeout=MMDEBSTRAP_IDLE_TIMEOUT,
            )
        if request.cache_dir is not None:
            store_new_debs(work, request.cache_dir, request.release)
        kernel_version = (out / "kernel_version").read_text().strip()
        with log.step("stage1"):
            write_segment(stage1_entries(out), work / "stage1.cpio.gz", Compression.GZIP)
        with log.step("initrd"):
            root_entry = Entry(ROOT_SQUASHFS, stat.S_IFREG | 0o444, source=out / ROOT_SQUASHFS)
            write_segment([root_entry], work / "root.cpio", Compression.NONE)
            concatenate([work / "stage1.cpio.gz", work / "root.cpio"], request.staging / "initrd")
        shutil.move(out / "bzImage", request.staging / "bzImage")
        for step, seconds in json.loads((out / "steps.json").read_text()).items():
            log.steps[f"customize.{step}"] = seconds
        return BuildResult(
            kernel_version=kernel_version,
            distro=f"debian {request.release}",
            packages=json.loads((out / "packages.json").read_text()),
        )

    def mmdebstrap_command(
        self, request: BuildRequest, packages: list[str], work: Path
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
            debs_dir = request.cache_dir / "debs" / request.release
            debs_dir.mkdir(parents=True, exist_ok=True)
            new_debs = work / "new-debs"
            new_debs.mkdir()
            command += [
                '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
                f"--setup-hook=sync-in {debs_dir} /var/cache/apt/archives/",
                f"--customize-hook=sync-out /var/cache/apt/archives {new_debs}",
            ]
        command += [
            # the profile is applied inside mmdebstrap, so unshare mode works as well as root
            f"--customize-hook=upload {work / 'plan.json'} {customize.INSIDE_PLAN}",
            f'--customize-hook={sys.executable} -m plasmaboot.image.backends.debian.hook "$1"',
            f"--customize-hook=sync-out {customize.INSIDE_OUT} {work / 'out'}",
            request.release,
            "/dev/null",
            request.mirror,
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


def request_authorized_keys(request: BuildRequest) -> str:
    lines: list[str] = []
    for path in [*map(Path, request.profile.ssh.authorized_keys), *request.ssh_keys]:
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and line not in lines:
                lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def stage1_entries(out: Path) -> list[Entry]:
    modules = sorted((out / "stage1-modules").iterdir())
    return [
        Entry("init", stat.S_IFREG | 0o755, source=STAGE1_INIT),
        Entry("bin/busybox", stat.S_IFREG | 0o755, source=BUSYBOX),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("dev/kmsg", stat.S_IFCHR | 0o600, rdev=(1, 11)),  # until devtmpfs is mounted
        Entry("etc/stage1-modules", stat.S_IFREG | 0o644, source=out / "stage1-modules.txt"),
        *[Entry(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, source=m) for m in modules],
        *[Entry(d, stat.S_IFDIR | 0o755) for d in ("proc", "sys", "run", "sysroot", "tmp")],
    ]


def store_new_debs(work: Path, cache_dir: Path, release: str) -> None:
    """Add the .deb files this build downloaded to the shared cache (reused by later builds)."""
    target = cache_dir / "debs" / release
    for deb in (work / "new-debs").glob("*.deb"):
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
