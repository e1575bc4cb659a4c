"""verify (verify_set and the command): a good set passes every check; the command prints
one table, or the JSON both verify and boot-test share; input that is not a set is exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from artifact_sets import run_verify
from plasmaboot.artifacts.layout import IPXE
from plasmaboot.cli import main
from plasmaboot.verify import verify_set

from conftest import KERNEL_VERSION

EVERY_CHECK = (
    "manifest",
    "file:bzImage",
    "file:initrd",
    "file:netboot.ipxe",
    "bzImage.header",
    "bzImage.version",
    "bzImage.size",
    "initrd.segments",
    "initrd.init",
    "initrd.stage1-modules",
    "initrd.squashfs",
    "initrd.layers",
    "image.read",
    "image.private-keys",
    "image.host-keys",
    "image.root-password",
    "image.sshd",
    "image.authorized-keys",
    "image.login-paths",
    "image.service:x",
    "image.service:y",
    "ipxe.header",
    "ipxe.script",
    "ipxe.files",
    "ipxe.kernel-line",
)


def test_a_good_set_passes(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    code, report, _ = run_verify(directory)
    assert code == 0 and report["ok"] is True
    assert set(report) == {"checks", "ok"}
    checks = {c["name"]: c for c in report["checks"]}
    assert all(set(c) == {"name", "result", "detail"} for c in report["checks"])
    # a set made before layers has none to check (tests/verify/test_layers.py has them)
    assert checks.pop("initrd.layers")["result"] == "skip"
    assert all(c["result"] == "pass" for c in checks.values()), checks
    assert [*checks] == [name for name in EVERY_CHECK if name != "initrd.layers"]
    assert "zstd" in checks["initrd.squashfs"]["detail"]
    assert checks["bzImage.version"]["detail"] == KERNEL_VERSION
    assert "enabled in multi-user.target.wants" in checks["image.service:x"]["detail"]
    assert "not enabled" in checks["image.service:y"]["detail"]


def test_the_installed_command_prints_a_table(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / IPXE).write_text("kernel http://elsewhere/bzImage\n")
    proc = subprocess.run(
        [sys.executable, "-m", "plasmaboot", "verify", str(directory)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "initrd.squashfs" in proc.stdout and "ipxe.header" in proc.stdout
    assert "FAIL" in proc.stdout and "skip" in proc.stdout
    assert "2 checks failed: file:netboot.ipxe, ipxe.header" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_not_a_set_is_a_usage_error(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for path, message in [
        (tmp_path / "absent", "no such directory"),
        (tmp_path / "file", "not a directory"),
        (tmp_path / "empty", "no manifest.json"),
    ]:
        result = runner.invoke(main, ["verify", str(path)])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.stderr.split())
        assert result.stdout == ""


def test_verify_set_reads_a_published_symlink(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    link = directory.parent / "current"
    link.symlink_to(directory.name)
    assert verify_set(link).ok
