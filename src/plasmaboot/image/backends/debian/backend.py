"""The Debian backend: the initrd from its layers (docs/layers.md). mmdebstrap builds the
root filesystem from real Debian packages and the customize hook trims it into the package
layer's squashfs, cached and shared by every profile with the same packages (`hook`,
`package_layer`); the profile layer is written in Python (`profile_layer`); and we
assemble the initrd the NixOS netboot way: stage-1 segment + package layer + profile layer.
"""

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

from plasmaboot.artifacts.layout import (
    INITRD,
    INSTALLED_INITRD,
    KERNEL,
    PACKAGE_LAYER,
    sha256_file,
)
from plasmaboot.artifacts.manifest import LayerRecord
from plasmaboot.catalog import native_package_names, packages_path
from plasmaboot.errors import UserError
from plasmaboot.formats.cpio import (
    Compression,
    Entry,
    Segment,
    pad4,
    read_segments,
    write_cpio,
    write_segment,
)
from plasmaboot.image.backend import (
    BackendOptions,
    BackendType,
    BuildRequest,
    BuildResult,
    Suitability,
    option,
)
from plasmaboot.image.backends import register
from plasmaboot.image.backends.debian.archive import (
    DEFAULT_SECURITY_MIRROR,
    Suite,
    archive_state,
    backports_suite,
    describe_state,
    has_backports,
    image_suites,
    snapshot_time,
    state_epoch,
)
from plasmaboot.image.backends.debian.contract import (
    DEFAULT_SQUASHFS_COMPRESSION,
    INSIDE_OUT,
    INSIDE_PLAN,
    SQUASHFS_BLOCK_SIZES,
    HookOutputs,
    HookPlan,
    HookResult,
)
from plasmaboot.image.backends.debian.package_layer import (
    PackageLayer,
    PackageLayerCache,
    package_layer_key,
)
from plasmaboot.image.backends.debian.profile_layer import (
    PackageBase,
    ProfilePlan,
    layer_entries,
    make_profile_layer,
)
from plasmaboot.image.backends.debian.runtime_units import runtime_unit_entries
from plasmaboot.image.cache import code_fingerprint
from plasmaboot.profiles.model import Profile
from plasmaboot.run import require_tool, run

STAGE1_INIT = Path(__file__).parent / "stage1" / "init"
BUSYBOX = Path("/bin/busybox")
HOOKS = Path("/usr/share/mmdebstrap/hooks")
# Always in the image: what boots, networks and logs in, whatever the profile says (and
# the kernel the profile names: kernel.package from kernel.suite, `kernel_package`).
SYSTEM_PACKAGES = (
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
# longest quiet stretch is mksquashfs in our hook (xz: ~1-3 minutes on 2 cores).
MMDEBSTRAP_TIMEOUT = 3 * 3600.0
MMDEBSTRAP_IDLE_TIMEOUT = 15 * 60.0
HOOK_MODULE = "plasmaboot.image.backends.debian.hook"


DEFAULT_MIRROR = "http://deb.debian.org/debian"
BLOCK_SIZE_PATTERN = re.compile(r"([0-9]{1,8})([kKmM]?)")
RELEASE_PATTERN = re.compile(r"[a-z][a-z0-9-]*")
# The mirror is one word of an apt sources line and of mmdebstrap's command line.
MIRROR_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\s\u2028\u2029]")


