#!/usr/bin/env python3
"""Build benchmark (the build issue's targets), printed as figures, never asserted.

  1. cold build of control-plane, empty cache (downloads included): target <= 180 s
  2. no-change rebuild of control-plane, worker and all-in-one together: target <= 5 s
  3. initrd sizes: control-plane <= 125 MB, worker <= 175 MB, all-in-one <= 200 MB

Usage: .venv/bin/python bench/build_times.py [--cold-runs 3] [--warm-runs 5] [--keep DIR]
Runs the real CLI as a subprocess (what users run); medians of several runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILES = ("control-plane", "worker", "all-in-one")
TARGET_INITRD_MB = {"control-plane": 125, "worker": 175, "all-in-one": 200}
MB = 1_000_000


def plasmaboot(args: list[str], cache: Path, out: Path) -> tuple[float, list[dict[str, object]]]:
    """Run one build; return its wall time and the JSON summary."""
    command = [
        sys.executable,
        "-m",
        "plasmaboot",
        "build",
        "--backend",
        "debian",
        "--output-dir",
        str(out),
        "--json",
        *args,
    ]
    env = {**os.environ, "PLASMABOOT_CACHE": str(cache)}
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"build failed ({' '.join(args)}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the last artifacts and cache here")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plasmaboot-bench-"))
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ssh = ["--ssh-key", f"{key}.pub"]
    try:
        cold: list[float] = []
        for run in range(options.cold_runs):
            cache, out = work / f"cache-cold-{run}", work / f"out-cold-{run}"
            seconds, _ = plasmaboot(["-p", "control-plane", *ssh], cache, out)
            cold.append(seconds)
            print(f"cold build control-plane, run {run + 1}: {seconds:.1f} s", flush=True)
            if run < options.cold_runs - 1:
                shutil.rmtree(cache)
                shutil.rmtree(out)
        cache, out = (
            work / f"cache-cold-{options.cold_runs - 1}",
            work / f"out-cold-{options.cold_runs - 1}",
        )
        all_three = [arg for p in PROFILES for arg in ("-p", p)]
        first_seconds, first = plasmaboot([*all_three, "--jobs", "2", *ssh], cache, out)
        print(f"first build of worker and all-in-one (debs cached, 2 jobs): {first_seconds:.1f} s")
        warm: list[float] = []
        for run in range(options.warm_runs):
            seconds, summary = plasmaboot([*all_three, *ssh], cache, out)
            assert all(entry["cache_hit"] for entry in summary), summary
            warm.append(seconds)
            print(f"no-change rebuild of all three, run {run + 1}: {seconds:.2f} s", flush=True)
        sizes = {str(e["profile"]): int(str(e["initrd_size"])) for e in first}
        print()
        print(f"{'figure':<52} {'median':>10} {'target':>10}")
        print(
            f"{'cold build control-plane (s), n=' + str(len(cold)):<52} "
            f"{statistics.median(cold):>10.1f} {'<= 180':>10}"
        )
        print(
            f"{'no-change rebuild of 3 profiles (s), n=' + str(len(warm)):<52} "
            f"{statistics.median(warm):>10.2f} {'<= 5':>10}"
        )
        for profile in PROFILES:
            print(
                f"{'initrd ' + profile + ' (MB)':<52} {sizes[profile] / MB:>10.1f} "
                f"{'<= ' + str(TARGET_INITRD_MB[profile]):>10}"
            )
        results = {
            "cold_seconds": cold,
            "warm_seconds": warm,
            "initrd_bytes": sizes,
            "cpus": os.cpu_count(),
        }
        print(json.dumps(results))
        if options.keep:
            options.keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(out, options.keep / "artifacts", symlinks=True, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
