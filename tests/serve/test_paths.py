"""serve.paths: a request target is split into safe segments or refused (traversal,
encoded separators, hidden names, NUL and control bytes)."""

from __future__ import annotations

import pytest

from plasmaboot.serve.paths import UnsafePath, request_segments


@pytest.mark.parametrize(
    ("target", "segments"),
    [
        ("/", ()),
        ("/boot.ipxe", ("boot.ipxe",)),
        ("/boot.ipxe?profile=cp", ("boot.ipxe",)),
        ("/cp/initrd", ("cp", "initrd")),
        ("/cp/", ("cp", "")),
        ("/sets/cp-0123/bzImage", ("sets", "cp-0123", "bzImage")),
        ("/a%20b/c", ("a b", "c")),
        ("/cp/init%72d", ("cp", "initrd")),
    ],
)
def test_request_segments_accepts(target: str, segments: tuple[str, ...]) -> None:
    assert request_segments(target) == segments


@pytest.mark.parametrize(
    "target",
    [
        "/../etc/passwd",
        "/cp/../../etc/passwd",
        "/cp/..",
        "/cp/./initrd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/cp/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/cp%2finitrd",
        "/cp%2Finitrd",
        "/cp\\..\\initrd",
        "/cp/%5c..%5cinitrd",
        "/cp/initrd%00",
        "/cp/initrd\x00",
        "/cp/in\titrd",
        "/.sets/cp-0123/initrd",
        "/cp/.hidden",
        "/%2esets/x/initrd",
        "//etc/passwd",
        "/cp//initrd",
        "etc/passwd",
        "http://example.com/cp/initrd",
        "/cp/%zz",
        "/cp/%",
        "/cp/%ff%fe",
    ],
)
def test_request_segments_refuses(target: str) -> None:
    with pytest.raises(UnsafePath):
        request_segments(target)
