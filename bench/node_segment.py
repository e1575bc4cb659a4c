"""Answer time of a machine's per-node segment (`/node/<machine>.cpio?token=...`): what a
booting machine waits for after the set's initrd.

One run: an inventory of N machines (500 by default, each with its own key file and
labels, no static address, so a script fetched from loopback carries a token) and a
published set; `plasmaboot serve --inventory` runs as a subprocess, as users run it. For
each machine: its script is fetched (not timed; it issues the token), then its segment
(timed): the first time it is made (uncached), then again with a fresh token (the cached
segment plus the token). Every answer is checked (its host name and its token are in it).
Prints p50 and p99 in ms for both. A figure, not a test. Target (issue 12): p99 <= 50 ms
first, <= 5 ms cached.

    .venv/bin/python bench/node_segment.py [--machines 500]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inventory_latency import PROFILE, mac_of, percentile, publish_set, serve


def write_inventory(path: Path, machines: int) -> None:
    keys = path.parent / "keys"
    keys.mkdir()
    lines = [f'[defaults]\nprofile = "{PROFILE}"\nlabels = {{ site = "bench" }}\n']
    for index in range(1, machines + 1):
        key = keys / f"n{index}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"n{index}", "-f", str(key)],
            check=True,
        )
        key.unlink()  # the private half is not needed (and never served)
        lines.append(
            f'[machines.n{index}]\nmac = "{mac_of(index)}"\n'
            f'ssh_keys = ["keys/n{index}.pub"]\nlabels = {{ rack = "r{index % 40}" }}\n'
        )
    path.write_text("\n".join(lines))


def get(connection: http.client.HTTPConnection, path: str) -> bytes:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"{path}: HTTP {response.status}: {body[:200]!r}")
    return body


def segment_time(host: str, port: int, index: int) -> float:
    """Fetch the machine's script (its token), then time its segment; check the answer."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        script = get(connection, f"/boot.ipxe?mac={mac_of(index)}").decode()
        url = script.splitlines()[-2].split()[-1]
        path = f"{urlsplit(url).path}?{urlsplit(url).query}"
        started = time.perf_counter()
        data = get(connection, path)
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    token = urlsplit(url).query.removeprefix("token=")
    if f"n{index}\n".encode() not in data or token.encode() not in data:
        sys.exit(f"wrong segment for n{index}")
    return elapsed


def report(title: str, times: list[float]) -> None:
    ms = [t * 1000 for t in times]
    print(
        f"{title}: {len(ms)} requests: p50 {percentile(ms, 0.5):.2f} ms, "
        f"p99 {percentile(ms, 0.99):.2f} ms, mean {statistics.mean(ms):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plasmaboot-bench-") as name:
        tmp = Path(name)
        inventory, root = tmp / "machines.toml", tmp / "artifacts"
        write_inventory(inventory, args.machines)
        publish_set(root, tmp)
        with serve(root, inventory, tmp) as (host, port):
            print(f"/node/<machine>.cpio?token=... with {args.machines} machines, one client")
            machines = range(1, args.machines + 1)
            report("first (uncached)", [segment_time(host, port, i) for i in machines])
            report("cached          ", [segment_time(host, port, i) for i in machines])


if __name__ == "__main__":
    main()
