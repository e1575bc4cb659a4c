"""A boot storm on loopback: C machines (200 by default) fetch their script, kernel and
initrd at the same moment, from `plasmaboot serve --inventory` and, in the same run, from
nginx serving the same files (alternating rounds). Every kernel and initrd is hashed as it
arrives and checked against the file. Prints the aggregate throughput (MB/s) and the time to
the last finished machine, medians of the rounds. A figure, not a test.

    .venv/bin/python bench/boot_storm.py [--clients 200] [--initrd-mib 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
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

from serve_vs_nginx import nginx_server  # bench/: run as a script, its folder is on the path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST, sha256_file
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script

LABEL = "worker"
CHUNK = 1 << 20


def make_root(tmp: Path, initrd_mib: int, kernel_mib: int) -> Path:
    source = tmp / "source"
    source.mkdir()
    for name, mib in ((INITRD, initrd_mib), (KERNEL, kernel_mib)):
        with (source / name).open("wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(CHUNK))
    (source / IPXE).write_text(render_netboot_script(LABEL, ["console=ttyS0,115200"]))
    (source / MANIFEST).write_text("{}\n")
    root = tmp / "root"
    publish_atomically(source, root, LABEL, (KERNEL, INITRD, IPXE, MANIFEST))
    return root


def write_inventory(path: Path, clients: int) -> None:
    lines = [f'[defaults]\nprofile = "{LABEL}"\n']
    lines += [f'[machines.m{n}]\nmac = "52:54:00:00:{n >> 8:02x}:{n & 255:02x}"\n'
              for n in range(1, clients + 1)]  # fmt: skip
    path.write_text("\n".join(lines))


@contextmanager
def plasmaboot_server(root: Path, inventory: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "plasmaboot", "serve", "--root", str(root), "--listen",
         "127.0.0.1:0", "--inventory", str(inventory), "--access-log", os.devnull],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/", proc.stderr.readline().decode())
        if match is None:
            sys.exit(f"serve did not start: {proc.stderr.read().decode()}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fetch(base: str, path: str) -> tuple[bytes | str, int]:
    """GET base+path: the text of a script, or the sha256 of a file; and the bytes read."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("GET", path)
    response = connection.getresponse()
    if response.status != 200:
        sys.exit(f"{base}{path}: HTTP {response.status}")
    if path.endswith((KERNEL, INITRD)):
        digest, size = hashlib.sha256(), 0
        while chunk := response.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        connection.close()
        return digest.hexdigest(), size
    text = response.read().decode()
    connection.close()
    return text, len(text)


def one_machine(base: str, number: int, plasmaboot: bool, sums: dict[str, str]) -> int:
    """Script, kernel, initrd as iPXE fetches them; returns the bytes; exits on a mismatch."""
    if plasmaboot:
        script, _ = fetch(base, f"/boot.ipxe?mac=52:54:00:00:{number >> 8:02x}:{number & 255:02x}")
    else:
        script, _ = fetch(base, f"/{LABEL}/{IPXE}")
    urls = re.findall(r"^(?:kernel|initrd --name \S+) (\S+)", str(script), re.MULTILINE)
    total = 0
    for url in urls:
        path = re.sub(r"^(http://[^/]+|\$\{boot-server\})", "", url)
        digest, size = fetch(base, path)
        name = path.rsplit("/", 1)[-1]
        if digest != sums[name]:
            sys.exit(f"machine {number}: {name} from {base} does not match the file")
        total += size
    if len(urls) != 2:
        sys.exit(f"machine {number}: the script named {len(urls)} files: {script!r}")
    return total


def storm(base: str, clients: int, plasmaboot: bool, sums: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        sizes = list(pool.map(lambda n: one_machine(base, n, plasmaboot, sums),
                              range(1, clients + 1)))  # fmt: skip
    elapsed = time.perf_counter() - started
    return sum(sizes) / elapsed / 1e6, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--initrd-mib", type=int, default=64)
    parser.add_argument("--kernel-mib", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plasmaboot-bench-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        root = make_root(tmp, args.initrd_mib, args.kernel_mib)
        sums = {name: sha256_file(root / LABEL / name) for name in (KERNEL, INITRD)}
        write_inventory(tmp / "machines.toml", args.clients)
        results: dict[str, list[tuple[float, float]]] = {"plasmaboot": [], "nginx": []}
        with (
            plasmaboot_server(root, tmp / "machines.toml") as ours,
            nginx_server(root, tmp, 1) as nginx,
        ):
            bases = {"plasmaboot": ours, "nginx": nginx}
            for round_no in range(args.rounds):
                order = list(bases) if round_no % 2 == 0 else list(reversed(bases))
                for server in order:
                    rate, seconds = storm(bases[server], args.clients, server == "plasmaboot", sums)
                    results[server].append((rate, seconds))
                    print(f"round {round_no + 1}: {server:<10} {rate:8.1f} MB/s, last machine "
                          f"done at {seconds:.1f}s", flush=True)  # fmt: skip
    print()
    print(f"{args.clients} machines at once: script + {args.kernel_mib} MiB kernel + "
          f"{args.initrd_mib} MiB initrd each, loopback, {os.cpu_count()} CPUs, nginx 1 worker;"
          " every kernel and initrd sha256 matched")  # fmt: skip
    for server, runs in results.items():
        rates = [rate for rate, _ in runs]
        last = [seconds for _, seconds in runs]
        print(
            f"{server:<11} median {statistics.median(rates):8.1f} MB/s, last machine at "
            f"{statistics.median(last):.1f}s (rounds: {', '.join(f'{r:.0f}' for r in rates)})"
        )
    ratio = statistics.median(r for r, _ in results["plasmaboot"]) / statistics.median(
        r for r, _ in results["nginx"])  # fmt: skip
    print(f"ratio plasmaboot/nginx (median throughput): {ratio:.2f}")


if __name__ == "__main__":
    main()
