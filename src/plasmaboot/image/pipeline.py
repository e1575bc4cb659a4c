"""The build pipeline: profiles × backend → artifact sets. A build is these steps:

1. choose the backend (`backends.select_backend`) and check the input (`checks`), so bad
   input fails before any work and leaves nothing behind;
2. per profile, in parallel with --jobs: the cached set (`cache`), or a backend build
   followed by netboot.ipxe, the output checks and manifest.json (`make_set`);
3. commit the set atomically, and publish it to --pxe-dir.

A set becomes visible only when it is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plasmaboot import __version__
from plasmaboot.artifacts.layout import (
    BOOT_FILES,
    BUILD_LOG,
    HASHED_FILES,
    INITRD,
    IPXE,
    KERNEL,
    SET_FILES,
    clean_stale,
    commit_set,
    present_files,
    staging_dir,
)
from plasmaboot.artifacts.manifest import Manifest, file_records, read_manifest, write_manifest
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.errors import PlasmabootError, WorkError
from plasmaboot.formats import FormatError
from plasmaboot.formats.cpio import align_end
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.image.backend import Backend, BackendOptions, BuildRequest, BuildResult
from plasmaboot.image.backends import AUTO, select_backend
from plasmaboot.image.cache import SetCache, cache_key, copy_set
from plasmaboot.image.checks import check_inputs, check_outputs, create_output_dirs
from plasmaboot.log import Log, ProgressCallback
from plasmaboot.paths import cache_dir
from plasmaboot.profiles.located_errors import display_path
from plasmaboot.profiles.model import Profile
from plasmaboot.report.history import append_history, history_record


@dataclass(frozen=True)
class BuildOptions:
    output_dir: Path = Path("artifacts")
    pxe_dir: Path | None = None
    backend: str = AUTO  # a registered backend's name, or auto
    # each backend's options by backend name; a backend not named here gets its defaults
    backend_options: Mapping[str, BackendOptions] = field(default_factory=dict)
    jobs: int = 1
    use_cache: bool = True
    ssh_keys: tuple[Path, ...] = ()
    allow_no_keys: bool = False  # build an image no key can log into (--no-ssh-key)

    def output_dirs(self) -> list[tuple[Path, str]]:
        """The directories the build writes, with the option that named each."""
        directories = [(self.output_dir, "--output-dir")]
        if self.pxe_dir is not None:
            directories.append((self.pxe_dir, "--pxe-dir"))
        return directories


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
    record: dict[str, Any] = field(default_factory=dict)  # what the build history got
    # each layer of the image (Debian): "built" by this build or "reused" from the cache
    layers: dict[str, str] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return self.kernel_size + self.initrd_size


# --------------------------------------------------------------------------------------
# Many profiles


def build_profiles(
    profiles: list[Profile],
    options: BuildOptions,
    progress: ProgressCallback | None = None,
    on_backend: Callable[[str], None] | None = None,
) -> list[BuildOutcome]:
    backend, reason = select_backend(options.backend, options.backend_options)
    check_inputs(profiles, backend, options.ssh_keys, options.output_dirs(), options.allow_no_keys)
    create_output_dirs(options.output_dirs())
    if on_backend is not None:
        on_backend(f"{backend.name} ({reason})")
    for directory, _ in options.output_dirs():
        clean_stale(directory)
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


# --------------------------------------------------------------------------------------
# One profile


def build_one(
    profile: Profile, backend: Backend, options: BuildOptions, progress: ProgressCallback | None
) -> BuildOutcome:
    """Build one profile's set, or take it from the cache; commit it, then publish it."""
    started = time.monotonic()
    label = profile.label
    staged = staging_dir(options.output_dir, label)
    cache = SetCache.default()
    try:
        request = BuildRequest(
            profile=profile,
            staging=staged,
            log=Log(staged / BUILD_LOG, subject=label, progress=progress),
            ssh_keys=options.ssh_keys,
            cache_dir=cache_dir(),
            use_cache=options.use_cache,
        )
        key = cache_key(profile, backend.cache_inputs(request), options.ssh_keys)
        hit = cache.lookup(key) if options.use_cache else None
        if hit is not None:
            take_cached_set(hit, request)
        else:
            with request.log:
                make_set(backend, request, key)
            cache.store(staged, key)
        manifest = read_manifest(staged)
        names = present_files(staged, SET_FILES)  # with installed-initrd: synced, 0644
        final = commit_set(staged, options.output_dir, label, names, manifest_id(manifest))
    except BaseException as exc:
        keep_failed_log(staged, options.output_dir, label, exc)
        shutil.rmtree(staged, ignore_errors=True)
        raise
    (options.output_dir / f"{label}.failed.log").unlink(missing_ok=True)
    published = None
    if options.pxe_dir is not None:
        published = publish_atomically(
            final, options.pxe_dir, label, BOOT_FILES, expected=manifest.files
        )
    seconds = time.monotonic() - started
    record = history_record(manifest, final.name, hit is not None, seconds, utc_now())
    append_history(options.output_dir, record)
    return BuildOutcome(
        profile=profile,
        backend=manifest.backend,
        kernel_version=manifest.kernel_version,
        kernel_size=manifest.files[KERNEL].size,
        initrd_size=manifest.files[INITRD].size,
        seconds=seconds,
        cache_hit=hit is not None,
        path=options.output_dir / label,
        warnings=manifest.model_extra.get("warnings", []) if manifest.model_extra else [],
        published=published,
        record=record,
        layers=layer_states(manifest, cache_hit=hit is not None),
    )


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def layer_states(manifest: Manifest, cache_hit: bool) -> dict[str, str]:
    """What became of each layer: a set from the cache reused every one of them."""
    return {
        layer.name: "reused" if cache_hit or layer.reused else "built" for layer in manifest.layers
    }


