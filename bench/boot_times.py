#!/usr/bin/env python3
"""Boot benchmark (the boot-test issue's targets), printed as figures, never asserted.

  - PXE to SSH under TCG on 2 cores: target <= 40 s (median of several boots)
  - the control-plane image reaches SSH on a VM with 1 GiB of RAM

Usage: .venv/bin/python bench/boot_times.py --artifacts DIR [--artifacts DIR2 ...]
       --identity KEY [--label control-plane] [--boots 3] [--memory 1024 [--memory 384 ...]]
       [--cpu MODEL [--cpu MODEL2 ...]]

Each boot is one `plasmaboot boot-test --boots 1` (the real PXE -> iPXE -> HTTP -> SSH chain,
every check). With several --artifacts the boots alternate between them (A B A B ...), so
a before/after comparison shares the same machine noise; the medians are printed side by
side. Several --cpu compare QEMU CPU models the same way (every artifacts x every model);
without --cpu, boot-test's default model is used. Several --memory do the same for guest
sizes (the smallest RAM that reaches SSH with every check passing: issue #16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from plasmaboot.boot.qemu import require_cpu_model
from plasmaboot.errors import UserError

PHASES = (
    "pxe_to_kernel",
    "initrd_download",
    "kernel_to_network",
    "network_to_ssh",
    "kernel_to_ssh",
    "total_to_ssh",
)


# artifacts directory, QEMU CPU model (None: default), guest MiB
Variant = tuple[Path, str | None, int]


def variant_name(variant: Variant) -> str:
    artifacts, cpu, memory = variant
    return f"{artifacts} (cpu {cpu or 'default'}, {memory} MiB)"


def boot_once(variant: Variant, options: argparse.Namespace, work: Path) -> dict[str, Any]:
    artifacts, cpu, memory = variant
    report_path = work / "report.json"
    report_path.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "plasmaboot", "boot-test", options.label,
        "--artifacts", str(artifacts), "--identity", str(options.identity),
        "--memory", str(memory), "--report", str(report_path),
        *(["--cpu", cpu] if cpu else []),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if not report_path.is_file():
        sys.exit(f"boot-test wrote no report for {variant_name(variant)}:\n{proc.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report


def print_table(name: str, reports: list[dict[str, Any]]) -> None:
    boots = [boot for report in reports for boot in report["boots"]]
    accelerators = sorted({f"{r['accelerator']} -cpu {r['cpu']}" for r in reports})
    passed = all(report["ok"] for report in reports)
    print(f"\n{name}: {len(boots)} boots, {', '.join(accelerators)}, "
          f"all checks passed: {passed}")  # fmt: skip
    print(f"{'phase (s)':<20} {'median':>8} {'min':>8} {'max':>8}   per boot")
    for phase in PHASES:
        values = [boot["phases"][phase] for boot in boots if phase in boot["phases"]]
        if not values:
            continue
        per_boot = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"{phase:<20} {statistics.median(values):>8.1f} {min(values):>8.1f} "
            f"{max(values):>8.1f}   {per_boot}"
        )
    memory = reports[-1].get("memory") or {}
    if memory:
        print(f"memory (last boot): {json.dumps(memory)}")
    failed = sorted({c["name"] for r in reports for c in r["checks"] if c["result"] == "fail"})
    if failed:
        print(f"failed checks: {', '.join(failed)}")
    for report in reports:  # the logs go with the temporary directory: say what was seen
        for check in report["checks"]:
            if check["result"] == "fail":
                print(f"  {check['name']}: {check['detail'][-1500:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, action="append", required=True)
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--label", default="control-plane")
    parser.add_argument("--boots", type=int, default=3, help="boots per variant (artifacts x cpu)")
    parser.add_argument("--memory", type=int, action="append", help="guest MiB (repeat)")
    parser.add_argument("--cpu", action="append", help="QEMU CPU model (repeat to compare)")
    options = parser.parse_args()
    cpus = list(dict.fromkeys(options.cpu or [None]))  # a model named twice is one variant
    try:  # before any boot, not after the first variants ran
        for cpu in cpus:
            if cpu is not None:
                require_cpu_model(cpu)
    except UserError as exc:
        sys.exit(f"error: {exc.message} ({exc.hint})")
    artifacts = list(dict.fromkeys(options.artifacts))
    memories = list(dict.fromkeys(options.memory or [1024]))
    variants: list[Variant] = [(a, cpu, m) for a in artifacts for cpu in cpus for m in memories]
    reports: dict[Variant, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="plasmaboot-boot-bench-") as work:
        for round_index in range(options.boots):
            for variant in variants:
                report = boot_once(variant, options, Path(work))
                reports[variant].append(report)
                total = [b["phases"].get("total_to_ssh") for b in report["boots"]]
                print(f"round {round_index + 1}: {variant_name(variant)}: PXE to SSH {total}",
                      flush=True)  # fmt: skip
    print(f"\nlabel {options.label}")
    for variant, runs in reports.items():
        print_table(variant_name(variant), runs)


if __name__ == "__main__":
    main()
