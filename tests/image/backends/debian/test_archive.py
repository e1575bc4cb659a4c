"""The archive an image installs from: its suites, its state read from Release files (here
from a file:// mirror, no network), the snapshot that pins it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from plasmaboot.errors import WorkError
from plasmaboot.image.backends.debian.archive import (
    DEFAULT_SECURITY_MIRROR,
    Suite,
    archive_state,
    describe_state,
    fetch_release_date,
    image_suites,
    release_date,
    snapshot_time,
    state_epoch,
)

RELEASE_HEAD = """\
Origin: Debian
Label: Debian-Security
Suite: stable-security
Codename: {suite}
Date: {date}
Valid-Until: Sun, 07 Dec 2026 00:22:33 UTC
Acquire-By-Hash: yes
Architectures: amd64 arm64
Components: updates/main updates/contrib
Description: Debian 12 - Security Updates
MD5Sum:
 0f3c0a8e3b6b7e0d0d2f4b0c6a3b9e1f  1234 main/binary-amd64/Packages
"""


def write_mirror(root: Path, dates: dict[str, str], padding: int = 200_000) -> str:
    """A file:// mirror with a Release file per suite (with a long checksum list after it)."""
    for suite, date in dates.items():
        release = root / "dists" / suite / "Release"
        release.parent.mkdir(parents=True)
        release.write_text(RELEASE_HEAD.format(suite=suite, date=date) + " x\n" * padding)
    return root.as_uri()


@pytest.mark.parametrize(
    ("release", "security", "names"),
    [
        (
            "bookworm",
            DEFAULT_SECURITY_MIRROR,
            ["bookworm", "bookworm-updates", "bookworm-security"],
        ),
        ("trixie", DEFAULT_SECURITY_MIRROR, ["trixie", "trixie-updates", "trixie-security"]),
        ("bookworm", None, ["bookworm", "bookworm-updates"]),
        ("sid", DEFAULT_SECURITY_MIRROR, ["sid"]),
        ("unstable", DEFAULT_SECURITY_MIRROR, ["unstable"]),
        ("experimental", DEFAULT_SECURITY_MIRROR, ["experimental"]),
    ],
)
def test_a_release_installs_with_its_updates_and_security_suites(
    release: str, security: str | None, names: list[str]
) -> None:
    suites = image_suites(release, "http://m/debian", security, None)
    assert [s.name for s in suites] == names
    assert all(s.url == "http://m/debian" for s in suites if not s.name.endswith("-security"))
    assert all(s.url == security for s in suites if s.name.endswith("-security"))


@pytest.mark.parametrize(
    ("release", "names"),
    [
        ("bookworm", ["bookworm", "bookworm-updates", "bookworm-backports", "bookworm-security"]),
        ("sid", ["sid"]),  # no -backports: the backend refuses a backports kernel there
    ],
)
def test_backports_is_a_suite_only_when_asked(release: str, names: list[str]) -> None:
    suites = image_suites(release, "http://m/debian", DEFAULT_SECURITY_MIRROR, None, True)
    assert [s.name for s in suites] == names
    assert all(s.url == "http://m/debian" for s in suites if s.name.endswith("-backports"))


def test_the_sources_lines() -> None:
    suite = Suite("http://deb.debian.org/debian-security", "bookworm-security")
    assert suite.sources_line(["main", "non-free-firmware"]) == (
        "deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware"
    )
    assert suite.release_url == (
        "http://deb.debian.org/debian-security/dists/bookworm-security/Release"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sat, 30 Nov 2026 00:22:33 UTC", datetime(2026, 11, 30, 0, 22, 33, tzinfo=UTC)),
        ("Sat, 11 Jul 2026 10:16:37 +0000", datetime(2026, 7, 11, 10, 16, 37, tzinfo=UTC)),
        ("Sat, 11 Jul 2026 12:16:37 +0200", datetime(2026, 7, 11, 10, 16, 37, tzinfo=UTC)),
    ],
)
def test_the_release_date_is_read_from_the_header(text: str, expected: datetime) -> None:
    assert release_date(RELEASE_HEAD.format(suite="bookworm", date=text)) == expected


@pytest.mark.parametrize(
    "head",
    [
        "Origin: Debian\nSuite: stable\n",  # no Date
        "Origin: Debian\n\nDate: Sat, 30 Nov 2026 00:22:33 UTC\n",  # after the header
        "Date: yesterday\n",
        "",
    ],
)
def test_a_release_without_a_usable_date_is_refused(head: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        release_date(head)


def test_the_state_is_read_from_each_suites_release_file(tmp_path: Path) -> None:
    url = write_mirror(
        tmp_path,
        {
            "bookworm": "Sat, 11 Jul 2026 10:16:37 UTC",
            "bookworm-updates": "Mon, 30 Nov 2026 02:21:41 UTC",
            "bookworm-security": "Mon, 30 Nov 2026 00:22:33 UTC",
        },
    )
    suites = image_suites("bookworm", url, url, None)
    state = archive_state(suites, None)
    assert describe_state(state) == (
        "bookworm=2026-07-11T10:16:37Z bookworm-security=2026-11-30T00:22:33Z"
        " bookworm-updates=2026-11-30T02:21:41Z"
    )
    assert state_epoch(state) == int(datetime(2026, 11, 30, 2, 21, 41, tzinfo=UTC).timestamp())


def test_an_unreadable_archive_is_a_work_error_naming_the_url(tmp_path: Path) -> None:
    url = (tmp_path / "nowhere").as_uri() + "/dists/bookworm/Release"
    with pytest.raises(WorkError) as caught:
        fetch_release_date(url)
    assert url in caught.value.message
    assert caught.value.hint is not None and "--snapshot" in caught.value.hint


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20261101T000000Z", datetime(2026, 11, 1, tzinfo=UTC)),
        ("20240229T235959Z", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_a_snapshot_is_its_moment(name: str, expected: datetime) -> None:
    assert snapshot_time(name) == expected
    suites = image_suites("bookworm", "http://ignored/debian", DEFAULT_SECURITY_MIRROR, name)
    assert {s.url for s in suites} == {
        f"http://snapshot.debian.org/archive/debian/{name}",
        f"http://snapshot.debian.org/archive/debian-security/{name}",
    }
    assert set(archive_state(suites, name).values()) == {expected}


@pytest.mark.parametrize(
    "name", ["20261301T000000Z", "2026-11-01", "20261101T000000z", "20261101T000000Z\n", ""]
)
def test_a_malformed_snapshot_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        snapshot_time(name)
