"""Stage-1's layer stacking (`stack_layers` in stage1/init), run by the host's busybox sh
with `mount` and the console stubbed: the layers are taken top first in reverse name
order, a squashfs is loop-mounted, a directory is copied into a tmpfs of its own and made
read-only, and anything else stops the boot naming the layer. The whole stage-1 boots in
every image test (tests/integration/test_stage1.py, test_boot_e2e.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from plasmaboot.image.backends.debian.backend import BUSYBOX, STAGE1_INIT

# Sourced after the init: its functions, with the console and mount stubbed.
HARNESS = """\
. "{init}"
say() {{ echo "say: $*"; }}
fail() {{ echo "FAILED: $*"; exit 3; }}
mount() {{
    echo "mount $*" >> "{record}"
    case " $* " in *" $MOUNT_FAILS "*) return 1;; esac
    return 0
}}
stack_layers "{layers}" "{target}"
echo "lower=$lower"
"""


def stack(tmp_path: Path, fails: str = "-") -> tuple[int, str, list[str]]:
    record = tmp_path / "mounts"
    script = HARNESS.format(
        init=STAGE1_INIT, record=record, layers=tmp_path / "layers", target=tmp_path / "run"
    )
    proc = subprocess.run(
        [str(BUSYBOX), "sh", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MOUNT_FAILS": fails},
        timeout=30,
    )
    mounts = record.read_text().splitlines() if record.exists() else []
    return proc.returncode, proc.stdout + proc.stderr, mounts


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    """/layers as the kernel leaves it: the package squashfs, the profile layer, a node's."""
    root = tmp_path / "layers"
    root.mkdir()
    (root / "10-packages.squashfs").write_bytes(b"hsqs")
    for name, text in (("50-profile", "profile"), ("90-node", "node")):
        (root / name / "etc").mkdir(parents=True)
        (root / name / "etc/hostname").write_text(f"{text}\n")
    return root


def test_layers_stack_top_first_in_reverse_name_order(tmp_path: Path, layers: Path) -> None:
    code, output, mounts = stack(tmp_path)
    run = tmp_path / "run"
    assert code == 0, output
    assert f"lower={run}/90-node:{run}/50-profile:{run}/10-packages.squashfs" in output
    assert mounts == [
        f"mount -t tmpfs -o mode=0755 layer-90-node {run}/90-node",
        f"mount -o remount,ro {run}/90-node",
        f"mount -t tmpfs -o mode=0755 layer-50-profile {run}/50-profile",
        f"mount -o remount,ro {run}/50-profile",
        f"mount -t squashfs -o ro,loop {layers}/10-packages.squashfs {run}/10-packages.squashfs",
    ]
    # a directory layer is copied (into what is its tmpfs at boot), not used in place
    assert (run / "90-node/etc/hostname").read_text() == "node\n"
    assert (run / "50-profile/etc/hostname").read_text() == "profile\n"
    assert output.index("say: layer 90-node") < output.index("say: layer 10-packages.squashfs")


def test_a_layer_that_is_neither_stops_the_boot(tmp_path: Path, layers: Path) -> None:
    (layers / "20-stray").write_text("not a squashfs, not a directory")
    code, output, _ = stack(tmp_path)
    assert code == 3
    assert "FAILED: layer 20-stray is neither a directory nor a squashfs" in output


def test_a_layer_that_will_not_mount_stops_the_boot(tmp_path: Path, layers: Path) -> None:
    code, output, _ = stack(tmp_path, fails="squashfs")
    assert code == 3 and "FAILED: mount layer 10-packages.squashfs" in output


def test_no_layers_leave_no_lowerdir(tmp_path: Path) -> None:
    (tmp_path / "layers").mkdir()
    code, output, mounts = stack(tmp_path)
    assert code == 0 and "lower=\n" in output and mounts == []


def test_the_init_does_nothing_unless_it_is_pid_1(tmp_path: Path) -> None:
    """Run (or sourced) as anything but the kernel's PID 1, it only defines its functions:
    no busybox --install, no mounts on the host."""
    proc = subprocess.run(
        [str(BUSYBOX), "sh", str(STAGE1_INIT)], capture_output=True, text=True, timeout=30
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def install_runtime_units(tmp_path: Path, source: Path) -> subprocess.CompletedProcess[str]:
    script = (
        f'. "{STAGE1_INIT}"\nfail() {{ echo "FAILED: $*"; exit 3; }}\n'
        f'install_runtime_units "{source}" "{tmp_path}/run/systemd/system"\n'
    )
    return subprocess.run(
        [str(BUSYBOX), "sh", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )


def test_runtime_units_are_copied_to_run_with_their_links(tmp_path: Path) -> None:
    """stage-1 puts the boot-from-RAM units (masks as links to /dev/null, drop-ins) in
    /run/systemd/system, as `systemctl --runtime` would."""
    source = tmp_path / "etc/runtime-units"
    (source / "a.service.d").mkdir(parents=True)
    (source / "a.service.d/x.conf").write_text("[Service]\n")
    (source / "b.service").symlink_to("/dev/null")
    proc = install_runtime_units(tmp_path, source)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "run/systemd/system"
    assert (run / "b.service").readlink() == Path("/dev/null")
    assert (run / "a.service.d/x.conf").read_text() == "[Service]\n"


def test_no_runtime_units_change_nothing(tmp_path: Path) -> None:
    proc = install_runtime_units(tmp_path, tmp_path / "absent")
    assert proc.returncode == 0 and not (tmp_path / "run").exists()


def test_runtime_units_that_cannot_be_copied_stop_the_boot(tmp_path: Path) -> None:
    source = tmp_path / "etc/runtime-units"
    source.mkdir(parents=True)
    (tmp_path / "run").write_text("a file where the directory should be")
    proc = install_runtime_units(tmp_path, source)
    assert proc.returncode == 3 and "FAILED: create" in proc.stdout
