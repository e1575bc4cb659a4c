"""The build pipeline: profiles × backend → artifact sets, with the content-addressed cache,
parallel jobs, output checks, manifest and atomic publishing.

Everything that can be wrong with the input is checked before any work starts, so bad input
never leaves anything behind. A set becomes visible only when it is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from plasmaboot import __version__
from plasmaboot.artifacts.layout import (
    BOOT_FILES,
    BUILD_LOG,
    HASHED_FILES,
    INITRD,
    IPXE,
    KERNEL,
    MANIFEST,
    SET_FILES,
    clean_stale,
    commit_set,
    ensure_writable_dir,
    sha256_file,
    staging_dir,
)
from plasmaboot.artifacts.manifest import Manifest, file_records, read_manifest, write_manifest
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.errors import PlasmabootError, UserError, WorkError
from plasmaboot.formats import FormatError
from plasmaboot.formats.bzimage import check_kernel_size, read_kernel_header
from plasmaboot.formats.cpio import Compression
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.formats.sshkeys import read_public_keys
from plasmaboot.image.backend import Backend, BuildRequest, BuildResult
from plasmaboot.image.backends.debian.backend import DEFAULT_SQUASHFS_LEVEL, DebianBackend
from plasmaboot.image.backends.nix import NixBackend, checked_flake, flake_inputs_problem, nix_works
from plasmaboot.log import Log, ProgressCallback
from plasmaboot.paths import cache_dir
from plasmaboot.profiles.located_errors import display_path
from plasmaboot.profiles.model import Profile

INITRD_SIZE_RANGE = (4 << 20, 2 << 30)
DEB_MAGIC = b"!<arch>\ndebian-binary"
BACKENDS = ("auto", "debian", "nix")


@dataclass(frozen=True)
class BuildOptions:
    output_dir: Path = Path("artifacts")
    pxe_dir: Path | None = None
    backend: str = "auto"
    jobs: int = 1
    use_cache: bool = True
    ssh_keys: tuple[Path, ...] = ()
    release: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    squashfs_level: int = DEFAULT_SQUASHFS_LEVEL
    flake: Path | None = None  # nix: the flake to build from (default: this checkout)
    plasmacloud: str | None = None  # nix: flake reference for the `plasmacloud` input


@dataclass
class BuildOutcome:
    profile: Profile
    backend: str
    kernel_version: str
    kernel_size: int
    initrd_size: int
    seconds: float
    cache_hit: bool
    path: Path
    warnings: list[str] = field(default_factory=list)
    published: Path | None = None

    @property
    def total_size(self) -> int:
        return self.kernel_size + self.initrd_size


# --------------------------------------------------------------------------------------
# Checking input before any work


def check_public_key(path: Path, where: str) -> None:
    """A public key file by the one rule (formats.sshkeys): readable, every line a valid
    OpenSSH public key, and no private key in it."""
    try:
        read_public_keys(path)
    except OSError as exc:
        raise UserError(
            f"{where} {display_path(path)}: cannot read ({exc.strerror})",
            hint="pass an existing public key file such as ~/.ssh/id_ed25519.pub",
        ) from exc
    except FormatError as exc:
        private = "private key" in str(exc)
        problem = (
            f"{exc}; refusing to put it in an image"
            if private
            else (f"expected OpenSSH public keys (ssh-ed25519 AAAA...), but {exc}")
        )
        raise UserError(
            f"{where} {display_path(path)}: {problem}",
            hint=f"pass the public half instead ({display_path(path)}.pub)"
            if private
            else "generate one with ssh-keygen -t ed25519 and pass the .pub file",
        ) from exc


def check_service_packages(profile: Profile) -> None:
    for service in profile.services.values():
        if service.package_file is None:
            continue
        path = Path(service.package_file)
        where = f"{profile.sources[-1]}: services.{service.name}.package"
        if not path.is_file():
            raise UserError(f"{where}: {display_path(path)} does not exist")
        with path.open("rb") as handle:
            if handle.read(len(DEB_MAGIC)) != DEB_MAGIC:
                raise UserError(
                    f"{where}: {display_path(path)} is not a .deb package",
                    hint="build one with dpkg-deb --build, or drop the key",
                )


def check_inputs(profiles: list[Profile], options: BuildOptions, backend: Backend) -> None:
    backend.check_available()
    if isinstance(backend, NixBackend):
        checked_flake(options.flake)
    for path in options.ssh_keys:
        check_public_key(path, "--ssh-key")
    for profile in profiles:
        for key in profile.ssh.authorized_keys:
            check_public_key(Path(key), f"{profile.sources[-1]}: ssh.authorized_keys:")
        check_service_packages(profile)
    if not isinstance(backend, DebianBackend):
        check_debian_only_options(options)
    check_release_and_mirror(options)
    directories = [(options.output_dir, "--output-dir")]
    if options.pxe_dir is not None:
        directories.append((options.pxe_dir, "--pxe-dir"))
    # check every directory before creating any, so bad input creates nothing
    for directory, option in directories:
        check_creatable_dir(directory, option)
    for directory, option in directories:
        ensure_writable_dir(directory, option)


RELEASE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")


def check_release_and_mirror(options: BuildOptions) -> None:
    if not RELEASE_PATTERN.match(options.release):
        raise UserError(
            f"--release: expected a Debian release name like bookworm, got {options.release!r}"
        )
    url = urlsplit(options.mirror)
    if url.scheme not in {"http", "https", "file"} or (url.scheme != "file" and not url.hostname):
        raise UserError(
            f"--mirror: expected an http(s):// or file:// URL, got {options.mirror!r}",
            hint="for example http://deb.debian.org/debian",
        )
    if url.username or url.password:
        raise UserError(
            "--mirror: the URL carries credentials, which would be written into the image",
            hint="put them in the host's /etc/apt/auth.conf.d/ instead and pass a plain URL",
        )


def check_debian_only_options(options: BuildOptions) -> None:
    if options.squashfs_level != DEFAULT_SQUASHFS_LEVEL:
        raise UserError("--squashfs-level: only the debian backend uses it")


def check_creatable_dir(directory: Path, option: str) -> None:
    """`directory` exists and is writable, or could be created: without creating it."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"{option} {directory}: cannot write there ({display_path(probe)} is not a "
            "writable directory)",
            hint="choose a directory you can write, or fix its permissions",
        )


