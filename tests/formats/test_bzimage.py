"""formats.bzimage: the x86 boot protocol header of a crafted kernel and of Debian's."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import KERNEL
from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.formats import FormatError
from plasmaboot.formats.bzimage import read_kernel_header

from conftest import KERNEL_VERSION, CiImage, make_kernel


def test_kernel_header_of_a_crafted_bzimage(tmp_path: Path) -> None:
    header = read_kernel_header(make_kernel(tmp_path / KERNEL))
    assert header.version == KERNEL_VERSION
    assert header.protocol == (2, 15)
    assert header.loaded_high
    assert header.setup_size + header.payload_size == 1 << 20


def test_kernel_header_rejects_text_and_short_files(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.write_text("this is not a kernel\n" * 100)
    with pytest.raises(FormatError, match="HdrS"):
        read_kernel_header(text)
    short = tmp_path / "short"
    short.write_bytes(b"MZ")
    with pytest.raises(FormatError, match="too short"):
        read_kernel_header(short)


def test_kernel_header_needs_a_terminated_version_string(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / KERNEL)
    data = bytearray(kernel.read_bytes())
    data[0x400:0x1000] = b"A" * (0x1000 - 0x400)
    del data[0x1000:]
    kernel.write_bytes(data)
    with pytest.raises(FormatError, match="not NUL-terminated"):
        read_kernel_header(kernel)


@pytest.mark.slow
def test_header_of_a_real_kernel(ci_image: CiImage) -> None:
    """Debian's kernel, as the session's CI image carries it."""
    kernel = ci_image.set_dir / "bzImage"
    header = read_kernel_header(kernel)
    assert header.protocol >= (2, 0) and header.loaded_high
    assert header.setup_size + header.payload_size <= kernel.stat().st_size
    assert header.version.split()[0][0].isdigit()
    assert header.version.split()[0] == read_manifest(ci_image.set_dir).kernel_version
