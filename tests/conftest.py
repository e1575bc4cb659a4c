"""Shared fixtures. The slow tests share ONE real image build per session (`ci_image`):
a control-plane-based profile with a test service packaged as a .deb by the test itself."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]  # the checkout
CI_PROFILE = "ci-node"
CI_SERVICE = "iam"
KERNEL_RELEASE = "6.1.0-99-amd64"
KERNEL_VERSION = f"{KERNEL_RELEASE} (builder@plasmaboot) #1 SMP PREEMPT_DYNAMIC Debian 6.1.99-1"


@dataclass(frozen=True)
class CiImage:
    artifacts: Path  # the --output-dir
    label: str
    identity: Path  # private key whose public half is in the image
    profiles_dir: Path
    cache: Path  # PLASMABOOT_CACHE of the build
    summary: dict[str, object]  # `build --json` entry

    def build(self, *args: str, output_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Build the CI profile again, with the same profiles and cache."""
        return plasmaboot(
            "--profiles-dir",
            str(self.profiles_dir),
            "build",
            "--profile",
            self.label,
            "--backend",
            "debian",
            "--output-dir",
            str(output_dir or self.artifacts),
            *args,
            env={"PLASMABOOT_CACHE": str(self.cache)},
        )

    @property
    def set_dir(self) -> Path:
        return self.artifacts / self.label


def plasmaboot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as users do (a subprocess), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "plasmaboot", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def make_kernel(path: Path, version: str = KERNEL_VERSION, size: int = 1 << 20) -> Path:
    """A file with the boot header of a bzImage (protocol 2.15, loads high, version string)."""
    setup_sectors = 4
    head = bytearray(4096)
    head[0x1F1] = setup_sectors
    head[0x1F4:0x1F8] = ((size - (setup_sectors + 1) * 512) // 16).to_bytes(4, "little")
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    head[0x206:0x208] = (0x020F).to_bytes(2, "little")
    head[0x20E:0x210] = (0x400 - 0x200).to_bytes(2, "little")
    head[0x211] = 1
    head[0x400 : 0x400 + len(version) + 1] = version.encode() + b"\0"
    with path.open("wb") as out:
        out.write(head)
        out.truncate(size)
    return path


def make_keypair(directory: Path, name: str = "id_ed25519") -> Path:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "plasmaboot-test", "-f", str(key)],
        check=True,
    )
    return key


# The stand-in for a service's server: binds every port its config names (the top-level
# `...port = N` keys plasmaboot writes from the catalog's ports), on TCP and UDP, then
# waits, so a booted node shows what a real service would: active and listening. Perl,
# because perl-base (with IO::Socket::INET) is in every Debian image.
STAND_IN_SERVICE = r"""#!/usr/bin/perl
# stand-in service: binds the ports of its config, then waits
use strict;
use warnings;
use IO::Socket::INET;

my ($config) = grep { $_ ne "--config" } @ARGV;
open(my $fh, "<", $config) or die "cannot read $config: $!\n";
my @sockets;
while (my $line = <$fh>) {
    last if $line =~ /^\s*\[/;    # top-level keys only
    next unless $line =~ /^\s*(\w*[pP]ort)\s*=\s*(\d+)\s*$/;
    my $port = $2;
    push @sockets, IO::Socket::INET->new(
        LocalAddr => "0.0.0.0", LocalPort => $port, Proto => "tcp", Listen => 5, ReuseAddr => 1
    ) || die "cannot listen on tcp port $port: $@\n";
    push @sockets, IO::Socket::INET->new(
        LocalAddr => "0.0.0.0", LocalPort => $port, Proto => "udp"
    ) || die "cannot bind udp port $port: $@\n";
}
die "no port in $config\n" unless @sockets;
print "listening on ", scalar(@sockets) / 2, " ports\n";
sleep while 1;
"""


