"""Publishing a set to a PXE server's directory: the same atomic commit a build uses.

Each file is read once, from a descriptor opened without following a link, and hashed as it
is written: what is checked against the manifest is what was copied, so a file swapped
after a check can never be published. The published `netboot.ipxe` names its own set
directory (`${boot-server}/.sets/<label>-<id>/...`), so even a plain static server of the
PXE directory hands a node the kernel and the initrd of one set.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from plasmaboot.artifacts.layout import IPXE, commit_set, content_id, staging_dir
from plasmaboot.artifacts.manifest import FileRecord
from plasmaboot.errors import UserError
from plasmaboot.formats import FormatError
from plasmaboot.formats.ipxe import (
    LABEL,
    MAX_SCRIPT_SIZE,
    parse_netboot_script,
    render_published_script,
)

CHUNK = 1 << 20


# `serve` answers /sets/... from .sets/: a set labelled so could never be reached.
RESERVED_LABELS = frozenset({"sets", "node", "metrics"})  # serve answers these itself


def check_label(label: str, where: str = "label") -> None:
    """The one name rule for a label (a profile name, `-variant`): a single path segment."""
    if label in RESERVED_LABELS:
        raise UserError(
            f"{where} {label!r}: a reserved name (serve answers /{label}/ itself)",
            hint="rename the profile",
        )
    if re.fullmatch(LABEL, label) is None:
        raise UserError(
            f"{where} {label!r}: not a set label (lowercase letters, digits and '-', "
            "starting with a letter or digit)",
            hint="a label is the profile name, or profile-variant, that the build wrote",
        )


def check_not_own_directory(source: Path, parent: Path) -> None:
    """A set is never published into the directory it lives in (that would repoint its own
    label at a copy without a manifest), nor into a directory inside it."""
    real_source, real_parent = source.resolve(), parent.resolve()
    if real_source.is_relative_to(real_parent) or real_parent.is_relative_to(real_source):
        raise UserError(
            f"--pxe-dir {parent}: {source} lives there; a set is not published into its "
            "own output directory",
            hint="publish to the PXE server's directory, e.g. --pxe-dir /srv/pxe/assets",
        )


def publish_atomically(
    source: Path,
    parent: Path,
    label: str,
    names: tuple[str, ...],
    expected: Mapping[str, FileRecord] | None = None,
) -> Path:
    """Copy `names` from `source` into `parent/label/` so the whole set appears at once;
    until then, and if anything fails (a copy that does not match `expected`, the
    manifest's records), the previous set stays current and intact."""
    check_label(label)
    check_not_own_directory(source, parent)
    parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(parent, label)
    try:
        digests = copy_files(source, staged, names)
        if expected is not None:
            check_copies(source, staged, names, digests, expected)
        set_id = content_id(digests)
        if IPXE in names:
            point_script_at_set(source, staged / IPXE, f"{label}-{set_id}")
        return commit_set(staged, parent, label, names, set_id)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def copy_files(source: Path, target: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Copy each of `names` once; returns the sha256 of the bytes written."""
    directory = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return {name: copy_file(directory, source, name, target / name) for name in names}
    finally:
        os.close(directory)


def copy_file(directory: int, source: Path, name: str, target: Path) -> str:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(name, flags, dir_fd=directory)
    except OSError as exc:
        raise UserError(
            f"{source / name}: cannot read it ({exc.strerror})",
            hint="a set's files are regular files (not links); rebuild the set",
        ) from exc
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UserError(f"{source / name}: not a regular file", hint="rebuild the set")
    os.set_blocking(descriptor, True)
    digest = hashlib.sha256()
    with os.fdopen(descriptor, "rb") as reader, target.open("xb") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def check_copies(
    source: Path,
    staged: Path,
    names: tuple[str, ...],
    digests: Mapping[str, str],
    expected: Mapping[str, FileRecord],
) -> None:
    for name in names:
        record = expected.get(name)
        if record is None:
            raise UserError(f"{source}: refusing to publish: the manifest has no record of {name}")
        size = (staged / name).stat().st_size
        if digests[name] != record.sha256 or size != record.size:
            raise UserError(
                f"{source}: refusing to publish: {name} as copied (sha256 "
                f"{digests[name][:16]}..., {size} bytes) is not what the manifest records "
                f"(sha256 {record.sha256[:16]}..., {record.size} bytes)",
                hint="the set changed or is damaged; rebuild it (plasmaboot build --no-cache)",
            )


def point_script_at_set(source: Path, script: Path, set_name: str) -> None:
    """Rewrite the copied script so its URLs name `.sets/<set_name>/` (same parameters)."""
    raw = script.read_bytes()
    try:
        if len(raw) > MAX_SCRIPT_SIZE:
            raise FormatError(f"{len(raw)} bytes, more than a boot script")
        parsed = parse_netboot_script(raw.decode(), published=True)
        text = render_published_script(set_name, parsed.kernel_params)
    except (FormatError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{source / IPXE}: not a boot script plasmaboot wrote: {exc}",
            hint="rebuild the set (plasmaboot build)",
        ) from exc
    script.write_text(text, encoding="utf-8")