def select_backend(options: BuildOptions) -> tuple[Backend, str]:
    """The backend to use and why (the summary says it)."""
    if options.backend not in BACKENDS:
        raise UserError(
            f"--backend: expected one of {', '.join(BACKENDS)}, got {options.backend!r}"
        )
    if options.backend == "debian":
        given = nix_options_given(options)
        if given:
            raise UserError(
                f"{given[0]} applies only to the nix backend, and --backend debian was given",
                hint=f"drop {given[0]}, or build with --backend nix",
            )
        return DebianBackend(options.squashfs_level), "asked for"
    nix = NixBackend(plasmacloud=options.plasmacloud)
    if options.backend == "nix":
        return nix, "asked for"
    # auto may fall back to debian, which ignores the nix options: say so when some were given
    unused = "".join(f", {name} not used" for name in nix_options_given(options))
    if not nix_works():
        return DebianBackend(options.squashfs_level), f"auto: no working nix with flakes{unused}"
    problem = flake_inputs_problem(options.flake, nix.input_options())
    if problem is not None:
        reason = f"auto: nix cannot fetch the flake's inputs ({problem}){unused}"
        return DebianBackend(options.squashfs_level), reason
    return nix, "auto: nix with flakes and reachable inputs"


def nix_options_given(options: BuildOptions) -> list[str]:
    given = (("--flake", options.flake), ("--plasmacloud", options.plasmacloud))
    return [name for name, value in given if value is not None]


# --------------------------------------------------------------------------------------
# Cache


def cache_key(profile: Profile, backend: Backend, request: BuildRequest) -> str:
    digest = hashlib.sha256()
    body = {
        "profile": profile.content_hash(),
        "inputs": backend.cache_inputs(request),
        "ssh_keys": [Path(k).read_text() for k in request.ssh_keys],
    }
    digest.update(json.dumps(body, sort_keys=True).encode())
    return digest.hexdigest()