def make_service_deb(directory: Path, service: str = CI_SERVICE) -> Path:
    """A small real .deb providing /usr/bin/<service>-server (a long-running stand-in that
    listens on its ports)."""
    root = directory / f"{service}-deb"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        textwrap.dedent(
            f"""\
            Package: {service}-server
            Version: 0.1.0
            Architecture: all
            Maintainer: plasmaboot tests <tests@plasmacloud.invalid>
            Description: stand-in {service} server for plasmaboot tests
            """
        )
    )
    binary = root / f"usr/bin/{service}-server"
    binary.write_text(STAND_IN_SERVICE)
    binary.chmod(0o755)
    deb = directory / f"{service}-server_0.1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def write_ci_profile(directory: Path, public_key: Path, deb: Path) -> None:
    (directory / "keys").mkdir(exist_ok=True)
    (directory / "keys/ci.pub").write_bytes(public_key.read_bytes())
    (directory / "debs").mkdir(exist_ok=True)
    (directory / "debs" / deb.name).write_bytes(deb.read_bytes())
    (directory / f"{CI_PROFILE}.toml").write_text(
        textwrap.dedent(
            f"""\
            description = "CI: control-plane with one real service package"
            extends = "control-plane"

            [ssh]
            authorized_keys = ["keys/ci.pub"]

            [services.{CI_SERVICE}]
            enable = true
            package = "debs/{deb.name}"
            settings = {{ log_level = "info", region = {{ name = "ci" }} }}
            """
        )
    )


@pytest.fixture(scope="session")
def ci_image(tmp_path_factory: pytest.TempPathFactory) -> CiImage:
    """Build the CI image once per session with the real Debian backend."""
    base = tmp_path_factory.mktemp("ci-image")
    identity = make_keypair(base)
    profiles_dir = base / "profiles"
    profiles_dir.mkdir()
    write_ci_profile(profiles_dir, identity.with_suffix(".pub"), make_service_deb(base))
    artifacts = base / "artifacts"
    # PLASMABOOT_TEST_CACHE lets a developer reuse downloads between runs; CI starts empty.
    cache = os.environ.get("PLASMABOOT_TEST_CACHE") or str(base / "cache")
    proc = plasmaboot(
        "--profiles-dir",
        str(profiles_dir),
        "build",
        "--profile",
        CI_PROFILE,
        "--backend",
        "debian",
        "--output-dir",
        str(artifacts),
        "--json",
        # built whole (mmdebstrap, the hook) whatever the cache holds: a kept
        # PLASMABOOT_TEST_CACHE saves downloads only
        "--no-cache",
        env={"PLASMABOOT_CACHE": cache},
    )
    assert proc.returncode == 0, f"CI image build failed:\n{proc.stderr[-4000:]}"
    summary = json.loads(proc.stdout)[0]
    return CiImage(artifacts, CI_PROFILE, identity, profiles_dir, Path(cache), summary)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory with an empty `profiles/` beside it, as the current directory, so
    messages name files as an operator sees them: `profiles/edge.toml`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLASMABOOT_PROFILES_DIR", raising=False)
    (tmp_path / "profiles").mkdir()
    return tmp_path


@pytest.fixture
def offline_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    """No binary cache (unreachable here: each build would wait on retries) and a static
    /bin/sh in the sandbox for the fixture's `builder = "/bin/sh"` derivations."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed (the fixture builds need a static /bin/sh)")
    monkeypatch.setenv("NIX_CONFIG", f"substituters =\nsandbox-paths = /bin/sh={busybox}")


def live_processes(*texts: str) -> dict[int, str]:
    """Live (not zombie) processes whose command line contains every one of `texts`:
    pid -> command line. What "nothing was left running" tests look for."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if all(text in cmdline for text in texts) and state != "Z":
            found[int(entry.name)] = cmdline
    return found


@pytest.fixture
def archive_dates(monkeypatch: pytest.MonkeyPatch) -> dict[str, datetime.datetime]:
    """Release dates by Release URL, instead of the network (a URL not in it: 2026-01-01):
    for tests of the Debian backend's cache keys, which hold the archive's state."""
    from plasmaboot.image.backends.debian import archive

    dates: dict[str, datetime.datetime] = {}

    def fetch(url: str) -> datetime.datetime:
        return dates.get(url, datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))

    monkeypatch.setattr(archive, "fetch_release_date", fetch)
    return dates
