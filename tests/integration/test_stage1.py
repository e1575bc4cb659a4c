"""Stage-1 of a real image (slow): when it cannot go on, it says so where a server's
operator looks, the serial console (BMC serial-over-LAN), not only on the screen."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.boot.qemu import QEMU, start_qemu, wait_for_file_text
from plasmaboot.formats.cpio import read_segments

from conftest import CiImage

pytestmark = pytest.mark.slow

MISSING_ROOT = b"plasmaboot stage-1: FAILED: /layers is missing"


def test_stage1_failure_reaches_the_serial_console(ci_image: CiImage, tmp_path: Path) -> None:
    initrd = ci_image.set_dir / "initrd"
    stage1 = read_segments(initrd)[0]
    broken = tmp_path / "initrd-without-root"
    broken.write_bytes(initrd.read_bytes()[stage1.offset : stage1.end])  # no layers
    params = read_manifest(ci_image.set_dir).kernel_params  # the image's own command line
    consoles = [p for p in params if p.startswith("console=")]
    assert consoles[0].startswith("console=ttyS0") and consoles[-1] == "console=tty0"
    # ... so /dev/console is the screen, and the serial console only gets the kernel log
    serial = tmp_path / "serial.log"
    argv = [
        QEMU, "-accel", "tcg", "-machine", "pc", "-m", "512", "-nodefaults",
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(ci_image.set_dir / "bzImage"), "-initrd", str(broken),
        "-append", " ".join(params),
    ]  # fmt: skip
    proc = start_qemu(argv, tmp_path / "qemu.log")
    try:
        seen = wait_for_file_text(serial, b"rebooting in 30 seconds", proc, timeout=180)
    finally:
        proc.stop()
    text = serial.read_bytes().decode("utf-8", "replace") if serial.exists() else ""
    assert seen, text[-2000:]
    assert MISSING_ROOT in serial.read_bytes()