def cached_set(key: str) -> Path | None:
    """The cached artifact set for `key`, if it is complete and every byte checks out
    (a damaged entry is a miss, and is rebuilt)."""
    directory = cache_dir() / "sets" / key
    if not (directory / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(directory)
    except ValueError:
        return None
    for name, record in manifest.files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != record.size:
            return None
        if sha256_file(path) != record.sha256:
            return None
    return directory


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def store_in_cache(staged: Path, key: str) -> None:
    """Put a finished set in the cache under `key`, replacing an older entry (a --no-cache
    rebuild refreshes it). Safe against a concurrent writer of the same key."""
    sets = cache_dir() / "sets"
    sets.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=sets))
    for name in SET_FILES:
        link_or_copy(staged / name, temp / name)
    final = sets / key
    retired = sets / f".old-{key}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        if final.exists():
            os.rename(final, retired)
        os.rename(temp, final)
    except OSError:
        # another build stored the same key at the same moment: theirs is as good as ours
        shutil.rmtree(temp, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)


# --------------------------------------------------------------------------------------
# One profile


def build_one(
    profile: Profile, backend: Backend, options: BuildOptions, progress: ProgressCallback | None
) -> BuildOutcome:
    started = time.monotonic()
    label = profile.label
    staged = staging_dir(options.output_dir, label)
    try:
        log = Log(staged / BUILD_LOG, subject=label, progress=progress)
        request = BuildRequest(
            profile=profile,
            staging=staged,
            log=log,
            ssh_keys=options.ssh_keys,
            release=options.release,
            mirror=options.mirror,
            cache_dir=cache_dir(),
            flake=options.flake,
        )
        key = cache_key(profile, backend, request)
        hit = cached_set(key) if options.use_cache else None
        if hit is not None:
            log.close()
            os.unlink(staged / BUILD_LOG)
            if progress:
                progress(label, "cache hit", None)
            for name in SET_FILES:
                link_or_copy(hit / name, staged / name)
        else:
            with log:
                log.info(f"plasmaboot {__version__}: building {label} with {backend.name}")
                log.info(f"sources: {', '.join(profile.sources)}; cache key {key}")
                warn_missing_service_packages(profile, log)
                result = backend.build(request)
                finish_set(profile, backend, request, result, key)
            store_in_cache(staged, key)
        manifest = read_manifest(staged)
        final = commit_set(staged, options.output_dir, label, SET_FILES, manifest_id(manifest))
    except BaseException as exc:
        keep_failed_log(staged, options.output_dir, label, exc)
        shutil.rmtree(staged, ignore_errors=True)
        raise
    (options.output_dir / f"{label}.failed.log").unlink(missing_ok=True)
    published = None
    if options.pxe_dir is not None:
        published = publish_atomically(final, options.pxe_dir, label, BOOT_FILES)
    return BuildOutcome(
        profile=profile,
        backend=manifest.backend,
        kernel_version=manifest.kernel_version,
        kernel_size=manifest.files[KERNEL].size,
        initrd_size=manifest.files[INITRD].size,
        seconds=time.monotonic() - started,
        cache_hit=hit is not None,
        path=options.output_dir / label,
        warnings=manifest.model_extra.get("warnings", []) if manifest.model_extra else [],
        published=published,
    )


def keep_failed_log(staged: Path, output_dir: Path, label: str, exc: BaseException) -> None:
    """A failed build's log outlives its staging directory, and the error points at it."""
    log = staged / BUILD_LOG
    if not log.is_file():
        return
    kept = output_dir / f"{label}.failed.log"
    shutil.copy2(log, kept)
    if isinstance(exc, WorkError):
        exc.hint = f"the full log is in {display_path(kept)}"


