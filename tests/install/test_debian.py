"""install.debian's shell parts run for real by the host's sh (mount stubbed): the layers
stage-1 leaves under /run/rootfs/layers are stacked top first in reverse name order,
without the per-node layer, and a node whose stage-1 kept no layers is a clear failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from plasmaboot.errors import WorkError
from plasmaboot.install.debian import (
    NODE_LAYER,
    copy_tree,
    kill_previous,
    lower_view,
    node_kernel_version,
    release_other_namespaces,
    start_background,
    together,
    wait_background,
)

# mount only records what it was asked; the rest of the script runs as on the node
HARNESS = 'mount() {{ echo "mount $*" >> "{record}"; }}\n{script}'


def view(tmp_path: Path, layers: Path) -> tuple[int, str, list[str]]:
    lower = tmp_path / "lower"
    (lower / "root/usr/lib").mkdir(parents=True, exist_ok=True)
    (lower / "root/usr/lib/os-release").write_text("ID=debian\n")
    record = tmp_path / "mounts"
    script = HARNESS.format(record=record, script=lower_view(str(layers), str(lower)))
    proc = subprocess.run(
        ["sh", "-euc", script], capture_output=True, text=True, timeout=30, check=False
    )
    mounts = record.read_text().splitlines() if record.exists() else []
    return proc.returncode, proc.stdout + proc.stderr, mounts


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    """/run/rootfs/layers as stage-1 leaves it: each layer a mount point (directories here)."""
    root = tmp_path / "layers"
    for name in ("10-packages.squashfs", "50-profile", NODE_LAYER, "20-extra"):
        (root / name).mkdir(parents=True)
    return root


def test_the_layers_but_the_node_one_are_stacked_top_first(tmp_path: Path, layers: Path) -> None:
    code, output, mounts = view(tmp_path, layers)
    assert code == 0, output
    assert NODE_LAYER == "90-node"
    lowerdir = f"{layers}/50-profile:{layers}/20-extra:{layers}/10-packages.squashfs"
    assert mounts == [
        f"mount -t overlay -o ro,lowerdir={lowerdir} plasmaboot-lower {tmp_path}/lower/root"
    ]


def test_a_single_layer_is_bound_read_only(tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    (layers / "10-packages.squashfs").mkdir(parents=True)
    (layers / NODE_LAYER).mkdir()
    code, output, mounts = view(tmp_path, layers)
    assert code == 0, output
    assert mounts == [f"mount --bind -o ro {layers}/10-packages.squashfs {tmp_path}/lower/root"]


def test_a_node_whose_stage1_kept_no_layers_fails_with_the_reason(tmp_path: Path) -> None:
    code, output, mounts = view(tmp_path, tmp_path / "absent")
    assert code == 1 and mounts == []
    assert "does not keep its layers under /run (rebuild the image)" in output


def test_only_the_node_layer_is_no_system(tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    (layers / NODE_LAYER).mkdir(parents=True)
    code, output, mounts = view(tmp_path, layers)
    assert code == 1 and mounts == []
    assert f"no layer under {layers}" in output


def test_what_a_lost_run_left_running_is_ended(tmp_path: Path) -> None:
    """A process working under the target (as a cp or chroot of a run whose SSH connection
    was lost keeps doing) is killed; one elsewhere is not."""
    target, lower, elsewhere = tmp_path / "target", tmp_path / "lower", tmp_path / "other"
    for directory in (target / "usr", lower, elsewhere):
        directory.mkdir(parents=True)
    inside = subprocess.Popen(["sleep", "60"], cwd=target / "usr")
    outside = subprocess.Popen(["sleep", "60"], cwd=elsewhere)
    try:
        proc = subprocess.run(
            ["sh", "-euc", kill_previous(str(target), str(lower))],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert inside.wait(timeout=10) == -9
        assert f"ended what a previous run left running: {inside.pid}" in proc.stdout
        assert outside.poll() is None
    finally:
        for child in (inside, outside):
            child.kill()
            child.wait()


def test_a_background_command_is_waited_for_with_its_status_and_output(tmp_path: Path) -> None:
    """The initramfs runs detached from the SSH session that starts it; a later session
    waits for it, prints its output and exits with its status."""
    state = str(tmp_path / "job")
    run = subprocess.run(
        ["sh", "-euc", start_background("echo building; sleep 1; exit 3", state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0 and run.stdout == ""  # returns at once, nothing printed
    waited = subprocess.run(
        ["sh", "-euc", wait_background(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert waited.returncode == 3
    lines = waited.stdout.splitlines()
    assert lines[0] == "building" and re.fullmatch(r"exit 3 after [12] s", lines[-1])


def test_the_nodes_kernel_version_is_checked_where_it_enters() -> None:
    """`uname -r` from the node names files under /boot and a grub.cfg line: the build's
    kernel-version rule, or a WorkError (never a path or a GRUB command)."""
    assert node_kernel_version("6.12.95+deb12-amd64\n") == "6.12.95+deb12-amd64"
    for hostile in ["", "../../etc/passwd", "6.1 root=/dev/sdb", "6.1\n}\nmenuentry x {",
                    "6.1;reboot", "x" * 5000]:  # fmt: skip
        with pytest.raises(WorkError, match="not a kernel version"):
            node_kernel_version(hostile)


def fake_process(proc: Path, pid: int, namespace: str, mounts: str, comm: str) -> None:
    (proc / str(pid) / "ns").mkdir(parents=True)
    (proc / str(pid) / "ns/mnt").symlink_to(f"mnt:[{namespace}]")
    (proc / str(pid) / "mountinfo").write_text(mounts)
    (proc / str(pid) / "comm").write_text(comm + "\n")


def test_the_target_left_mounted_in_other_namespaces_is_unmounted_there(tmp_path: Path) -> None:
    """What an install before the chroot namespaces left: the target still mounted in the
    namespaces of the node's sandboxed services. Each such namespace is entered once and
    the target unmounted there; the node's own namespace and one without it are left alone."""
    proc, record = tmp_path / "proc", tmp_path / "nsenter"
    held = "310 78 254:3 / /mnt/plasmaboot rw,relatime shared:168 - ext4 /dev/vda3 rw\n"
    clean = "22 1 0:21 / /run rw - tmpfs tmpfs rw\n"
    (proc / "self/ns").mkdir(parents=True)
    (proc / "self/ns/mnt").symlink_to("mnt:[1]")
    fake_process(proc, 1, "1", held, "systemd")  # the node's own namespace: not entered
    fake_process(proc, 202, "2", held, "systemd-udevd")
    fake_process(proc, 203, "2", held, "udev-worker")  # the same namespace: entered once
    fake_process(proc, 225, "3", held + clean, "systemd-logind")
    fake_process(proc, 300, "4", clean, "sshd")  # does not hold it
    stub = f'nsenter() {{ echo "nsenter $*" >> "{record}"; }}\n'
    proc_run = subprocess.run(
        ["sh", "-euc", stub + release_other_namespaces("/mnt/plasmaboot", str(proc))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc_run.returncode == 0, proc_run.stderr
    assert record.read_text().splitlines() == [
        "nsenter -t 202 -m umount -R /mnt/plasmaboot",
        "nsenter -t 225 -m umount -R /mnt/plasmaboot",
    ]
    assert proc_run.stdout.splitlines() == [
        "unmounted /mnt/plasmaboot in the mount namespace of systemd-udevd",
        "unmounted /mnt/plasmaboot in the mount namespace of systemd-logind",
    ]


def test_commands_run_together_and_every_failure_is_named(tmp_path: Path) -> None:
    logs = str(tmp_path / "together")
    both = together(["sleep 1; echo first", "sleep 1; echo second"], logs)
    started = time.monotonic()
    ok = subprocess.run(["sh", "-euc", both], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and ok.stdout == "first\nsecond\n"
    assert time.monotonic() - started < 1.9  # at once, not one after the other
    failed = subprocess.run(
        ["sh", "-euc", together(["echo a; exit 3", "echo b", "exit 1"], logs)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == ["a", "b", "failed: 0 2 (of 0-2, in order)"]
    assert together(["echo alone"], logs) == "echo alone"


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (mode, mtime, link target or content) of every entry under `root`, itself too."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        what = str(path.readlink()) if path.is_symlink() else (
            path.read_text() if path.is_file() else ""
        )  # fmt: skip
        found[str(path.relative_to(root))] = (info.st_mode, int(info.st_mtime), what)
    return found


@pytest.mark.parametrize("merged_usr", [True, False])
def test_the_tree_is_copied_in_two_streams_as_cp_a_would(tmp_path: Path, merged_usr: bool) -> None:
    """Every entry, with its mode, times and links, the directories above the streams'
    entries too; a tree without usr/lib (no split) is one cp -a."""
    source, target = tmp_path / "source", tmp_path / "target"
    for name in ("usr/lib/modules/6.1", "usr/lib/x86_64-linux-gnu", "usr/bin", "etc/ssh", "var"):
        (source / name).mkdir(parents=True)
    (source / "usr/lib/modules/6.1/a.ko").write_text("module")
    (source / "usr/lib/os-release").write_text("ID=debian\n")
    (source / "usr/bin/perl").write_text("perl")
    (source / "usr/bin/perl").chmod(0o755)
    os.link(source / "usr/bin/perl", source / "usr/bin/perl5.36.0")
    (source / "etc/ssh/sshd_config").write_text("x")
    (source / "etc/ssh/sshd_config").chmod(0o600)
    (source / "bin").symlink_to("usr/bin")
    if not merged_usr:
        shutil.rmtree(source / "usr/lib")
    (source / "var").chmod(0o700)
    (source / "usr").chmod(0o751)
    for path in [source, source / "usr", *([source / "usr/lib"] if merged_usr else [])]:
        os.utime(path, (1_600_000_000, 1_600_000_000))
    target.mkdir()
    proc = subprocess.run(
        ["sh", "-euc", copy_tree(str(source), str(target))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert tree(target) == tree(source)
    assert (target / "usr/bin/perl").stat().st_ino == (target / "usr/bin/perl5.36.0").stat().st_ino
    assert ("xargs" in copy_tree("/s", "/t")) and "cp -a /s/. /t/" in copy_tree("/s", "/t")
