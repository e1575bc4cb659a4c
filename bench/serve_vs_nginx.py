"""Throughput of `plasmaboot serve` against nginx for the file nodes download most: the initrd.

One run: a temp published set with a random initrd (100 MiB by default) is served by the
`plasmaboot serve` command (a subprocess, as users run it) and by nginx (sendfile on,
access_log off, same root), both on loopback. Each round starts N concurrent curl downloads
of /<label>/initrd from one server and times them until the last finishes; the rounds
alternate between the servers. Every download lands in tmpfs and its sha256 is checked
against the file's after the timed part. Prints the median aggregate throughput of each and
the ratio plasmaboot/nginx. A figure for comparing, not a test: nothing here asserts speed.

    .venv/bin/python bench/serve_vs_nginx.py [--size-mib 100] [--clients 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST, sha256_file
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.run import require_tool

LABEL = "bench"
NGINX_CONF = """\
daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def make_root(tmp: Path, size_mib: int) -> tuple[Path, str]:
    """A published set with a random initrd; returns the root and the initrd's sha256."""
    source = tmp / "source"
    source.mkdir()
    with (source / INITRD).open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(1 << 20))
    (source / KERNEL).write_bytes(os.urandom(1 << 16))
    (source / IPXE).write_text(
        f"#!ipxe\nkernel ${{boot-server}}/{LABEL}/{KERNEL}\n"
        f"initrd ${{boot-server}}/{LABEL}/{INITRD}\nboot\n"
    )
    (source / MANIFEST).write_text("{}\n")
    root = tmp / "root"
    publish_atomically(source, root, LABEL, (KERNEL, INITRD, IPXE, MANIFEST))
    return root, sha256_file(source / INITRD)


@contextmanager
def plasmaboot_server(root: Path, tmp: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plasmaboot",
            "serve",
            "--root",
            str(root),
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            str(tmp / "plasmaboot-access.log"),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        if match is None:
            sys.exit(f"plasmaboot serve did not start: {line}{proc.stderr.read().decode()}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def nginx_server(root: Path, tmp: Path, workers: int) -> Iterator[str]:
    nginx = require_tool("nginx")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, tmp=tmp, port=port, root=root))
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def download_round(url: str, clients: int, size: int, sha256: str, spool: Path) -> float:
    """Start `clients` curl downloads at once; return aggregate MB/s; check every sha256."""
    curl = require_tool("curl")
    targets = [spool / f"download-{n}" for n in range(clients)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([curl, "--silent", "--show-error", "--fail", "-o", str(t), url])
        for t in targets
    ]
    codes = [proc.wait() for proc in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        sys.exit(f"curl failed for {url}: exit codes {codes}")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        digests = list(pool.map(sha256_file, targets))
    bad = [str(t) for t, digest in zip(targets, digests, strict=True) if digest != sha256]
    for target in targets:
        target.unlink()
    if bad:
        sys.exit(f"{len(bad)} downloads from {url} differ from the file: {bad[:3]}")
    return clients * size / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100, help="initrd size (MiB)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent downloads")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per server")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes")
    args = parser.parse_args()

    spool_parent = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with (
        tempfile.TemporaryDirectory(prefix="plasmaboot-bench-") as tmp_name,
        tempfile.TemporaryDirectory(prefix="plasmaboot-bench-", dir=spool_parent) as spool,
    ):
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        root, sha256 = make_root(tmp, args.size_mib)
        size = (root / LABEL / INITRD).stat().st_size
        results: dict[str, list[float]] = {"plasmaboot": [], "nginx": []}
        with (
            plasmaboot_server(root, tmp) as plasmaboot_url,
            nginx_server(root, tmp, args.nginx_workers) as nginx_url,
        ):
            urls = {"plasmaboot": plasmaboot_url, "nginx": nginx_url}
            for base in urls.values():  # warm-up: page cache, connections
                download_round(f"{base}/{LABEL}/{INITRD}", 2, size, sha256, Path(spool))
            for round_no in range(args.rounds):
                order = list(urls) if round_no % 2 == 0 else list(reversed(urls))
                for name in order:
                    url = f"{urls[name]}/{LABEL}/{INITRD}"
                    rate = download_round(url, args.clients, size, sha256, Path(spool))
                    results[name].append(rate)
                    print(f"round {round_no + 1}: {name:<10} {rate:9.1f} MB/s", flush=True)
        print_table(args, results)


def print_table(args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    cpus = os.cpu_count()
    print()
    print(
        f"{args.clients} concurrent downloads of a {args.size_mib} MiB initrd, "
        f"{args.rounds} rounds each, loopback, {cpus} CPUs, nginx workers: {args.nginx_workers}"
    )
    print("every download's sha256 matched the file")
    print(f"{'server':<12}{'median MB/s':>14}{'min':>10}{'max':>10}")
    for name, rates in results.items():
        print(f"{name:<12}{statistics.median(rates):>14.1f}{min(rates):>10.1f}{max(rates):>10.1f}")
    ratio = statistics.median(results["plasmaboot"]) / statistics.median(results["nginx"])
    print(f"ratio plasmaboot/nginx (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
