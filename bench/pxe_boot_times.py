#!/usr/bin/env python3
"""BIOS and UEFI power-on -> SSH over the provisioning server's path (the provisioning
issue's figure), printed, never asserted.

Usage (as root: each boot makes a network namespace):
  .venv/bin/python bench/pxe_boot_times.py [--boots 3] [--memory 1024]
      [--artifacts DIR --label LABEL --identity KEY [--profiles-dir DIR]]

Without --artifacts it builds the control-plane image with a fresh key into a temporary
directory (`plasmaboot build -p control-plane --ssh-key KEY.pub`, Debian backend;
PLASMABOOT_CACHE is honoured). Each boot is one `plasmaboot boot-test --network netns
--firmware bios|uefi --boots 1`: pxe-server (dnsmasq's DHCP and TFTP, serve's HTTP) in the
run's own namespace, every check. The firmwares alternate (bios uefi bios uefi ...), so both
share the machine's noise. Prints, per firmware, the median (min-max) of power-on -> SSH
(`total_to_ssh`) and of each phase boot-test saw. A boot that fails prints why; its report
and logs are kept (the directory is named at the end).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FIRMWARES = ("bios", "uefi")
PHASES = (
    "power_on_to_lease",
    "lease_to_script",
    "pxe_to_kernel",
    "initrd_download",
    "kernel_to_network",
    "network_to_ssh",
    "kernel_to_ssh",
    "total_to_ssh",
)
BUILD_TIMEOUT = 3600
BOOT_RUN_TIMEOUT = 1800  # one boot-test: its own --timeout bounds power-on to SSH


def plasmaboot(profiles_dirs: list[Path], *args: str) -> list[str]:
    dirs = [arg for d in profiles_dirs for arg in ("--profiles-dir", str(d))]
    return [sys.executable, "-m", "plasmaboot", *dirs, *args]


def build_image(work: Path) -> tuple[Path, str, Path]:
    """The control-plane image with a key of its own: (artifacts, label, private key)."""
    key = work / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "plasmaboot-bench", "-f", str(key)],
        check=True,
    )
    artifacts = work / "artifacts"
    print("building control-plane (Debian backend) ...", flush=True)
    argv = plasmaboot(
        [], "build", "-p", "control-plane", "--backend", "debian",
        "--ssh-key", str(key.with_suffix(".pub")), "--output-dir", str(artifacts),
    )  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        sys.exit(f"the build failed:\n{proc.stderr[-3000:]}")
    return artifacts, "control-plane", key


def boot_once(
    firmware: str, options: argparse.Namespace, artifacts: Path, label: str, identity: Path,
    work: Path,
) -> dict[str, Any]:  # fmt: skip
    """One boot-test; its report and logs stay in `work` (a directory of its own)."""
    report_path = work / "report.json"
    argv = plasmaboot(
        options.profiles_dir, "boot-test", label, "--artifacts", str(artifacts),
        "--identity", str(identity), "--network", "netns", "--firmware", firmware,
        "--memory", str(options.memory), "--report", str(report_path),
    )  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BOOT_RUN_TIMEOUT)
    if not report_path.is_file():
        sys.exit(f"boot-test wrote no report ({firmware}):\n{proc.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def print_figures(label: str, reports: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n{label}: power-on -> SSH through pxe-server in a network namespace")
    for firmware, runs in reports.items():
        boots = [boot for report in runs for boot in report["boots"]]
        totals = [b["phases"]["total_to_ssh"] for b in boots if "total_to_ssh" in b["phases"]]
        accelerators = sorted({f"{r['accelerator']} -cpu {r['cpu']}" for r in runs})
        passed = sum(report["ok"] for report in runs)
        shown = spread(totals) if totals else "no boot reached SSH"
        print(
            f"  {firmware.upper():<5} median {shown}, {len(totals)} of {len(runs)} boots; "
            f"all checks passed in {passed}; {', '.join(accelerators)}"
        )
        for phase in PHASES:
            values = [b["phases"][phase] for b in boots if phase in b["phases"]]
            if values:
                print(f"        {phase:<18} {spread(values)}")
        failed = sorted({c["name"] for r in runs for c in r["checks"] if c["result"] == "fail"})
        if failed:
            print(f"        failed checks: {', '.join(failed)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, help="a built artifacts directory")
    parser.add_argument("--label", help="the set to boot (with --artifacts)")
    parser.add_argument("--identity", type=Path, help="its SSH private key (with --artifacts)")
    parser.add_argument(
        "--profiles-dir", type=Path, action="append", default=[],
        help="where the set's profile is, if not built in (repeat)",
    )  # fmt: skip
    parser.add_argument("--boots", type=int, default=3, help="boots per firmware")
    parser.add_argument("--memory", type=int, default=1024, help="guest memory in MiB")
    options = parser.parse_args()
    given = [options.artifacts, options.label, options.identity]
    if any(given) and not all(given):
        parser.error("--artifacts, --label and --identity go together")
    reports: dict[str, list[dict[str, Any]]] = {firmware: [] for firmware in FIRMWARES}
    work = Path(tempfile.mkdtemp(prefix="plasmaboot-pxe-bench-"))
    if options.artifacts is None:
        artifacts, label, identity = build_image(work)
    else:
        artifacts, label, identity = options.artifacts, options.label, options.identity
    for round_index in range(options.boots):
        for firmware in FIRMWARES:
            run_dir = work / f"round{round_index + 1}-{firmware}"
            run_dir.mkdir()
            report = boot_once(firmware, options, artifacts, label, identity, run_dir)
            reports[firmware].append(report)
            total = [b["phases"].get("total_to_ssh") for b in report["boots"]]
            print(f"round {round_index + 1}: {firmware}: power-on to SSH {total}, "
                  f"checks passed: {report['ok']}", flush=True)  # fmt: skip
            for check in report["checks"]:
                if check["result"] == "fail":
                    print(f"  failed: {check['name']}: {check['detail']}", flush=True)
    print_figures(label, reports)
    if all(report["ok"] for runs in reports.values() for report in runs):
        shutil.rmtree(work)
    else:
        print(f"\nreports and logs of every boot: {work}")


if __name__ == "__main__":
    main()
