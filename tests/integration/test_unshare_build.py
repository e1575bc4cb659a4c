"""A build as a non-root user (slow): mmdebstrap's unshare mode, where only the hook sees
the files as root. Run by root (as here and in CI), the test becomes an unprivileged user in
a private mount namespace of its own: an /etc whose passwd and subuid/subgid name that user
(newuidmap reads them), and the interpreter's home made reachable (it may sit under a 0700
/root). Nothing outside the namespace changes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

UID = GID = 64123  # a user the host does not have
SUBID_START, SUBID_COUNT = 200000, 65536
BUILD_TIMEOUT = 1800


def hidden_ancestor(path: Path) -> Path | None:
    """The first directory above `path` that others may not enter (/root, 0700)."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def namespace_script(tmp_path: Path, build: list[str]) -> str:
    """Root in a new mount namespace: a private /etc with the user, the interpreter's home
    reachable, then the build as the user."""
    etc = tmp_path / "etc"
    shutil.copytree("/etc", etc, symlinks=True, ignore_dangling_symlinks=True)
    with (etc / "passwd").open("a") as passwd:
        passwd.write(f"builder:x:{UID}:{GID}:plasmaboot CI:{tmp_path / 'home'}:/bin/sh\n")
    with (etc / "group").open("a") as group:
        group.write(f"builder:x:{GID}:\n")
    for name in ("subuid", "subgid"):
        (etc / name).write_text(f"builder:{SUBID_START}:{SUBID_COUNT}\n")
    lines = ["set -e", f"mount --bind {etc} /etc"]
    prefix = Path(sys.base_prefix).resolve()
    hidden = hidden_ancestor(prefix)
    if hidden is not None:
        keep = tmp_path / "hidden"
        keep.mkdir()
        child = prefix.relative_to(hidden).parts[0]
        lines += [
            f"mount --bind {hidden} {keep}",
            f"mount -t tmpfs -o mode=755 tmpfs {hidden}",
            f"mkdir {hidden / child}",
            f"mount --bind {keep / child} {hidden / child}",
        ]
    env = f"HOME={tmp_path / 'home'} PATH={os.environ['PATH']}"
    user = f"setpriv --reuid={UID} --regid={GID} --clear-groups"
    lines.append(f"exec {user} env -i {env} {shlex.join(build)}")
    return "\n".join(lines)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A scratch directory the unprivileged user can enter (pytest's tmp_path sits under a
    0700 directory of root's)."""
    path = Path(tempfile.mkdtemp(prefix="plasmaboot-unshare-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_non_root_user_builds_in_unshare_mode(open_tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("run as root: the test makes its own unprivileged user")
    tmp_path = open_tmp
    home, out, cache = tmp_path / "home", tmp_path / "artifacts", tmp_path / "cache"
    for directory in (home, out, cache / "debs"):
        directory.mkdir(parents=True)
    shared = os.environ.get("PLASMABOOT_TEST_CACHE")
    if shared and (Path(shared) / "debs").is_dir():  # the packages, not the sets
        shutil.copytree(Path(shared) / "debs", cache / "debs", dirs_exist_ok=True)
    for path in [home, out, *cache.rglob("*"), cache]:
        os.chown(path, UID, GID, follow_symlinks=False)
    build = [
        sys.executable,
        "-m",
        "plasmaboot",
        "build",
        "--profile",
        "worker",
        "--backend",
        "debian",
        "--output-dir",
        str(out),
        "--no-ssh-key",  # nobody logs in: the build in unshare mode is what is tested
        "--json",
    ]
    script = namespace_script(tmp_path, [f"PLASMABOOT_CACHE={cache}", *build])
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (summary,) = json.loads(proc.stdout)
    assert summary["backend"] == "debian"
    log = (out / "worker" / "build.log").read_text()
    assert "--mode=unshare" in log
    manifest = json.loads((out / "worker" / "manifest.json").read_text())
    assert "openssh-server" in manifest["packages"]
    # the set belongs to the user who built it
    assert (out / "worker" / "initrd").stat().st_uid == UID
