#!/usr/bin/env python3
"""Install to disk under TCG (the install issue's figures), printed, never asserted:

- the install step alone (`plasmaboot install` from its start to the reboot: inspect, disks,
  system copy, configure, GRUB, services, secrets), and
- power-on of the installed machine -> its enabled services active (PXE answered with the
  local disk, GRUB, the installed system, SSH with its pinned key, `systemctl is-active`).

Usage (as root: each run makes a network namespace):
  .venv/bin/python bench/install_times.py --artifacts DIR --label LABEL --identity KEY \
      --profiles-dir DIR --debs DIR [--runs 3] [--service iam]

The image must be a Debian set whose profile has the service (the test suite's CI image
does: `PLASMABOOT_TEST_CACHE=... pytest -m slow tests/integration/test_install.py` builds
one). Each run PXE-boots a fresh machine with a blank 3G qcow2 disk through pxe-server,
installs it, powers it on again and waits for its services. Prints the median (min-max) of
each figure, of each install step and of the parts of the slow steps. `--same-machine`
boots one machine and runs the install step alone (`--no-reboot`, then `--wipe`) `--runs`
times on it. `--node-initramfs` installs from a copy of the set without its prebuilt
`installed-initrd` (the initramfs is then made on the node, as before it existed: the A/B
of that lever). With `--same-machine`, what one SSH connection costs is measured first: a
fresh connection per command against commands on one shared connection (ControlMaster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plasmaboot.boot.provisioning import (
    INVENTORY,
    plan_provisioning,
    provisioning_network,
    write_known_hosts,
)
from plasmaboot.boot.qemu import Accelerator, PxeVm, VmConfig
from plasmaboot.boot.ssh import Ssh, wait_for_ssh
from plasmaboot.install.remote import SshRemote
from plasmaboot.inventory.state import read_host_keys
from plasmaboot.log import Log

HOSTNAME = "bench1"
HOLDERS = """\
grep -E 'vda|plasmaboot' /proc/self/mountinfo || true
for f in /proc/[0-9]*/mountinfo; do
    grep -qE ' /dev/vda| /mnt/plasmaboot' "$f" 2>/dev/null || continue
    p=${f%/mountinfo}; echo "mount namespace of ${p#/proc/} ($(cat $p/comm)) holds:"
    grep -E ' /dev/vda| /mnt/plasmaboot' "$f" | head -3
done
ls -l /sys/block/vda/vda*/holders 2>/dev/null || true
find /proc/[0-9]*/fd /proc/[0-9]*/cwd /proc/[0-9]*/root -maxdepth 1 \\
    -lname '/dev/vda*' -o -lname '/mnt/plasmaboot*' 2>/dev/null | head || true
