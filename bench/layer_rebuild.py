#!/usr/bin/env python3
"""Layers benchmark (the layers issue's build targets), printed as figures, never asserted.

  1. config-only change (one service port) rebuilt, control-plane: target <= 10 s
  2. no-change rebuild of control-plane, worker and all-in-one together: target <= 1 s
  3. package layers stored for the 3 seed profiles: worker and all-in-one share one

Usage: .venv/bin/python bench/layer_rebuild.py [--runs 3] [--cache DIR] [--jobs 2]
                                              [--debs CACHE/debs]
Runs the real CLI as a subprocess (what users run); medians of --runs. The first build of
the three profiles (cold unless --cache holds their package layers) is not a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILES = ("control-plane", "worker", "all-in-one")
CHANGED = "bench-port"  # control-plane with its iam port changed, once per run


CPU: list[float] = []  # the CPU seconds (user + sys) of each build, in order


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plasmaboot(
    args: list[str], cache: Path, out: Path, profiles_dir: Path | None = None
) -> tuple[float, list[dict[str, object]]]:
    """Run one build; return its wall time and the JSON summary (its CPU time in CPU: on
    a shared machine, wall time includes waiting for the CPU)."""
    command = [sys.executable, "-m", "plasmaboot"]
    if profiles_dir is not None:
        command += ["--profiles-dir", str(profiles_dir)]
    command += ["build", "--backend", "debian", "--output-dir", str(out), "--json", *args]
    env = {**os.environ, "PLASMABOOT_CACHE": str(cache)}
    started, cpu = time.monotonic(), child_cpu()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.monotonic() - started
    CPU.append(child_cpu() - cpu)
    if proc.returncode != 0:
        sys.exit(f"build failed ({' '.join(args)}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def write_changed_profile(directory: Path, port: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{CHANGED}.toml").write_text(
        f'extends = "control-plane"\n\n[services.iam]\nport = {port}\n'
    )


def package_layers(cache: Path) -> int:
    root = cache / "layers" / "packages"
    return len([p for p in root.iterdir() if (p / "layer.json").is_file()]) if root.is_dir() else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, help="a cache to use (and keep); default: fresh")
    parser.add_argument("--jobs", type=int, default=2, help="--jobs of the first build")
    parser.add_argument("--debs", type=Path, help="seed the fresh cache's .deb files from here")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plasmaboot-bench-layers-"))
    cache = options.cache or work / "cache"
    if options.debs is not None:  # downloads are not what this measures
        shutil.copytree(options.debs, cache / "debs", copy_function=os.link, dirs_exist_ok=True)
    out = work / "out"
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ssh = ["--ssh-key", f"{key}.pub"]
    all_three = [arg for p in PROFILES for arg in ("-p", p)]
    try:
        seconds, first = plasmaboot([*all_three, "--jobs", str(options.jobs), *ssh], cache, out)
        print(f"first build of the three (jobs {options.jobs}): {seconds:.1f} s", flush=True)
        for entry in first:
            print(f"  {entry['profile']}: layers {entry['layers']}")
        stored = package_layers(cache)
        config_only: list[float] = []
        for run in range(options.runs):
            profiles_dir = work / f"profiles-{run}"
            write_changed_profile(profiles_dir, 18000 + run)
            seconds, summary = plasmaboot(["-p", CHANGED, *ssh], cache, out, profiles_dir)
            layers = summary[0]["layers"]
            assert isinstance(layers, dict) and layers["10-packages"] == "reused", summary
            config_only.append(seconds)
            print(
                f"config-only rebuild of control-plane, run {run + 1}: {seconds:.2f} s"
                f" ({CPU[-1]:.2f} s CPU)"
            )
        config_cpu = CPU[-options.runs :]
        no_change: list[float] = []
        for run in range(options.runs):
            seconds, summary = plasmaboot([*all_three, *ssh], cache, out)
            assert all(entry["cache_hit"] for entry in summary), summary
            no_change.append(seconds)
            print(
                f"no-change rebuild of the three, run {run + 1}: {seconds:.2f} s"
                f" ({CPU[-1]:.2f} s CPU)",
                flush=True,
            )
        no_change_cpu = CPU[-options.runs :]
        print()
        print(f"{'figure':<56} {'median':>8} {'target':>8}")
        print(
            f"{'config-only rebuild control-plane (s), n=' + str(options.runs):<56} "
            f"{statistics.median(config_only):>8.2f} {'<= 10':>8}"
        )
        print(
            f"{'no-change rebuild of 3 profiles (s), n=' + str(options.runs):<56} "
            f"{statistics.median(no_change):>8.2f} {'<= 1':>8}"
        )
        print(f"{'package layers stored for the 3 seed profiles':<56} {stored:>8} {'2':>8}")
        print(
            f"CPU seconds (user + sys), medians: config-only "
            f"{statistics.median(config_cpu):.2f}, no-change {statistics.median(no_change_cpu):.2f}"
        )
        results = {
            "config_only_seconds": config_only,
            "no_change_seconds": no_change,
            "config_only_cpu_seconds": config_cpu,
            "no_change_cpu_seconds": no_change_cpu,
            "package_layers": stored,
            "cpus": os.cpu_count(),
        }
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
