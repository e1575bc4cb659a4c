"""The pure parts of bench/peers.py (the peer benchmark of issue #16): ratios, the table,
the RAM bisection, the module-trimming script and netboot.ipxe parsing. The benchmark itself
builds and boots for many minutes and is never a test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

PEERS_PY = Path(__file__).resolve().parents[2] / "bench" / "peers.py"


def load_peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


peers = load_peers()


def test_ratio_is_plasmaboot_over_peer_and_none_without_both() -> None:
    assert peers.ratio(10.0, 40.0) == 0.25
    assert peers.ratio(None, 40.0) is None
    assert peers.ratio(10.0, None) is None
    assert peers.ratio(10.0, 0.0) is None


def test_format_value_per_figure() -> None:
    assert peers.format_value("size", 130_500_000) == "130.5 MB"
    assert peers.format_value("ram", 384) == "384 MiB"
    assert peers.format_value("nochange", 0.547) == "0.55 s"
    assert peers.format_value("nochange", 125.54) == "125.5 s"
    assert peers.format_value("boot", 18.14) == "18.1 s"
    assert peers.format_value("boot", None) == "-"


def test_table_medians_and_ratios() -> None:
    results = {
        "plasmaboot": {"cold": [40.0, 45.0, 50.0], "ram": [512]},
        "mkosi": {"cold": [100.0, 90.0, 110.0], "ram": [1024]},
        "live-build": {"cold": [200.0]},
    }
    text = peers.table(results, ["plasmaboot", "mkosi", "live-build"])
    lines = text.splitlines()
    assert lines[0] == (
        "| figure | plasmaboot | mkosi | live-build | ratio vs mkosi | ratio vs live-build |"
    )
    assert "| cold build | 45.0 s | 100.0 s | 200.0 s | 0.45 | 0.23 |" in lines
    assert "| smallest RAM reaching SSH | 512 MiB | 1024 MiB | - | 0.50 | - |" in lines
    # figures nobody measured get no row
    assert not any(line.startswith("| no-change") for line in lines)


def test_table_of_peers_alone_has_no_ratio_column() -> None:
    text = peers.table({"mkosi": {"boot": [24.5]}}, ["mkosi"])
    assert text.splitlines()[0] == "| figure | mkosi |"
    assert "| direct kernel boot -> SSH, TCG, 1 GiB | 24.5 s |" in text


@pytest.mark.parametrize(
    ("smallest", "expected_boots"),
    [(256, 3), (384, 3), (512, 3), (768, 2), (1024, 3), (None, 3)],
)
def test_bisect_ram_finds_the_smallest_step(smallest: int | None, expected_boots: int) -> None:
    tried: list[int] = []

    def reaches(memory: int) -> bool:
        tried.append(memory)
        return smallest is not None and memory >= smallest

    assert peers.bisect_ram([256, 384, 512, 768, 1024], reaches) == smallest
    assert tried[0] == 512
    assert len(tried) <= expected_boots


def test_trim_script_keeps_included_and_drops_excluded(tmp_path: Path) -> None:
    kernel = tmp_path / "lib" / "modules" / "6.1.0-test" / "kernel"
    files = {
        "drivers/net/ethernet/intel/e1000e/e1000e.ko": True,
        "drivers/net/wireless/intel/iwlwifi/iwlwifi.ko": False,
        "sound/core/snd.ko": False,
        "fs/xfs/xfs.ko.xz": True,
    }
    for name in files:
        path = kernel / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    script = tmp_path / "trim.sh"
    script.write_text(
        peers.trim_script(["drivers/net/*", "fs/*"], ["drivers/net/wireless/*"]).replace(
            'chroot "$root" /sbin/depmod', ": depmod"
        )
    )
    subprocess.run(["sh", str(script), str(tmp_path)], check=True, timeout=30)
    for name, kept in files.items():
        assert (kernel / name).exists() == kept, name
    assert not (kernel / "sound").exists()  # emptied directories go too


def test_parse_ipxe_one_and_several_initrds() -> None:
    script = (
        "#!ipxe\n"
        "# plasmaboot: control-plane\n"
        "kernel ${boot-server}/control-plane/bzImage initrd=initrd"
        " console=ttyS0,115200 loglevel=4\n"
        "initrd --name initrd ${boot-server}/control-plane/initrd\n"
        "boot\n"
    )
    assert peers.parse_ipxe(script) == ("bzImage", ["initrd"], "console=ttyS0,115200 loglevel=4")
    layered = (
        "#!ipxe\nkernel ${base}/bzImage quiet\n"
        "initrd --name=packages ${base}/packages.cpio\ninitrd ${base}/profile.cpio\nboot\n"
    )
    assert peers.parse_ipxe(layered) == ("bzImage", ["packages.cpio", "profile.cpio"], "quiet")
    with pytest.raises(peers.BenchError):
        peers.parse_ipxe("#!ipxe\nboot\n")


def test_read_packages_skips_comments(tmp_path: Path) -> None:
    listing = tmp_path / "packages.txt"
    listing.write_text("# a comment\nsystemd\n\nopenssh-server  # sshd\n")
    assert peers.read_packages(listing) == ["systemd", "openssh-server"]
    shipped = peers.read_packages(peers.DATA / "packages.txt")
    assert "linux-image-amd64" in shipped and "disko" not in shipped


@pytest.mark.parametrize(
    ("console", "crash"),
    [
        (b"[ 2.716317] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n", "Oops: int3"),
        (
            b"Kernel panic - not syncing: IO-APIC + timer doesn't work!\n",
            "IO-APIC + timer doesn't work",
        ),
        (b"[ 3.1] Oops: general protection fault\n", None),
        (b"Welcome to Debian GNU/Linux 12\n", None),
    ],
)
def test_only_tcgs_own_crashes_are_booted_again(console: bytes, crash: str | None) -> None:
    """A crash of the image's own (any other Oops) counts as a failed boot."""
    assert peers.tcg_crash(console) == crash