"""
BOOT_TIMEOUT = 600
INSTALL_TIMEOUT = 1800


def wait_for_report(inventory: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while read_host_keys(inventory, HOSTNAME) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{HOSTNAME} reported no host keys in {timeout} s")
        time.sleep(1)


def one_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    plan = plan_provisioning(
        args.label, args.label, None, HOSTNAME, "10.79.0.0/24", (args.profiles_dir,)
    )
    work.mkdir(parents=True)
    disk = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "3G"], check=True)
    with (
        Log(work / "bench.log", subject="install") as log,
        provisioning_network(plan, args.artifacts, work, log) as net,
    ):
        inventory = work / INVENTORY
        inventory.write_text(inventory.read_text() + f'services = ["{args.service}"]\n')

        def config(name: str) -> VmConfig:
            return VmConfig(work / name, args.label, net.guest, Accelerator.TCG, 1024, disk=disk)

        argv = net.netns.argv([
            sys.executable, "-m", "plasmaboot", "--profiles-dir", str(args.profiles_dir),
            "install", HOSTNAME, "--inventory", str(inventory), "--identity", str(args.identity),
            "--artifacts", str(args.install_artifacts), "--debs", str(args.debs),
            "--boot-timeout", str(BOOT_TIMEOUT), "--json",
        ])  # fmt: skip
        with PxeVm(config("ram"), access_log=net.server_log, log=log, netns=net.netns) as vm:
            ssh = Ssh(22, args.identity, log=log, host=net.address, netns=net.netns)
            wait_for_ssh(vm, ssh, BOOT_TIMEOUT)
            wait_for_report(inventory)  # install trusts the host keys the node reported
            started = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = started + INSTALL_TIMEOUT
            while vm.running() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            install_seconds = time.monotonic() - started
        powered_on = time.monotonic()
        with PxeVm(config("disk"), access_log=net.server_log, log=log, netns=net.netns):
            out, err = proc.communicate(timeout=BOOT_TIMEOUT + 300)
            to_services = time.monotonic() - powered_on
    if proc.returncode != 0:
        raise RuntimeError(f"install failed ({work}): {out[-2000:]} {err[-2000:]}")
    report = json.loads(out)
    return {
        "load": load(),
        "install": install_seconds,
        "power_on_to_services": to_services,
        **report["steps"],
        **report.get("parts", {}),
    }


def same_machine_runs(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The install step alone, `--runs` times on one machine booted once: `install
    --no-reboot` (then `--wipe`: the disk holds the previous run's partitions). Quicker than
    a fresh machine per run, and the same step (plus a wipe) as one."""
    plan = plan_provisioning(
        args.label, args.label, None, HOSTNAME, "10.79.0.0/24", (args.profiles_dir,)
    )
    work.mkdir(parents=True)
    disk = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "3G"], check=True)
    runs: list[dict[str, Any]] = []
    with (
        Log(work / "bench.log", subject="install") as log,
        provisioning_network(plan, args.artifacts, work, log) as net,
    ):
        inventory = work / INVENTORY
        inventory.write_text(inventory.read_text() + f'services = ["{args.service}"]\n')
        config = VmConfig(work / "ram", args.label, net.guest, Accelerator.TCG, 1024, disk=disk)
        with PxeVm(config, access_log=net.server_log, log=log, netns=net.netns) as vm:
            ssh = Ssh(22, args.identity, log=log, host=net.address, netns=net.netns)
            wait_for_ssh(vm, ssh, BOOT_TIMEOUT)
            wait_for_report(inventory)
            # the RAM system's reported keys, kept: each install records the installed
            # system's keys in their place
            record = read_host_keys(inventory, HOSTNAME)
            assert record is not None
            known = write_known_hosts(work / "ram_known_hosts", net, record)
            remote = SshRemote(net.address, args.identity, known, log=log, netns=net.netns)
            costs = ssh_costs(remote)
            print(", ".join(f"{k} {v:.2f}s" for k, v in costs.items()), flush=True)
            for index in range(args.runs):
                argv = net.netns.argv([
                    sys.executable, "-m", "plasmaboot", "--profiles-dir",
                    str(args.profiles_dir), "install", HOSTNAME, "--inventory", str(inventory),
                    "--identity", str(args.identity), "--artifacts", str(args.install_artifacts),
                    "--debs", str(args.debs), "--known-hosts", str(known), "--no-reboot",
                    "--json",
                    *(["--wipe"] if index else []),
                ])  # fmt: skip
                if index:  # what still holds the disk after the previous run, if anything
                    print(remote.sh(HOLDERS), flush=True)
                started = time.monotonic()
                proc = subprocess.run(
                    argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
                )
                seconds = time.monotonic() - started
                if proc.returncode != 0:
                    raise RuntimeError(f"install failed ({work}): {proc.stdout[-2000:]}")
                report = json.loads(proc.stdout)
                result = {
                    "load": load(),
                    "install": seconds,
                    **report["steps"],
                    **report.get("parts", {}),
                }
                print(
                    f"run {index + 1}: " + shown(result),
                    flush=True,
                )
                runs.append({**result, **costs})
    return runs


def without_prebuilt_initrd(artifacts: Path, label: str, work: Path) -> Path:
    """A copy (hard links) of the set `label` names, without its installed-initrd."""
    source = (artifacts / label).resolve()
    copy = work / "artifacts-node-initramfs" / label
    copy.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != "installed-initrd":
            os.link(path, copy / path.name)
    return copy.parent


def ssh_costs(remote: SshRemote, count: int = 5) -> dict[str, float]:
    """Seconds per `true` over SSH: a new connection each time, then on a shared one."""
    started = time.monotonic()
    for _ in range(count):
        remote.sh("true")
    fresh = (time.monotonic() - started) / count
    with remote.shared_connection():
        remote.sh("true")  # opens it
        started = time.monotonic()
        for _ in range(count):
            remote.sh("true")
        shared = (time.monotonic() - started) / count
    return {"ssh: new connection": fresh, "ssh: shared connection": shared}


def load() -> float:
    """The machine's 1-minute load average (quoted beside every figure)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def shown(result: dict[str, Any]) -> str:
    """One run's figures: seconds, but the load average."""
    return ", ".join(f"{k} {v:.1f}" + ("" if k == "load" else "s") for k, v in result.items())


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--profiles-dir", type=Path, required=True)
    parser.add_argument("--debs", type=Path, required=True)
    parser.add_argument("--service", default="iam")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--node-initramfs",
        action="store_true",
        help="install from a copy of the set without its installed-initrd (made on the node)",
    )
    parser.add_argument(
        "--same-machine",
        action="store_true",
        help="the install step alone, every run on one machine booted once (--no-reboot)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plasmaboot-install-bench-"))
    if args.node_initramfs:
        args.install_artifacts = without_prebuilt_initrd(args.artifacts, args.label, work)
    else:
        args.install_artifacts = args.artifacts
    runs = same_machine_runs(args, work / "machine") if args.same_machine else []
    for index in range(0 if args.same_machine else args.runs):
        result = one_run(args, work / f"run{index}")
        print(f"run {index + 1}: " + shown(result))
        runs.append(result)
    print(f"median of {len(runs)} (min-max), under TCG:")
    for key in runs[0]:
        text = summary([r.get(key, 0.0) for r in runs])
        print(f"  {key:<26} {text.replace(' s (', ' (') if key == 'load' else text}")
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