@dataclass(frozen=True)
class DebianOptions(BackendOptions):
    """The Debian backend's options (`--release`, `--mirror`, `--security-mirror`,
    `--snapshot`, `--squashfs-level`, `--squashfs-compression`, `--squashfs-block-size`)."""

    release: str = option("bookworm", help="the release to install")
    mirror: str = option(DEFAULT_MIRROR, help="the mirror URL")
    security_mirror: str = option(
        DEFAULT_SECURITY_MIRROR,
        help="the security archive's URL (the release's -security suite), or none",
    )
    snapshot: str | None = option(
        None,
        help="install from snapshot.debian.org as it was at this moment (pins the archive)",
        metavar="YYYYMMDDTHHMMSSZ",
    )
    # Measured on control-plane's package layer (docs/benchmarks.md, #16 "Size"): zstd 9 in
    # 128 KiB blocks 89.0 MB in 2 s, 19 in 1 MiB blocks 80.0 MB in 28 s of mksquashfs, once
    # per package layer (config-only and no-change rebuilds do not pay it), and the faster
    # boot of the two. --squashfs-level 9 builds the layer fastest.
    squashfs_level: int = option(
        19,
        help="zstd level of the root squashfs (higher: smaller, slower)",
        minimum=1,
        maximum=22,
    )

    # Measured on control-plane (docs/benchmarks.md, #16 "Size: xz in 1 MiB blocks"): xz
    # with the x86 filter in 1 MiB blocks makes kernel + initrd 90.8 MB (mkosi's: 96.3; zstd
    # 19 in 1 MiB blocks 93.3 MB); xz costs ~1-2 minutes of mksquashfs and PXE -> SSH went
    # from 18.3 to 21.7 s under TCG on a calm machine.
    squashfs_compression: str = option(
        DEFAULT_SQUASHFS_COMPRESSION,
        help="compressor of the root squashfs: zstd (faster boot), or xz (smallest image;"
        " slower to build and to boot)",
        metavar="zstd|xz",
    )
    squashfs_block_size: str | None = option(
        None,
        help="block size of the root squashfs, 4K to 1M (default: 1M)",
        metavar="SIZE",
    )

    def check(self) -> None:
        super().check()
        if self.squashfs_compression not in SQUASHFS_BLOCK_SIZES:
            raise UserError(
                f"--squashfs-compression: expected zstd or xz, got {self.squashfs_compression!r}"
            )
        if self.squashfs_block_size is not None and block_size(self.squashfs_block_size) is None:
            raise UserError(
                "--squashfs-block-size: expected a power of two from 4K to 1M (like 128K or"
                f" 1M), got {self.squashfs_block_size!r}"
            )
        if not RELEASE_PATTERN.fullmatch(self.release):
            raise UserError(
                f"--release: expected a Debian release name like bookworm, got {self.release!r}"
            )
        check_mirror_url("--mirror", self.mirror, DEFAULT_MIRROR)
        if self.security_mirror != "none":
            check_mirror_url("--security-mirror", self.security_mirror, DEFAULT_SECURITY_MIRROR)
        if self.snapshot is not None:
            try:
                snapshot_time(self.snapshot)
            except ValueError:
                raise UserError(
                    f"--snapshot: expected a snapshot.debian.org time like 20261101T000000Z,"
                    f" got {self.snapshot!r}"
                ) from None
            if self.mirror != DEFAULT_MIRROR or self.security_mirror != DEFAULT_SECURITY_MIRROR:
                raise UserError(
                    "--snapshot: the snapshot is the mirror; it cannot be combined with"
                    " --mirror or --security-mirror",
                    hint="give either --snapshot or the mirrors",
                )

    def block_size(self) -> int:
        """The root squashfs's block size in bytes: the option's, or the compressor's own."""
        given = None if self.squashfs_block_size is None else block_size(self.squashfs_block_size)
        return given or SQUASHFS_BLOCK_SIZES[self.squashfs_compression]

    def suites(self, profile: Profile | None = None) -> list[Suite]:
        """The suites a build of `profile` installs from (-backports only when its kernel
        comes from there)."""
        security = None if self.security_mirror == "none" else self.security_mirror
        backports = profile is not None and profile.kernel.suite == "backports"
        return image_suites(self.release, self.mirror, security, self.snapshot, backports)


