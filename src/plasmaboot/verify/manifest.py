"""manifest.json and the files it records: it must parse, and every file of the set must
have the size and sha256 it records. `publish` refuses a set these checks fail."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from plasmaboot.artifacts.layout import HASHED_FILES, MANIFEST, sha256_file
from plasmaboot.artifacts.manifest import Manifest, read_manifest
from plasmaboot.checks import Check, failed, passed, skipped


def check_manifest(directory: Path) -> tuple[list[Check], Manifest | None]:
    """The manifest check and one `file:<name>` check per recorded (or expected) file, and
    the manifest when it parses."""
    try:
        manifest = read_manifest(directory)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        detail = f"{MANIFEST} does not parse: {where}: {first['msg']}"
        return [failed("manifest", detail), *skipped_file_checks()], None
    except (OSError, UnicodeDecodeError) as exc:
        return [failed("manifest", f"{MANIFEST} unreadable: {exc}"), *skipped_file_checks()], None
    checks = [passed("manifest", f"{manifest.label} ({manifest.backend}, {manifest.distro})")]
    for name in sorted({*HASHED_FILES, *manifest.files}):
        checks.append(check_file_record(directory, manifest, name))
    return checks, manifest


def skipped_file_checks() -> list[Check]:
    return [skipped(f"file:{name}", "no manifest") for name in HASHED_FILES]


def check_file_record(directory: Path, manifest: Manifest, name: str) -> Check:
    check = f"file:{name}"
    record = manifest.files.get(name)
    if record is None:
        return failed(check, f"{MANIFEST} has no record of {name}")
    if not is_plain_file(directory, name):
        return failed(check, f"{name} is missing")
    size = (directory / name).stat().st_size
    if size != record.size:
        return failed(check, f"size {size}, {MANIFEST} says {record.size}")
    digest = sha256_file(directory / name)
    if digest != record.sha256:
        return failed(check, f"sha256 {digest[:16]}..., {MANIFEST} says {record.sha256[:16]}...")
    return passed(check, f"sha256 {digest[:16]}..., {size} bytes")


def is_plain_file(directory: Path, name: str) -> bool:
    """`name` is a file right in `directory` (no path, no `..`)."""
    return "/" not in name and name not in (".", "..") and (directory / name).is_file()
