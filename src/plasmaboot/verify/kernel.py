"""The kernel: its x86 boot protocol header (Documentation/arch/x86/boot.rst), its version
string against the manifest, and its size, by the rules of formats.bzimage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from plasmaboot.artifacts.layout import KERNEL
from plasmaboot.artifacts.manifest import Manifest
from plasmaboot.checks import Check, failed, passed, skipped
from plasmaboot.formats import FormatError
from plasmaboot.formats.bzimage import (
    KernelHeader,
    check_kernel_size,
    is_bzimage,
    read_kernel_header,
)


def check_kernel(directory: Path, manifest: Manifest | None) -> Iterator[Check]:
    path = directory / KERNEL
    if not path.is_file():
        yield failed("bzImage.header", f"{KERNEL} is missing")
        yield skipped("bzImage.version", "no kernel to read")
        yield skipped("bzImage.size", "no kernel to read")
        return
    try:
        header = read_kernel_header(path)
    except (FormatError, OSError) as exc:
        yield failed("bzImage.header", str(exc))
        yield skipped("bzImage.version", "no boot header")
        yield skipped("bzImage.size", "no boot header")
        return
    major, minor = header.protocol
    if not is_bzimage(header):
        yield failed("bzImage.header", f"boot protocol {major}.{minor:02d} zImage: not a bzImage")
    else:
        yield passed("bzImage.header", f"boot protocol {major}.{minor:02d}, loads high")
    yield check_kernel_version(header, manifest)
    size = path.stat().st_size
    try:
        check_kernel_size(size, header)
    except FormatError as exc:
        yield failed("bzImage.size", str(exc))
    else:
        yield passed("bzImage.size", f"{size / (1 << 20):.1f} MiB")


def check_kernel_version(header: KernelHeader, manifest: Manifest | None) -> Check:
    if not header.version:
        return failed("bzImage.version", "the header has no kernel version string")
    release = header.version.split()[0]
    if manifest is not None and manifest.kernel_version and release != manifest.kernel_version:
        return failed(
            "bzImage.version",
            f"kernel is {release}, manifest.json says {manifest.kernel_version}",
        )
    return passed("bzImage.version", header.version)