def block_size(text: str) -> int | None:
    """`128K`, `1M` or a number of bytes, as mksquashfs's -b takes them: the size in bytes
    if it is a power of two from 4 KiB to 1 MiB, else None."""
    match = BLOCK_SIZE_PATTERN.fullmatch(text)
    if match is None:
        return None
    size = int(match[1]) * {"": 1, "K": 1024, "M": 1024 * 1024}[match[2].upper()]
    return size if 4096 <= size <= 1024 * 1024 and size & (size - 1) == 0 else None


def check_mirror_url(flag: str, value: str, example: str) -> None:
    if MIRROR_FORBIDDEN.search(value):  # urlsplit drops newlines; apt's sources would not
        raise UserError(
            f"{flag}: expected a URL with no spaces or control characters, got {value!r}",
            hint=f"for example {example}",
        )
    url = urlsplit(value)
    if url.scheme not in {"http", "https", "file"} or (url.scheme != "file" and not url.hostname):
        raise UserError(
            f"{flag}: expected an http(s):// or file:// URL, got {value!r}",
            hint=f"for example {example}",
        )
    if url.username or url.password:
        raise UserError(
            f"{flag}: the URL carries credentials, which would be written into the image",
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


def debian_packages(profile: Profile, release: str) -> tuple[list[str], list[str]]:
    """The profile's packages under their Debian names (the kernel first, from its suite),
    and those Debian does not have."""
    names, skipped = native_package_names(
        "debian", [*SYSTEM_PACKAGES, *profile.packages, *profile.kernel.firmware]
    )
    return [kernel_package(profile, release), *names], skipped


def kernel_package(profile: Profile, release: str) -> str:
    """The kernel as apt is asked for it: `linux-image-amd64`, or
    `linux-image-amd64/bookworm-backports` (apt takes it and what it needs only from there
    from that suite, which installs nothing unless named)."""
    package = profile.kernel.package
    if profile.kernel.suite == "release":
        return package
    if not has_backports(release):
        raise UserError(
            f'profile {profile.label}: kernel.suite = "backports", but {release} has no'
            " -backports suite",
            hint='set kernel.suite = "release" in the profile, or build another --release',
        )
    return f"{package}/{backports_suite(release)}"


def source_fingerprint() -> str:
    """A hash of everything besides the profile that shapes the image bytes: the code that
    writes them, the package name map and the busybox stage-1 runs, so a change to any of
    them misses the cache instead of giving a stale hit."""
    return code_fingerprint(STAGE1_INIT, packages_path(), BUSYBOX)


# The build's date when the caller gives none: the archive's state dates it (see
# DebianBackend.source_date_epoch), which the cache keys hold already.
ARCHIVE_EPOCH = "archive"


def given_source_date_epoch() -> str:
    """The caller's SOURCE_DATE_EPOCH (digits), else ARCHIVE_EPOCH: part of the cache keys,
    since it dates every file of the image."""
    given = os.environ.get("SOURCE_DATE_EPOCH", "")
    return given if given.isdigit() else ARCHIVE_EPOCH


class DebianBackend:
    name = "debian"
    takes_ssh_keys = True

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
            # a cached image misses once the archive has moved on
            **self.archive_inputs(request.profile),
            "squashfs_level": str(self.options.squashfs_level),
            "squashfs_compression": self.options.squashfs_compression,
            "squashfs_block_size": str(self.options.block_size()),
            "source_date_epoch": given_source_date_epoch(),
            "code": source_fingerprint(),
        }

    def archive_inputs(self, profile: Profile) -> dict[str, str]:
        """The sources and the archive's state, as cache inputs (the set's and the package
        layer's): with -backports when the profile's kernel comes from there."""
        suites = self.options.suites(profile)
        return {
            "sources": "\n".join(s.sources_line(["main"]) for s in suites),
            "archive": describe_state(archive_state(suites, self.options.snapshot)),
        }

    def source_date_epoch(self, profile: Profile | None = None) -> str:
        """The build's date (SOURCE_DATE_EPOCH): the caller's, else the archive's state
        (its newest Release date, or the snapshot's moment), so the same inputs give the
        same bytes."""
        given = given_source_date_epoch()
        if given != ARCHIVE_EPOCH:
            return given
        suites = self.options.suites(profile)
        return str(state_epoch(archive_state(suites, self.options.snapshot)))

    def build(self, request: BuildRequest) -> BuildResult:
        work = WorkDir(request.staging / ".work")
        work.path.mkdir()
        try:
            return self.build_in(request, work)
        finally:
            shutil.rmtree(work.path, ignore_errors=True)

    def build_in(self, request: BuildRequest, work: WorkDir) -> BuildResult:
        log, profile = request.log, request.profile
        packages, skipped = debian_packages(profile, self.options.release)
        for name in skipped:
            log.info(f"package {name!r} is not available on Debian; skipped")
        plan = HookPlan.for_profile(
            profile,
            self.options.squashfs_level,
            self.options.squashfs_compression,
            self.options.block_size(),
        )
        inputs = self.package_inputs(profile, packages, plan)
        key = package_layer_key(inputs)
        if request.cache_dir is None:
            layer, reused = self.build_package_layer(request, packages, plan, work, key), False
        else:
            cache = PackageLayerCache.under(request.cache_dir)
            with cache.locked(key):
                found = cache.lookup(key) if request.use_cache else None
                reused = found is not None
                if found is None:
                    self.build_package_layer(request, packages, plan, work, key)
                    found = cache.store(work.out, key, inputs)
                layer = found
        log.info(f"layer 10-packages: {'reused' if reused else 'built'} (key {key[:16]})")
        hook = HookOutputs(layer.directory).read()
        with log.step("profile layer"):
            profile_dir = work.path / "profile"
            profile_dir.mkdir()
            profile_plan = ProfilePlan(profile=profile, authorized_keys=authorized_keys(request))
            base = PackageBase(units=hook.units, accounts=hook.accounts)
            make_profile_layer(profile_dir, profile_plan, base, log)
            write_segment(
                layer_entries(profile_dir), work.path / "profile.cpio.gz", Compression.GZIP
            )
        log.info("layer 50-profile: built")
        with log.step("stage1"):
            write_segment(stage1_entries(hook), work.path / "stage1.cpio.gz", Compression.GZIP)
        with log.step("initrd"):
            package_entry = Entry(PACKAGE_LAYER, stat.S_IFREG | 0o444, source=layer.squashfs)
            write_initrd(
                request.staging / INITRD,
                [work.path / "stage1.cpio.gz", [package_entry], work.path / "profile.cpio.gz"],
            )
            records = layer_records(request.staging / INITRD, layer, reused)
        link_or_copy(hook.kernel, request.staging / KERNEL)
        if hook.installed_initrd is not None:  # for `plasmaboot install`, never booted
            link_or_copy(hook.installed_initrd, request.staging / INSTALLED_INITRD)
        if not reused:
            for step, seconds in hook.steps.items():
                log.steps[f"customize.{step}"] = seconds
        return BuildResult(
            kernel_version=hook.kernel_version,
            distro=f"debian {self.options.release}",
            packages=hook.packages,
            package_sizes=hook.package_sizes,
            module_sizes=hook.module_sizes,
            layers=records,
        )

    def package_inputs(
        self, profile: Profile, packages: list[str], plan: HookPlan
    ) -> dict[str, object]:
        """Everything the package layer is made from (its cache key, with the code's
        fingerprint): the packages and the services' own .deb files, the release, mirror
        and components, and the hook's plan (module globs, documentation, the squashfs's
        compressor, level and block size). Nothing else of the profile: a port, a sysctl
        or a key leaves the key alone."""
        debs = [s.package_file for s in profile.services.values() if s.package_file]
        return {
            "packages": sorted(packages),
            "debs": [sha256_file(Path(deb)) for deb in debs],
            "release": self.options.release,
            "mirror": self.options.mirror,
            "components": components(profile),
            "plan": plan.model_dump(mode="json"),
            # the caller's date is in every mtime of the layer: another date, other bytes
            "source_date_epoch": given_source_date_epoch(),
            # the archive's state: a cached layer misses once the archive has moved on
            # (security updates, a new backports kernel), or for another snapshot
            **self.archive_inputs(profile),
        }

    def build_package_layer(
        self, request: BuildRequest, packages: list[str], plan: HookPlan, work: WorkDir, key: str
    ) -> PackageLayer:
        """mmdebstrap and the hook: the package layer's outputs in work.out."""
        log = request.log
        plan.write(work.plan)
        work.out.mkdir()
        epoch = self.source_date_epoch(request.profile)
        log.info(f"SOURCE_DATE_EPOCH={epoch}")
        with log.step("mmdebstrap"):
            run(
                self.mmdebstrap_command(request, packages, work),
                log=log,
                env={"SOURCE_DATE_EPOCH": epoch},
                on_line=lambda line: progress_from_line(request, line),
                timeout=MMDEBSTRAP_TIMEOUT,
                idle_timeout=MMDEBSTRAP_IDLE_TIMEOUT,
            )
        if request.cache_dir is not None:
            store_new_debs(work.new_debs, request.cache_dir, self.options.release)
        HookOutputs(work.out).read()  # every output is there and sound, before it is stored
        return PackageLayer.describe(work.out, key)

    def mmdebstrap_command(
        self, request: BuildRequest, packages: list[str], work: WorkDir
    ) -> list[str]:
        profile = request.profile
        mode = "root" if os.geteuid() == 0 else "unshare"
        debs = [s.package_file for s in profile.services.values() if s.package_file]
        command = [
            "mmdebstrap",
            f"--mode={mode}",
            "--variant=minbase",
            f"--components={components(profile)}",
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
        if self.options.snapshot is not None:
            # a snapshot's Release files are past their Valid-Until by design
            command.append('--aptopt=Acquire::Check-Valid-Until "false"')
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
            *[
                suite.sources_line(components(profile).split(","))
                for suite in self.options.suites(profile)
            ],
        ]
        return command


