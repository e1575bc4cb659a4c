"""Latency of `/boot.ipxe?mac=...` with a large inventory: the answer a machine waits for
before anything else happens.

One run: an inventory of N machines (1,000 by default, every one with a static address and
labels) and a published set; `plasmaboot serve --inventory` runs as a subprocess, as users
run it. Each request asks for a random known MAC (and every tenth for an unknown one), one
at a time and then from C concurrent clients; every answer is checked (a known MAC gets its
host name on the kernel line, an unknown one a refusal). Prints p50 and p99 in ms. A figure,
not a test.

    .venv/bin/python bench/inventory_latency.py [--machines 1000] [--requests 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script

PROFILE = "worker"


def mac_of(index: int) -> str:
    return "52:54:" + ":".join(f"{index >> shift & 255:02x}" for shift in (24, 16, 8, 0))


def write_inventory(path: Path, machines: int) -> None:
    lines = [f'[defaults]\nprofile = "{PROFILE}"\nlabels = {{ site = "bench" }}\n']
    for index in range(1, machines + 1):
        address = ipaddress.IPv4Address(0x0A000000 + index)  # 10.0.0.1, 10.0.0.2, ...
        lines.append(
            f'[machines.n{index}]\nmac = "{mac_of(index)}"\nipv4 = "{address}/8"\n'
            f'labels = {{ rack = "r{index % 40}" }}\n'
        )
    path.write_text("\n".join(lines))


def publish_set(root: Path, tmp: Path) -> None:
    source = tmp / "source"
    source.mkdir()
    for name in (KERNEL, INITRD, MANIFEST):
        (source / name).write_bytes(name.encode())
    (source / IPXE).write_text(render_netboot_script(PROFILE, ["console=ttyS0,115200"]))
    publish_atomically(source, root, PROFILE, (KERNEL, INITRD, IPXE, MANIFEST))


@contextmanager
def serve(root: Path, inventory: Path, tmp: Path) -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "plasmaboot", "serve", "--root", str(root), "--listen",
         "127.0.0.1:0", "--inventory", str(inventory), "--access-log", str(tmp / "access.log")],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        match = re.search(r"at http://(127\.0\.0\.1):(\d+)/", line)
        if match is None:
            sys.exit(f"serve did not start: {line}{proc.stderr.read().decode()}")
        yield match.group(1), int(match.group(2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def one_request(host: str, port: int, index: int | None) -> float:
    mac = mac_of(index) if index is not None else "52:54:ff:ff:ff:ff"
    connection = http.client.HTTPConnection(host, port, timeout=30)
    started = time.perf_counter()
    connection.request("GET", f"/boot.ipxe?mac={mac}")
    body = connection.getresponse().read().decode()
    elapsed = time.perf_counter() - started
    connection.close()
    wanted = f"systemd.hostname=n{index} " if index is not None else "not in the inventory"
    if wanted not in body:
        sys.exit(f"wrong answer for {mac}: {body!r}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(host: str, port: int, machines: int, requests: int, clients: int) -> list[float]:
    rng = random.Random(7)
    picks = [None if n % 10 == 9 else rng.randint(1, machines) for n in range(requests)]
    if clients == 1:
        return [one_request(host, port, index) for index in picks]
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda index: one_request(host, port, index), picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plasmaboot-bench-") as name:
        tmp = Path(name)
        inventory, root = tmp / "machines.toml", tmp / "artifacts"
        write_inventory(inventory, args.machines)
        publish_set(root, tmp)
        with serve(root, inventory, tmp) as (host, port):
            run(host, port, args.machines, 50, 1)  # warm-up
            print(f"/boot.ipxe?mac=... with {args.machines} machines in the inventory "
                  f"(10% unknown MACs), every answer checked")  # fmt: skip
            for clients in (1, args.clients):
                times = run(host, port, args.machines, args.requests, clients)
                ms = [t * 1000 for t in times]
                print(
                    f"{clients:>3} client(s), {len(ms)} requests: p50 {percentile(ms, 0.5):.2f} ms,"
                    f" p99 {percentile(ms, 0.99):.2f} ms, mean {statistics.mean(ms):.2f} ms"
                )


if __name__ == "__main__":
    main()
