"""The Debian archive an image installs from: its suites (the release, its -updates and its
-security), the sources.list lines mmdebstrap gets for them, and the archive's state (each
suite's Release `Date:`), which keys the cache and dates the build (SOURCE_DATE_EPOCH).

A snapshot (`--snapshot 20261101T000000Z`) pins all of it to snapshot.debian.org's copy of
that moment: its state is the snapshot's name, and no Release file is read to know it.
"""

from __future__ import annotations

import functools
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from plasmaboot.errors import WorkError

DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
SNAPSHOT_ARCHIVE = "http://snapshot.debian.org/archive"
SNAPSHOT_PATTERN = re.compile(r"^\d{8}T\d{6}Z$")
# Releases with no -updates and no -security suite.
UNSUPPORTED_RELEASES = frozenset({"sid", "unstable", "experimental", "rc-buggy"})
# The Release file's header (Origin ... Date ... Valid-Until) is in its first few hundred
# bytes; the checksums after it are ~150 kB on the main suite. Only the head is fetched.
RELEASE_HEAD_BYTES = 4096
FETCH_TIMEOUT = 30.0


@dataclass(frozen=True)
class Suite:
    """One suite the image installs from: `deb <url> <name> <components>`."""

    url: str
    name: str

    def sources_line(self, components: list[str]) -> str:
        return f"deb {self.url} {self.name} {' '.join(components)}"

    @property
    def release_url(self) -> str:
        return f"{self.url.rstrip('/')}/dists/{self.name}/Release"


def snapshot_time(snapshot: str) -> datetime:
    """The moment a snapshot name (20261101T000000Z) stands for; ValueError if it is not one."""
    if not SNAPSHOT_PATTERN.fullmatch(snapshot):
        raise ValueError(snapshot)
    return datetime.strptime(snapshot, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def image_suites(
    release: str,
    mirror: str,
    security_mirror: str | None,
    snapshot: str | None,
    backports: bool = False,
) -> list[Suite]:
    """The release, then (for a release that has them) its -updates and, when asked, its
    -backports on the same mirror and its -security on the security mirror; all on
    snapshot.debian.org when pinned. Nothing is installed from -backports unless named
    (`package/<release>-backports`): its Release says NotAutomatic."""
    if snapshot is not None:
        mirror = f"{SNAPSHOT_ARCHIVE}/debian/{snapshot}"
        security_mirror = f"{SNAPSHOT_ARCHIVE}/debian-security/{snapshot}"
    suites = [Suite(mirror, release)]
    if release in UNSUPPORTED_RELEASES:
        return suites
    suites.append(Suite(mirror, f"{release}-updates"))
    if backports:
        suites.append(Suite(mirror, backports_suite(release)))
    if security_mirror is not None:
        suites.append(Suite(security_mirror, f"{release}-security"))
    return suites


def backports_suite(release: str) -> str:
    return f"{release}-backports"


def has_backports(release: str) -> bool:
    """Whether the release has a -backports suite (unstable and experimental do not)."""
    return release not in UNSUPPORTED_RELEASES


def release_date(head: str) -> datetime:
    """The `Date:` field of a Release file's header, as an aware datetime."""
    for line in head.splitlines():
        if line.startswith("Date:"):
            return parsedate_to_datetime(line.removeprefix("Date:").strip()).astimezone(UTC)
        if not line.strip():
            break
    raise ValueError("no Date: field in the Release file's header")


@functools.cache
def fetch_release_date(url: str) -> datetime:
    """A suite's Release date, read from the head of its Release file (once per process, so
    every profile of one `build --all` is keyed and dated on the same archive state)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes=0-{RELEASE_HEAD_BYTES - 1}"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            head = response.read(RELEASE_HEAD_BYTES).decode("utf-8", "replace")
        return release_date(head)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WorkError(
            f"cannot read the archive's state from {url}: {reason}",
            hint="check the mirror and the network (--mirror, --security-mirror none to leave"
            " security updates out), or pin a --snapshot",
        ) from exc


def archive_state(suites: list[Suite], snapshot: str | None) -> dict[str, datetime]:
    """Each suite's date: the Release file's `Date:`, or the snapshot's moment when pinned."""
    if snapshot is not None:
        return {suite.name: snapshot_time(snapshot) for suite in suites}
    return {suite.name: fetch_release_date(suite.release_url) for suite in suites}


def describe_state(state: dict[str, datetime]) -> str:
    """The state as one cache input: `bookworm=2026-11-08T09:12:44Z bookworm-updates=...`."""
    return " ".join(
        f"{name}={date.strftime('%Y-%m-%dT%H:%M:%SZ')}" for name, date in sorted(state.items())
    )


def state_epoch(state: dict[str, datetime]) -> int:
    """SOURCE_DATE_EPOCH for a build from this archive state: its newest suite's date."""
    return int(max(state.values()).timestamp())
