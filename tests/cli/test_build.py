"""`plasmaboot build` and `plasmaboot publish` on the command line. Bad input to build: exit
2, one clear line, nothing written, nothing previously built disturbed (fast: every case
fails before any real work starts; the rules themselves are tested in tests/image/
test_checks.py). publish: a set whose files still match its manifest is copied, a damaged
one refused. The real builds: tests/integration/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from nix_flakes import needs_nix, nix_build
from plasmaboot.artifacts.layout import sha256_file
from plasmaboot.artifacts.manifest import Manifest, file_records, write_manifest
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.cli import main
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.profiles.store import ProfileStore
from published_sets import NAMES, make_source

from conftest import make_keypair, make_service_deb, plasmaboot


@pytest.fixture
def keypair(tmp_path: Path) -> Path:
    return make_keypair(tmp_path)


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """An output directory that already holds a published set for `base`."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("bzImage", "initrd"):
        (src / name).write_bytes(name.encode() * 100)
    (src / "netboot.ipxe").write_text(render_netboot_script("base", ["console=ttyS0"]))
    out = tmp_path / "artifacts"
    publish_atomically(src, out, "base", ("bzImage", "initrd", "netboot.ipxe"))
    return out


def state(directory: Path) -> dict[str, str]:
    """Every path under `directory` with its content hash (or link target)."""
    result: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            result[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            result[rel] = sha256_file(path)
        else:
            result[rel] = "dir"
    return result


def build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return plasmaboot("build", "--backend", "debian", *args, env=env)


def assert_user_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ")
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_unknown_profile(previous: Path) -> None:
    before = state(previous)
    proc = build("--profile", "control-plain", "--output-dir", str(previous))
    assert_user_error(proc, 'unknown profile "control-plain"', "did you mean 'control-plane'")
    assert state(previous) == before


def test_unknown_variant(previous: Path) -> None:
    before = state(previous)
    proc = build("--profile", "base", "--variant", "debugg", "--output-dir", str(previous))
    assert_user_error(proc, 'unknown variant "debugg"')
    assert state(previous) == before


def test_no_profile(previous: Path) -> None:
    assert_user_error(build("--output-dir", str(previous)), "no profile given", "--profile")


def test_missing_ssh_key(previous: Path, tmp_path: Path) -> None:
    before = state(previous)
    proc = build(
        "-p", "base", "--ssh-key", str(tmp_path / "nope.pub"), "--output-dir", str(previous)
    )
    assert_user_error(proc, "--ssh-key", "nope.pub", "cannot read")
    assert state(previous) == before


def test_private_ssh_key_is_refused(previous: Path, keypair: Path) -> None:
    before = state(previous)
    proc = build("-p", "base", "--ssh-key", str(keypair), "--output-dir", str(previous))
    assert_user_error(proc, "this is a private key", "id_ed25519.pub")
    assert state(previous) == before


@pytest.mark.parametrize("text", ["hello world\n", "ssh-ed25519 AAAAnotakey\n"])
def test_not_a_public_key(previous: Path, tmp_path: Path, text: str) -> None:
    """Refused before any work by the same rule verify applies to the image."""
    junk = tmp_path / "junk.pub"
    junk.write_text(text)
    before = state(previous)
    proc = build("-p", "base", "--ssh-key", str(junk), "--output-dir", str(previous))
    assert_user_error(proc, "junk.pub", "expected OpenSSH public keys", "line 1")
    assert state(previous) == before


def test_output_dir_not_writable(tmp_path: Path, keypair: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = build(
        "-p",
        "base",
        "--ssh-key",
        str(keypair.with_suffix(".pub")),
        "--output-dir",
        str(blocker / "artifacts"),
    )
    assert_user_error(proc, "--output-dir", "cannot write there")
    assert blocker.read_text() == "not a directory"


def test_pxe_dir_not_writable(previous: Path, tmp_path: Path, keypair: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = build(
        "-p",
        "base",
        "--ssh-key",
        str(keypair.with_suffix(".pub")),
        "--output-dir",
        str(previous),
        "--pxe-dir",
        str(blocker),
    )
    assert_user_error(proc, "--pxe-dir", "cannot write there")


def write_profile(directory: Path, package: str) -> None:
    (directory / "svc.toml").write_text(
        textwrap.dedent(
            f"""\
            extends = "base"
            [services.iam]
            package = "{package}"
            """
        )
    )


def build_svc(profiles: Path, keypair: Path, output_dir: Path) -> subprocess.CompletedProcess[str]:
    """Build the `svc` profile that write_profile put in `profiles`."""
    return plasmaboot(
        "--profiles-dir", str(profiles), "build", "--backend", "debian", "-p", "svc",
        "--ssh-key", str(keypair.with_suffix(".pub")), "--output-dir", str(output_dir),
    )  # fmt: skip


def test_service_package_missing(previous: Path, tmp_path: Path, keypair: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles, "debs/iam.deb")
    before = state(previous)
    proc = build_svc(profiles, keypair, previous)
    assert_user_error(proc, "services.iam.package", "iam.deb")
    assert state(previous) == before


def test_service_package_not_a_deb(previous: Path, tmp_path: Path, keypair: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "iam.deb").write_text("#!/bin/sh\n")
    write_profile(profiles, "iam.deb")
    proc = build_svc(profiles, keypair, previous)
    assert_user_error(proc, "services.iam.package", "is not a .deb package")


def test_real_deb_passes_the_package_check(tmp_path: Path, keypair: Path) -> None:
    """A real .deb gets past the package check: the build then stops at the next check."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    deb = make_service_deb(tmp_path)
    (profiles / deb.name).write_bytes(deb.read_bytes())
    write_profile(profiles, deb.name)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = build_svc(profiles, keypair, blocker / "out")
    assert_user_error(proc, "--output-dir")
    assert "package" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--release", "../../escape"), "--release: expected a Debian release name"),
        (("--mirror", "ftp://mirror/debian"), "--mirror: expected an http(s):// or file:// URL"),
        (("--mirror", "https://user:secret@mirror/debian"), "the URL carries credentials"),
        (("--flake", "."), "--flake applies only to the nix backend"),
    ],
)
def test_bad_build_options_create_nothing(
    tmp_path: Path, keypair: Path, args: tuple[str, ...], fragment: str
) -> None:
    out = tmp_path / "new" / "artifacts"
    proc = build(
        "-p", "base", "--ssh-key", str(keypair.with_suffix(".pub")), "--output-dir", str(out), *args
    )
    assert_user_error(proc, fragment)
    assert "secret" not in proc.stderr
    assert not (tmp_path / "new").exists()


def test_bad_pxe_dir_creates_no_output_dir(tmp_path: Path, keypair: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "new-artifacts"
    proc = build(
        "-p",
        "base",
        "--ssh-key",
        str(keypair.with_suffix(".pub")),
        "--output-dir",
        str(out),
        "--pxe-dir",
        str(blocker / "pxe"),
    )
    assert_user_error(proc, "--pxe-dir")
    assert not out.exists()


def test_missing_tool_names_the_package(previous: Path, tmp_path: Path, keypair: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a PATH with everything but mmdebstrap
    for tool in ("mksquashfs", "chroot", "ssh-keygen"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    before = state(previous)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "plasmaboot",
            "build",
            "--backend",
            "debian",
            "-p",
            "base",
            "--ssh-key",
            str(keypair.with_suffix(".pub")),
            "--output-dir",
            str(previous),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(bin_dir)},
        check=False,
    )
    assert_user_error(proc, "'mmdebstrap' was not found", "apt-get install mmdebstrap")
    assert state(previous) == before


def test_debug_shows_traceback() -> None:
    proc = plasmaboot("--debug", "build", "--backend", "debian", "-p", "nope")
    assert "Traceback" in proc.stderr


# --- the nix backend's options ---------------------------------------------------------


@needs_nix
@pytest.mark.nix
def test_cli_rejects_a_flake_directory_without_flake_nix(tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    proc = nix_build(tmp_path, out, {}, "--profile", "base")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: --flake {tmp_path}: no flake.nix there")
    assert not out.exists() or not any(out.iterdir())


def test_cli_refuses_plasmacloud_with_the_debian_backend(tmp_path: Path) -> None:
    proc = plasmaboot(
        "build", "--backend", "debian", "--profile", "base", "--plasmacloud", "path:/x",
        "--output-dir", str(tmp_path / "artifacts"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --plasmacloud applies only to the nix backend")
    assert not (tmp_path / "artifacts").exists()


def test_build_help_documents_the_nix_options() -> None:
    result = CliRunner().invoke(main, ["build", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--plasmacloud FLAKE_REF" in result.output
    assert "--override-input plasmacloud" in result.output
    assert "--flake" in result.output


# --- plasmaboot publish -----------------------------------------------------------------


def built_set(tmp_path: Path, label: str = "worker") -> Path:
    """A set as a build leaves it: files plus a manifest that records their hashes."""
    directory = make_source(tmp_path / "artifacts" / label, "v1")
    manifest = Manifest(
        profile=label, label=label, content_hash="x", cache_key="y", backend="debian",
        distro="debian bookworm", kernel_version="6.1", kernel_params=[],
        files=file_records(directory, NAMES), packages={}, services={}, steps={},
        built_at="2026-11-25T00:00:00+00:00", plasmaboot_version="0.1.0",
        resolved_profile=ProfileStore().resolve("worker"),
    )  # fmt: skip
    write_manifest(directory, manifest)
    return directory


def test_publish_command_copies_a_checked_set(tmp_path: Path) -> None:
    directory = built_set(tmp_path)
    proc = plasmaboot("publish", str(directory), "--pxe-dir", str(tmp_path / "pxe"))
    assert proc.returncode == 0, proc.stderr
    published = tmp_path / "pxe" / "worker"
    assert sorted(p.name for p in published.iterdir()) == sorted(NAMES)
    assert (published / "initrd").read_text() == "initrd:v1"


def test_publish_command_refuses_a_damaged_set(tmp_path: Path) -> None:
    directory = built_set(tmp_path)
    pxe = tmp_path / "pxe"
    assert plasmaboot("publish", str(directory), "--pxe-dir", str(pxe)).returncode == 0
    (directory / "initrd").write_text("initrd:v2")  # same size, other bytes
    proc = plasmaboot("publish", str(directory), "--pxe-dir", str(pxe))
    assert proc.returncode == 2
    assert "refusing to publish: file:initrd: sha256 " in proc.stderr
    assert "manifest.json says" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (pxe / "worker" / "initrd").read_text() == "initrd:v1"  # previous set untouched


def test_progress_off_a_terminal_is_one_line_per_step_with_its_duration() -> None:
    import io

    from plasmaboot.cli.build import BuildProgress
    from plasmaboot.cli.context import Console

    out = io.StringIO()
    with BuildProgress(Console(file=out)) as progress:
        progress.update("worker", "mmdebstrap", None)
        progress.update("worker", "mmdebstrap: downloading", None)
        progress.update("worker", "mmdebstrap: installing", None)
        progress.update("worker", "mmdebstrap", 312.44)
        progress.update("base", "cache hit", None)
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines[0].startswith("worker: mmdebstrap: downloading (") and lines[0].endswith("s)")
    assert lines[1].startswith("worker: mmdebstrap: installing (")
    assert lines[2] == "worker: mmdebstrap done in 312.4s"
    assert lines[3].startswith("base: cache hit (")
    assert len(lines) == 4
