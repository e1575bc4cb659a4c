"""netboot.ipxe: an iPXE script (`#!ipxe` at byte 0) of exactly the shape the build writes
(formats.ipxe), booting this set (its label, its bzImage and initrd beside the script) with
the kernel command line manifest.json records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL
from plasmaboot.artifacts.manifest import Manifest
from plasmaboot.checks import Check, failed, passed, skipped
from plasmaboot.formats import FormatError
from plasmaboot.formats.ipxe import (
    HEADER,
    MAX_SCRIPT_SIZE,
    NetbootScript,
    parse_netboot_script,
)
from plasmaboot.paths import NotASmallFile, read_small_file
from plasmaboot.verify.manifest import is_plain_file

LATER_CHECKS = ("ipxe.script", "ipxe.files", "ipxe.kernel-line")


def check_ipxe(directory: Path, manifest: Manifest | None) -> Iterator[Check]:
    path = directory / IPXE
    try:
        # never blocks on a FIFO nor reads a device or a giant whole
        data = read_small_file(path, MAX_SCRIPT_SIZE)
    except OSError as exc:
        reason = f"{IPXE} is missing" if not path.exists() else f"{IPXE} unreadable: {exc}"
        yield failed("ipxe.header", reason)
        yield from skip(LATER_CHECKS, "no script to read")
        return
    except NotASmallFile as exc:
        yield failed("ipxe.header", f"{IPXE} is {exc}: not a script plasmaboot writes")
        yield from skip(LATER_CHECKS, "no script to read")
        return
    first = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    if first != HEADER:
        yield failed("ipxe.header", f"first line is {first[:40]!r}, not {HEADER!r}")
        yield from skip(LATER_CHECKS, f"no {HEADER} header: not an iPXE script")
        return
    yield passed("ipxe.header", HEADER)
    try:
        script = parse_netboot_script(data.decode("utf-8"))
    except (FormatError, UnicodeDecodeError) as exc:
        yield failed("ipxe.script", f"not the script plasmaboot writes: {exc}")
        yield from skip(LATER_CHECKS[1:], "the script is not the one plasmaboot writes")
        return
    yield passed("ipxe.script", "kernel, initrd, boot")
    yield check_ipxe_files(directory, script, manifest)
    yield check_kernel_line(script, manifest)


def skip(names: tuple[str, ...], reason: str) -> Iterator[Check]:
    for name in names:
        yield skipped(name, reason)


def check_ipxe_files(directory: Path, script: NetbootScript, manifest: Manifest | None) -> Check:
    name = "ipxe.files"
    problems = []
    if manifest is not None and script.label != manifest.label:
        problems.append(f"label {script.label!r} is not {manifest.label!r}")
    files = (KERNEL, INITRD)
    problems += [f"{file} is not beside it" for file in files if not is_plain_file(directory, file)]
    if problems:
        return failed(name, "; ".join(problems))
    return passed(name, ", ".join(files))


def check_kernel_line(script: NetbootScript, manifest: Manifest | None) -> Check:
    name = "ipxe.kernel-line"
    line = " ".join(["initrd=initrd", *script.kernel_params])
    if manifest is not None and list(script.kernel_params) != manifest.kernel_params:
        recorded = " ".join(manifest.kernel_params)
        return failed(name, f"the script passes {line!r}, manifest.json records {recorded!r}")
    return passed(name, line)
