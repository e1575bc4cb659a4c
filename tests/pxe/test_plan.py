"""pxe.server's checks that need no network: loaders, ranges, the hosts file."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.pxe import server
from plasmaboot.pxe.server import find_loaders, parse_range, prepare_tftp_root

ADDRESS = ipaddress.IPv4Interface("10.77.0.1/24")


def test_missing_ipxe_loaders_name_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "LOADER_DIR", tmp_path)
    with pytest.raises(UserError) as caught:
        find_loaders()
    assert "the iPXE loaders are not installed" in caught.value.message
    assert caught.value.hint is not None and "apt-get install ipxe" in caught.value.hint


def test_the_loaders_debian_ships_are_found() -> None:
    loaders = find_loaders()
    assert set(loaders) == {"undionly.kpxe", "snponly.efi"}
    assert all(path.stat().st_size > 10_000 for path in loaders.values())


def test_the_tftp_root_is_readable_by_dnsmasqs_own_user(tmp_path: Path) -> None:
    prepare_tftp_root(tmp_path / "tftp", find_loaders())
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "tftp").iterdir()}
    # the loaders by their own names only: proxyDHCP names them so too (no `undionly.0`)
    assert modes == {"undionly.kpxe": 0o644, "snponly.efi": 0o644}
    assert (tmp_path / "tftp").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10.77.0.100,10.77.0.150\ndhcp-boot=evil", "expected START,END"),
        ("10.77.0.100,10.77.0.150,10.77.0.160", "expected START,END"),
        ("10.77.0.100", "expected START,END"),
        ("10.77.1.100,10.77.1.150", "inside 10.77.0.0/24"),
    ],
)
def test_bad_ranges(value: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        parse_range(value, ADDRESS)


def test_a_good_range() -> None:
    start, end = parse_range("10.77.0.100, 10.77.0.150", ADDRESS)
    assert (str(start), str(end)) == ("10.77.0.100", "10.77.0.150")