def manifest_id(manifest: Manifest) -> str:
    body = json.dumps({k: v.sha256 for k, v in manifest.files.items()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def warn_missing_service_packages(profile: Profile, log: Log) -> None:
    missing = [s.name for s in profile.services.values() if s.package_file is None]
    if missing:
        log.warn(
            f"no package given for {', '.join(missing)}: their units are installed and "
            "skipped at boot (ConditionPathExists on the binary)"
        )


def finish_set(
    profile: Profile, backend: Backend, request: BuildRequest, result: BuildResult, key: str
) -> None:
    """netboot.ipxe, the output checks and manifest.json, in the staging directory."""
    log, staged = request.log, request.staging
    params = [*profile.kernel.params, *result.extra_kernel_params]
    if not profile.network.predictable_names:
        params.append("net.ifnames=0")
    (staged / IPXE).write_text(render_netboot_script(profile.label, params))
    with log.step("check outputs"):
        check_outputs(staged)
    manifest = Manifest(
        profile=profile.name,
        variant=profile.variant,
        label=profile.label,
        content_hash=profile.content_hash(),
        resolved_profile=profile,
        cache_key=key,
        backend=backend.name,
        distro=result.distro,
        kernel_version=result.kernel_version,
        kernel_params=params,
        files=file_records(staged, HASHED_FILES),
        packages=result.packages,
        services={
            name: {
                "enable": s.enable,
                "ports": s.ports,
                "memory_max": s.memory_max,
                "cpu_quota": s.cpu_quota,
                "package": Path(s.package_file).name if s.package_file else None,
            }
            for name, s in profile.services.items()
        },
        steps=dict(log.steps),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        plasmaboot_version=__version__,
        warnings=list(log.warnings),
    )
    write_manifest(staged, manifest)


def check_outputs(staged: Path) -> None:
    """The seed's artifact checks, by the same rules verify uses: files exist, bzImage is a
    Linux kernel of a sane size, initrd starts with a compressed cpio segment. A failed
    check fails the build."""
    kernel, initrd = staged / KERNEL, staged / INITRD
    for path in (kernel, initrd, staged / IPXE):
        if not path.is_file() or path.stat().st_size == 0:
            raise WorkError(f"build produced no {path.name}")
    try:
        check_kernel_size(kernel.stat().st_size, read_kernel_header(kernel))
    except FormatError as exc:
        raise WorkError(f"{KERNEL}: {exc}") from exc
    with initrd.open("rb") as handle:
        head = handle.read(8)
    if Compression.detect(head) in (None, Compression.NONE):
        raise WorkError(f"{INITRD} does not start with a compressed cpio segment")
    size = initrd.stat().st_size
    low, high = INITRD_SIZE_RANGE
    if not low <= size <= high:
        raise WorkError(f"{INITRD} is {size} bytes, outside the sane range {low}-{high}")


# --------------------------------------------------------------------------------------
# Many profiles


def build_profiles(
    profiles: list[Profile],
    options: BuildOptions,
    progress: ProgressCallback | None = None,
    on_backend: Callable[[str], None] | None = None,
) -> list[BuildOutcome]:
    backend, reason = select_backend(options)
    check_inputs(profiles, options, backend)
    if on_backend is not None:
        on_backend(f"{backend.name} ({reason})")
    clean_stale(options.output_dir)
    if options.pxe_dir is not None:
        clean_stale(options.pxe_dir)
    if options.jobs <= 1 or len(profiles) == 1:
        return [build_one(p, backend, options, progress) for p in profiles]
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        futures = [pool.submit(build_one, p, backend, options, progress) for p in profiles]
        wait(futures)
    failures = [(p, f.exception()) for p, f in zip(profiles, futures, strict=True) if f.exception()]
    if not failures:
        return [f.result() for f in futures]
    if len(failures) == 1 and isinstance(failures[0][1], BaseException):
        raise failures[0][1]
    raise WorkError(
        f"{len(failures)} of {len(profiles)} builds failed: "
        + "; ".join(f"{p.label}: {first_line(exc)}" for p, exc in failures),
        hint="each failed build's log is in OUTPUT_DIR/<profile>.failed.log",
    )


def first_line(exc: BaseException | None) -> str:
    message = exc.message if isinstance(exc, PlasmabootError) else str(exc)
    return message.splitlines()[0] if message else type(exc).__name__
