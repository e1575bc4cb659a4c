#!/usr/bin/env python3
"""Boot benchmark (the boot-test issue's targets), printed as figures, never asserted.

  - PXE to SSH under TCG on 2 cores: target <= 40 s (median of several boots)
  - the control-plane image reaches SSH on a VM with 1 GiB of RAM

Usage: .venv/bin/python bench/boot_times.py --artifacts DIR --identity KEY [--label control-plane]
       [--boots 3] [--memory 1024]
Runs `plasmaboot boot-test --boots N` (the real PXE -> iPXE -> HTTP -> SSH chain) and prints
the median of each phase over the boots, with the accelerator QEMU used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PHASES = ("pxe_to_kernel", "initrd_download", "kernel_to_ssh", "total_to_ssh")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--label", default="control-plane")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--memory", type=int, default=1024)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plasmaboot-boot-bench-") as work:
        report_path = Path(work) / "report.json"
        command = [
            sys.executable, "-m", "plasmaboot", "boot-test", options.label,
            "--artifacts", str(options.artifacts), "--identity", str(options.identity),
            "--boots", str(options.boots), "--memory", str(options.memory),
            "--report", str(report_path),
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if not report_path.is_file():
            sys.exit(f"boot-test wrote no report:\n{proc.stderr[-3000:]}")
        report = json.loads(report_path.read_text())
    print(
        f"label {options.label}, {options.boots} boots, {options.memory} MiB, "
        f"accelerator {report['accelerator']}, all checks passed: {report['passed']}"
    )
    print(f"{'phase (s)':<20} {'median':>8} {'min':>8} {'max':>8}   per boot")
    for phase in PHASES:
        values = [boot["phases"][phase] for boot in report["boots"] if phase in boot["phases"]]
        if not values:
            continue
        per_boot = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"{phase:<20} {statistics.median(values):>8.1f} {min(values):>8.1f} "
            f"{max(values):>8.1f}   {per_boot}"
        )
    memory = report.get("memory") or {}
    if memory:
        print(f"memory: {json.dumps(memory)}")
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    if failed:
        print(f"failed checks: {', '.join(failed)}")


if __name__ == "__main__":
    main()