def components(profile: Profile) -> str:
    return "main,non-free-firmware" if profile.kernel.firmware else "main"


def write_initrd(path: Path, parts: list[Path | list[Entry]]) -> None:
    """The initrd: each part a segment file copied in, or entries written as an
    uncompressed segment straight into it (the package layer: one copy of its squashfs),
    each starting 4-byte aligned and the whole ending so, as formats.cpio.concatenate does."""
    with path.open("wb") as out:
        for part in parts:
            out.write(pad4(out.tell()))
            if isinstance(part, list):
                write_cpio(part, out)
            else:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 20)
        out.write(pad4(out.tell()))


def layer_records(initrd: Path, layer: PackageLayer, reused: bool) -> tuple[LayerRecord, ...]:
    """Where each layer is in the initrd, and its hash (the package layer's is its cache
    record's, checked when it was looked up; the others are small and hashed here)."""
    stage1, packages, profile = read_segments(initrd)
    member = next(m for m in packages.members if m.name == PACKAGE_LAYER)

    def segment(name: str, part: Segment, was_reused: bool = False) -> LayerRecord:
        with initrd.open("rb") as handle:
            handle.seek(part.offset)
            body = handle.read(part.end - part.offset)
        return LayerRecord(
            name=name,
            kind="segment",
            file=INITRD,
            offset=part.offset,
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            reused=was_reused,
        )

    return (
        segment("stage1", stage1),
        LayerRecord(
            name="10-packages",
            kind="squashfs",
            file=INITRD,
            member=PACKAGE_LAYER,
            offset=member.offset,
            size=member.size,
            sha256=layer.sha256,
            reused=reused,
        ),
        segment("50-profile", profile),
    )


def link_or_copy(source: Path, target: Path) -> None:
    """A file of a cached layer into the set: a hard link where the filesystem allows."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


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
        *runtime_unit_entries(),
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