def keep_failed_log(staged: Path, output_dir: Path, label: str, exc: BaseException) -> None:
    """A failed build's log outlives its staging directory, and the error points at it."""
    log = staged / BUILD_LOG
    if not log.is_file():
        return
    kept = output_dir / f"{label}.failed.log"
    shutil.copy2(log, kept)
    if isinstance(exc, WorkError):
        exc.hint = f"the full log is in {display_path(kept)}"


def take_cached_set(hit: Path, request: BuildRequest) -> None:
    """The cached set replaces the build: its own build.log comes with it."""
    request.log.close()
    os.unlink(request.staging / BUILD_LOG)
    if request.log.progress:
        request.log.progress(request.log.subject, "cache hit", None)
    copy_set(hit, request.staging)


def make_set(backend: Backend, request: BuildRequest, key: str) -> None:
    """The backend's build, then the rest of the set (netboot.ipxe, output checks, manifest)."""
    profile, log = request.profile, request.log
    log.info(f"plasmaboot {__version__}: building {profile.label} with {backend.name}")
    log.info(f"sources: {', '.join(profile.sources)}; cache key {key}")
    warn_missing_service_packages(profile, log)
    result = backend.build(request)
    finish_set(backend, request, result, key)


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


def finish_set(backend: Backend, request: BuildRequest, result: BuildResult, key: str) -> None:
    """netboot.ipxe, the output checks and manifest.json, in the staging directory."""
    profile, log, staged = request.profile, request.log, request.staging
    params = [*profile.kernel.params, *result.extra_kernel_params]
    if not profile.network.predictable_names:
        params.append("net.ifnames=0")
    try:
        script = render_netboot_script(profile.label, params)
    except FormatError as exc:  # the backend's own parameters pushed the line too far
        raise WorkError(f"{IPXE}: {exc}") from exc
    (staged / IPXE).write_text(script)
    added = align_end(staged / INITRD)  # the per-node layer follows it (formats.cpio)
    if added:
        log.info(f"{INITRD}: padded with {added} NUL byte(s) to end 4-byte aligned")
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
        files=file_records(staged, present_files(staged, HASHED_FILES)),
        packages=result.packages,
        package_sizes=result.package_sizes,
        module_sizes=result.module_sizes,
        steps=dict(log.steps),
        built_at=utc_now(),
        plasmaboot_version=__version__,
        warnings=list(log.warnings),
        layers=list(result.layers),
    )
    write_manifest(staged, manifest)
