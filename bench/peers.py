#!/usr/bin/env python3
"""Peer benchmark (issue #16): plasmaboot side by side with mkosi 14 and live-build.

Per tool, printed as figures (medians of --runs), never asserted:

  cold       cold build, empty caches (downloads from deb.debian.org included)
  nochange   the same build again, nothing changed
  config     a config-only rebuild (one service port changed)
  size       kernel + initrd (+ live-build's squashfs, fetched at boot) in bytes
  boot       QEMU start -> `ssh ... true` succeeds, TCG, direct kernel boot, 1024 MiB
  ram        the smallest guest RAM (of --ram-steps) that reaches SSH (a bisection)

Usage (as root, after `make bench-deps`; the machine is shared: one tool or one figure at a
time is fine, runs alternate between the tools):
  .venv/bin/python bench/peers.py [--runs 3] [--tools plasmaboot,mkosi,live-build]
      [--figures cold,nochange,config,size,boot,ram] [--work DIR] [--reuse] [--json FILE]

Every tool builds the same package list (bench/peers/packages.txt: control-plane's Debian
packages) from the same mirror, with the same kernel-module trimming (profiles/base.toml's
globs, applied by bench/peers/trim-modules.sh inside each peer's build), and one SSH key.
plasmaboot runs through its CLI (`.venv/bin/plasmaboot build`), so the figures are those of
the checkout it runs in. Every subprocess has a timeout; nothing here can hang for ever.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "peers"
PLASMABOOT = REPO / ".venv" / "bin" / "plasmaboot"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
RELEASE = "bookworm"
TOOLS = ("plasmaboot", "mkosi", "live-build")
FIGURES = ("cold", "nochange", "config", "size", "boot", "ram")
RAM_STEPS = (256, 384, 512, 768, 1024)
BASE_PORT = 8080  # control-plane's iam port; the config-only rebuild changes it
BUILD_TIMEOUT = 3600.0
BOOT_TIMEOUT = 240.0
HTTP_PORT_GUEST_HOST = "10.0.2.2"  # the host, seen from QEMU's user network
MB = 1_000_000


# --- pure helpers (tested in tests/bench/test_peers.py) -------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(ours: float | None, peer: float | None) -> float | None:
    """plasmaboot / peer: below 1 is plasmaboot ahead (less time, fewer bytes, less RAM)."""
    if ours is None or peer is None or peer == 0:
        return None
    return ours / peer


def format_value(figure: str, value: float | None) -> str:
    if value is None:
        return "-"
    if figure == "size":
        return f"{value / MB:.1f} MB"
    if figure == "ram":
        return f"{value:.0f} MiB"
    if figure == "nochange" and value < 10:
        return f"{value:.2f} s"
    return f"{value:.1f} s"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


FIGURE_NAMES = {
    "cold": "cold build",
    "nochange": "no-change rebuild",
    "config": "config-only rebuild (one port)",
    "size": "kernel + initrd (+ squashfs)",
    "boot": "direct kernel boot -> SSH, TCG, 1 GiB",
    "ram": "smallest RAM reaching SSH",
}


def table(results: dict[str, dict[str, list[float]]], tools: Sequence[str]) -> str:
    """A markdown table: one row per figure, a column per tool (median of its runs) and a
    ratio column per peer (plasmaboot / peer)."""
    peers = [tool for tool in tools if tool != "plasmaboot"]
    head = ["figure", *tools, *(f"ratio vs {peer}" for peer in peers if "plasmaboot" in tools)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for figure in FIGURES:
        values = {tool: median(results.get(tool, {}).get(figure, [])) for tool in tools}
        if all(value is None for value in values.values()):
            continue
        row = [FIGURE_NAMES[figure], *(format_value(figure, values[tool]) for tool in tools)]
        if "plasmaboot" in tools:
            row += [format_ratio(ratio(values["plasmaboot"], values[peer])) for peer in peers]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def bisect_ram(steps: Sequence[int], reaches: Callable[[int], bool]) -> int | None:
    """The smallest of the sorted steps for which reaches(step) is true, assuming that more
    RAM never hurts; None if even the largest fails. Boots O(log n) times."""
    low, high, found = 0, len(steps) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if reaches(steps[middle]):
            found, high = steps[middle], middle - 1
        else:
            low = middle + 1
    return found


def trim_script(include: Sequence[str], exclude: Sequence[str]) -> str:
    """A POSIX shell script that trims ROOT/lib/modules/*/kernel as plasmaboot's Debian
    backend does (keep a module matching an include glob and no exclude glob), then runs
    the image's depmod. `case` patterns match `/` with `*`, as plasmaboot's fnmatch globs do."""

    def patterns(globs: Sequence[str]) -> str:
        return "|".join(globs) if globs else "__none__"

    return f"""#!/bin/sh
# Generated by bench/peers.py from profiles/base.toml's include_modules/exclude_modules.
set -eu
root="${{1:-/}}"
for tree in "$root"/lib/modules/*/; do
  version=$(basename "$tree")
  [ -d "$tree/kernel" ] || continue
  (cd "$tree/kernel" && find . -name '*.ko*' -type f) | while read -r file; do
    rel=${{file#./}}
    keep=no
    case "$rel" in {patterns(include)}) keep=yes ;; esac
    case "$rel" in {patterns(exclude)}) keep=no ;; esac
    [ "$keep" = yes ] || rm -f "$tree/kernel/$rel"
  done
  find "$tree/kernel" -depth -type d -empty -delete
  chroot "$root" /sbin/depmod "$version"  # the image's own kmod
done
"""


def read_packages(path: Path) -> list[str]:
    """One package a line; `#` starts a comment."""
    names = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


# --- processes ------------------------------------------------------------------------------


class BenchError(Exception):
    pass


def run(
    command: Sequence[str],
    log: Path,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> float:
    """Run command with its output appended to log; return its wall seconds. A timeout
    kills its whole process group; a failure raises BenchError naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        started = time.monotonic()
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise BenchError(f"{command[0]} timed out after {timeout:.0f} s (log: {log})") from None
        seconds = time.monotonic() - started
    if code != 0:
        raise BenchError(f"{' '.join(command[:3])} failed with exit {code} (log: {log})")
    return seconds


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[int]:
    """Serve root read-only on 127.0.0.1 (the guest reaches it as 10.0.2.2); yield the port."""
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


# --- the tools ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    cmdline: str
    served: Path | None = None  # a directory served over HTTP during the boot ({http} in cmdline)
    extra: tuple[Path, ...] = ()  # files fetched at boot, counted in the size


@dataclass
class Tool:
    """A tool's build directory, its configuration (written from the shared inputs) and how
    it builds. Subclasses fill in configure, build, boot_files."""

    name: str
    work: Path
    key: Path  # the public key for root's authorized_keys
    packages: list[str]
    trim: str  # the module-trimming script's text
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.work / "build.log"

    def configure(self, port: int) -> None:
        raise NotImplementedError

    def clean(self) -> None:
        """Forget every cache and output: the next build is cold."""
        raise NotImplementedError

    def build(self) -> float:
        raise NotImplementedError

    def boot_files(self) -> BootFiles:
        raise NotImplementedError

    def built(self) -> bool:
        try:
            files = self.boot_files()
        except (BenchError, OSError):
            return False
        return files.kernel.is_file() and files.initrd.is_file()

    def size(self) -> int:
        files = self.boot_files()
        paths = [files.kernel, files.initrd, *files.extra]
        return sum(path.stat().st_size for path in paths)

    def size_parts(self) -> dict[str, int]:
        files = self.boot_files()
        parts = {"kernel": files.kernel.stat().st_size, "initrd": files.initrd.stat().st_size}
        for path in files.extra:
            parts[path.name] = path.stat().st_size
        return parts


class Plasmaboot(Tool):
    """`plasmaboot build` of a profile extending control-plane (its iam port the setting the
    config-only rebuild changes), with its own cache directory."""

    PROFILE = "peers-cp"

    def configure(self, port: int) -> None:
        profiles = self.work / "profiles"
        profiles.mkdir(parents=True, exist_ok=True)
        (profiles / f"{self.PROFILE}.toml").write_text(
            'description = "control-plane, its iam port set by bench/peers.py"\n'
            f'extends = "control-plane"\n\n[services.iam]\nport = {port}\n'
        )

    def clean(self) -> None:
        for name in ("cache", "out"):
            shutil.rmtree(self.work / name, ignore_errors=True)

    def build(self) -> float:
        command = [
            str(PLASMABOOT),
            "--profiles-dir",
            str(self.work / "profiles"),
            "build",
            "--backend",
            "debian",
            "-p",
            self.PROFILE,
            "--mirror",
            MIRROR,
            "--ssh-key",
            str(self.key),
            "--output-dir",
            str(self.work / "out"),
        ]
        env = {**os.environ, "PLASMABOOT_CACHE": str(self.work / "cache")}
        return run(command, self.log, BUILD_TIMEOUT, env=env)

    def boot_files(self) -> BootFiles:
        artifacts = self.work / "out" / self.PROFILE
        kernel, initrds, params = parse_ipxe((artifacts / "netboot.ipxe").read_text())
        if len(initrds) == 1:
            initrd = artifacts / initrds[0]
        else:  # direct kernel boot takes one initrd: the layers, concatenated (cpio allows it)
            initrd = self.work / "initrd.joined"
            with initrd.open("wb") as joined:
                for name in initrds:
                    with (artifacts / name).open("rb") as part:
                        shutil.copyfileobj(part, joined)
        return BootFiles(artifacts / kernel, initrd, params)


def parse_ipxe(script: str) -> tuple[str, list[str], str]:
    """The kernel's file name, the initrds' file names and the kernel parameters of a
    netboot.ipxe (`kernel URL params...`, `initrd [--name NAME] URL` lines)."""
    kernel, initrds, params = "", [], ""
    for raw in script.splitlines():
        words = raw.split()
        if not words or words[0] not in ("kernel", "initrd", "chain"):
            continue
        args, rest = [], iter(words[1:])
        for word in rest:
            if word.startswith("-"):  # an option: `--name initrd` or `--name=initrd`
                if "=" not in word:
                    next(rest, None)
                continue
            args.append(word)
        if not args:
            continue
        name = args[0].rsplit("/", 1)[-1].split("?", 1)[0]
        if words[0] == "kernel":
            kernel = name
            params = " ".join(a for a in args[1:] if not a.startswith("initrd="))
        elif words[0] == "initrd":
            initrds.append(name)
    if not kernel or not initrds:
        raise BenchError("netboot.ipxe names no kernel or no initrd")
    return kernel, initrds, params


NETWORK_UNIT = "[Match]\nType=ether\n\n[Network]\nDHCP=yes\n"


def write_extra_tree(root: Path, key: Path, port: int) -> None:
    """The files every peer adds to its image: root's authorized key, DHCP on every
    Ethernet NIC through systemd-networkd (as plasmaboot's images) and the one setting the
    config-only rebuild changes."""
    ssh = root / "root" / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    ssh.chmod(0o700)
    shutil.copyfile(key, ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    network = root / "etc" / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "80-dhcp.network").write_text(NETWORK_UNIT)
    setting = root / "etc" / "plasmacloud"
    setting.mkdir(parents=True, exist_ok=True)
    (setting / "iam.env").write_text(f"PORT={port}\n")


class Mkosi(Tool):
    """mkosi 14, Format=cpio (the whole image is the initrd, zstd), Debian bookworm. A
    finalize script copies the kernel out of the image, links /init to systemd and trims
    the modules; NspawnKeepUnit=yes because this host runs no systemd."""

    def configure(self, port: int) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        extra = self.work / "mkosi.extra"
        shutil.rmtree(extra, ignore_errors=True)
        write_extra_tree(extra, self.key, port)
        (self.work / "mkosi.cache").mkdir(exist_ok=True)
        (self.work / "mkosi.default").write_text(
            "[Distribution]\n"
            "Distribution=debian\n"
            f"Release={RELEASE}\n"
            f"Mirror={MIRROR}\n\n"
            "[Output]\n"
            "Format=cpio\n"
            "CompressOutput=zstd\n"
            "OutputDirectory=mkosi.output\n\n"
            "[Content]\n"
            f"Packages={','.join(self.packages)}\n"
            "Cache=mkosi.cache\n"
            # apt's lists and caches (~170 MB unpacked) stay in the image otherwise (apt is
            # installed); plasmaboot's images carry none either
            "CleanPackageMetadata=yes\n\n"
            "[Host]\n"
            "NspawnKeepUnit=yes\n"
        )
        trim = self.work / "trim-modules.sh"
        trim.write_text(self.trim)
        trim.chmod(0o755)
        postinst = self.work / "mkosi.postinst"
        postinst.write_text(
            "#!/bin/sh\nset -e\nsystemctl enable systemd-networkd.service ssh.service\n"
            # the machine ID is reset: systemd-firstboot would wait at the console for answers
            "systemctl mask systemd-firstboot.service\n"
        )
        postinst.chmod(0o755)
        finalize = self.work / "mkosi.finalize"
        finalize.write_text(
            "#!/bin/sh\n"
            "# the kernel copied out of the image, /init linked to systemd, modules trimmed\n"
            "set -e\n"
            '[ "$1" = final ] || exit 0\n'
            f'cp "$BUILDROOT"/boot/vmlinuz-* {self.work / "vmlinuz"}\n'
            'ln -sf lib/systemd/systemd "$BUILDROOT/init"\n'
            f'{trim} "$BUILDROOT"\n'
        )
        finalize.chmod(0o755)

    def clean(self) -> None:
        for name in ("mkosi.cache", "mkosi.output", "vmlinuz"):
            path = self.work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        (self.work / "mkosi.cache").mkdir(parents=True, exist_ok=True)

    def build(self) -> float:
        # -f: replace the previous output (mkosi refuses to overwrite it otherwise)
        return run(["mkosi", "-f", "build"], self.log, BUILD_TIMEOUT, cwd=self.work)

    def boot_files(self) -> BootFiles:
        images = sorted((self.work / "mkosi.output").glob("*/image.cpio*"))
        images = [image for image in images if not image.name.endswith(".manifest")]
        if not images:
            raise BenchError(f"no mkosi image under {self.work / 'mkosi.output'}")
        return BootFiles(self.work / "vmlinuz", images[0], "console=ttyS0,115200")


class LiveBuild(Tool):
    """live-build (Debian's live/netboot builder): a kernel, a live-boot initrd and a
    filesystem.squashfs that the initrd fetches over HTTP at boot (`fetch=`)."""

    def lb_config(self) -> list[str]:
        return [
            "lb",
            "config",
            "--distribution",
            RELEASE,
            "--archive-areas",
            "main",
            "--mirror-bootstrap",
            MIRROR,
            "--mirror-chroot",
            MIRROR,
            "--mirror-binary",
            MIRROR,
            "--mirror-chroot-security",
            SECURITY_MIRROR,
            "--mirror-binary-security",
            SECURITY_MIRROR,
            "--security",
            "true",
            "--updates",
            "false",
            "--binary-image",
            "netboot",
            "--net-tarball",
            "false",
            "--debian-installer",
            "none",
            "--apt-recommends",
            "false",
            "--apt-indices",
            "false",
            "--firmware-chroot",
            "false",
            "--firmware-binary",
            "false",
            "--memtest",
            "none",
            "--checksums",
            "none",
            "--zsync",
            "false",
            "--linux-flavours",
            "amd64",
            # debootstrap's default variant adds Priority: important (cron, ifupdown, nftables,
            # tasksel...): minbase, as plasmaboot's mmdebstrap and mkosi use
            "--debootstrap-options",
            "--variant=minbase",
        ]

    def configure(self, port: int) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        run(self.lb_config(), self.log, 300, cwd=self.work)
        config = self.work / "config"
        packages = [name for name in self.packages if name != "linux-image-amd64"]
        (config / "package-lists" / "peers.list.chroot").write_text("\n".join(packages) + "\n")
        includes = config / "includes.chroot_after_packages"
        shutil.rmtree(includes, ignore_errors=True)
        write_extra_tree(includes, self.key, port)
        hooks = config / "hooks" / "normal"
        hooks.mkdir(parents=True, exist_ok=True)
        trim = hooks / "9000-peers-trim.hook.chroot"
        # systemd-resolved made /etc/resolv.conf a link to its stub, dead in the chroot, and
        # live-build installs more after the hooks (cifs-utils for netboot): the host's file
        # until then (live-build puts its own back at the end)
        resolv = Path("/etc/resolv.conf").read_text().replace("'", "")
        trim.write_text(
            self.trim
            + "update-initramfs -u -k all\n"
            + "systemctl enable systemd-networkd.service ssh.service\n"
            + "if [ -L /etc/resolv.conf ]; then\n"
            + f"  rm /etc/resolv.conf && printf '%s' '{resolv}' > /etc/resolv.conf\n"
            + "fi\n"
        )
        trim.chmod(0o755)

    def clean(self) -> None:
        if (self.work / "config").is_dir():
            run(["lb", "clean", "--purge"], self.log, 600, cwd=self.work)

    def build(self) -> float:
        # lb build skips every stage it has a stamp for, changed or not: a rebuild that sees a
        # change is `lb clean` (keeps cache/: the packages and the bootstrap stage) + lb build
        # (lb clean drops the config stamp too: lb config again, quick, keeps config/'s files)
        seconds = run(["lb", "clean"], self.log, 600, cwd=self.work)
        seconds += run(self.lb_config(), self.log, 300, cwd=self.work)
        return seconds + run(["lb", "build"], self.log, BUILD_TIMEOUT, cwd=self.work)

    def boot_files(self) -> BootFiles:
        live = self.work / "binary" / "live"
        if not live.is_dir():
            live = self.work / "tftpboot" / "live"
        kernels = sorted(live.glob("vmlinuz*"))
        initrds = sorted(live.glob("initrd.img*"))
        squashfs = live / "filesystem.squashfs"
        if not kernels or not initrds:
            raise BenchError(f"no live-build kernel and initrd under {live}")
        if not squashfs.is_file():
            squashfs = self.work / "binary" / "live" / "filesystem.squashfs"
        cmdline = (
            "boot=live components fetch=http://{http}/filesystem.squashfs console=ttyS0,115200"
        )
        return BootFiles(kernels[0], initrds[0], cmdline, served=squashfs.parent, extra=(squashfs,))


TOOL_CLASSES: dict[str, type[Tool]] = {
    "plasmaboot": Plasmaboot,
    "mkosi": Mkosi,
    "live-build": LiveBuild,
}


# --- booting --------------------------------------------------------------------------------


def qemu_command(
    files: BootFiles, memory: int, ssh_port: int, serial: Path, cmdline: str
) -> list[str]:
    """One QEMU command line for every tool: TCG, direct kernel boot, user network with SSH
    forwarded to 127.0.0.1, a virtio NIC and RNG (as boot-test's guest)."""
    return [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-cpu", "qemu64",
        "-smp", "2",
        "-m", str(memory),
        "-nodefaults",
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-serial", f"file:{serial}",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-kernel", str(files.kernel),
        "-initrd", str(files.initrd),
        "-append", cmdline,
    ]  # fmt: skip


def ssh_true(port: int, identity: Path) -> bool:
    command = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10",
        "-i", str(identity),
        "-p", str(port),
        "root@127.0.0.1",
        "true",
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


# TCG's own crashes, whatever the image: on a loaded host the kernel's timer check fails now
# and then, and QEMU's cross-vCPU code patching kills a guest with "Oops: int3" about one
# boot in 50 (boot-test retries it too, `boot.test.tcg_crashed`). Such a boot is tried again
# (up to TCG_RETRIES times) rather than counted as a failure.
TCG_CRASHES = (b"IO-APIC + timer doesn't work", b"Oops: int3")
TCG_RETRIES = 2


def boot_to_ssh(tool: Tool, memory: int, identity: Path, timeout: float) -> float | None:
    """Boot tool's image with memory MiB; the seconds from QEMU's start to a successful
    `ssh ... true`, or None if it did not get there within timeout (or the guest stopped)."""
    for _ in range(TCG_RETRIES):
        seconds = boot_once(tool, memory, identity, timeout)
        serial = tool.work / f"serial-{memory}.log"
        crash = tcg_crash(serial.read_bytes()) if serial.exists() else None
        if seconds is not None or crash is None:
            return seconds
        print(f"  {tool.name:<11} {memory} MiB: TCG crashed the guest ({crash}), booting again")
    return boot_once(tool, memory, identity, timeout)


def tcg_crash(console: bytes) -> str | None:
    """The TCG crash a guest's console shows, if any."""
    for marker in TCG_CRASHES:
        if marker in console:
            return marker.decode()
    return None


def boot_once(tool: Tool, memory: int, identity: Path, timeout: float) -> float | None:
    files = tool.boot_files()
    serial = tool.work / f"serial-{memory}.log"
    serial.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        # panic=-1: a panicking guest reboots, which -no-reboot turns into QEMU's exit
        cmdline = f"{files.cmdline} panic=-1"
        if files.served is not None:
            http_port = stack.enter_context(http_server(files.served))
            cmdline = cmdline.replace("{http}", f"{HTTP_PORT_GUEST_HOST}:{http_port}")
        ssh_port = free_port()
        command = qemu_command(files, memory, ssh_port, serial, cmdline)
        qemu_log = (tool.work / f"qemu-{memory}.log").open("wb")
        stack.callback(qemu_log.close)
        started = time.monotonic()
        proc = subprocess.Popen(
            command, stdout=qemu_log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while time.monotonic() - started < timeout:
                if proc.poll() is not None:
                    return None  # the guest stopped (a panic with -no-reboot)
                if ssh_true(ssh_port, identity):
                    return time.monotonic() - started
                time.sleep(1)
            return None
        finally:
            kill_group(proc)


# --- the benchmark --------------------------------------------------------------------------


def load_profile_globs() -> tuple[list[str], list[str]]:
    kernel = tomllib.loads((REPO / "profiles" / "base.toml").read_text())["kernel"]
    return list(kernel["include_modules"]), list(kernel["exclude_modules"])


def record(
    results: dict[str, dict[str, list[float]]], tool: str, figure: str, value: float
) -> None:
    results.setdefault(tool, {}).setdefault(figure, []).append(value)
    print(f"  {tool:<11} {figure:<9} {format_value(figure, value)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated")
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/plasmaboot-peers"))
    parser.add_argument(
        "--reuse", action="store_true", help="boot and measure what --work holds; build none"
    )
    parser.add_argument("--json", type=Path, help="also write the runs and medians here")
    parser.add_argument("--memory", type=int, default=1024, help="MiB for the boot figure")
    parser.add_argument(
        "--ram-steps", default=",".join(map(str, RAM_STEPS)), help="MiB, comma-separated"
    )
    parser.add_argument("--boot-timeout", type=float, default=BOOT_TIMEOUT)
    options = parser.parse_args(argv)
    tools = [t for t in options.tools.split(",") if t]
    figures = [f for f in options.figures.split(",") if f]
    for name in tools:
        if name not in TOOLS:
            parser.error(f"--tools: {name!r} is not one of {', '.join(TOOLS)}")
    for name in figures:
        if name not in FIGURES:
            parser.error(f"--figures: {name!r} is not one of {', '.join(FIGURES)}")
    steps = sorted(int(step) for step in options.ram_steps.split(","))
    work: Path = options.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    key = work / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "peers", "-f", str(key)],
            check=True,
            timeout=60,
        )
    include, exclude = load_profile_globs()
    packages = read_packages(DATA / "packages.txt")
    trim = trim_script(include, exclude)
    peers = {
        name: TOOL_CLASSES[name](name, work / name, Path(f"{key}.pub"), packages, trim)
        for name in tools
    }
    results: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = os.getloadavg()
    print(f"peers: {', '.join(tools)}; figures: {', '.join(figures)}; runs: {options.runs}")
    print(f"started {started}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    try:
        for run_index in range(options.runs):
            print(f"run {run_index + 1} of {options.runs}", flush=True)
            if not options.reuse:
                measure_builds(peers, figures, results, run_index)
            for name, tool in peers.items():
                if "size" in figures:
                    record(results, name, "size", tool.size())
                    sizes[name] = tool.size_parts()
            if "boot" in figures:
                for name, tool in peers.items():
                    seconds = boot_to_ssh(tool, options.memory, key, options.boot_timeout)
                    if seconds is None:
                        print(f"  {name:<11} boot      no SSH within {options.boot_timeout:.0f} s")
                    else:
                        record(results, name, "boot", seconds)
            if "ram" in figures:
                for name, tool in peers.items():
                    smallest = smallest_ram(tool, steps, key, options.boot_timeout)
                    if smallest is not None:
                        record(results, name, "ram", smallest)
    except BenchError as error:
        print(f"peers: {error}", file=sys.stderr)
        return 1
    finally:
        if results:
            print()
            print(table(results, tools))
        if options.json and results:
            medians = {
                tool: {figure: median(values) for figure, values in by_figure.items()}
                for tool, by_figure in results.items()
            }
            options.json.write_text(
                json.dumps(
                    {
                        "started": started,
                        "load_average": load,
                        "cpus": os.cpu_count(),
                        "runs": results,
                        "medians": medians,
                        "size_parts": sizes,
                    },
                    indent=2,
                )
                + "\n"
            )
    return 0


def measure_builds(
    peers: dict[str, Tool],
    figures: Sequence[str],
    results: dict[str, dict[str, list[float]]],
    run_index: int,
) -> None:
    """Alternating: every tool's cold build, then every no-change rebuild, then every
    config-only rebuild. Ends with each tool configured as before (the base port), so the
    boots and sizes measure the same configuration in every run."""
    for name, tool in peers.items():
        tool.configure(BASE_PORT)
        if "cold" in figures or not tool.built():
            tool.clean()
            tool.configure(BASE_PORT)
            seconds = tool.build()
            if "cold" in figures:
                record(results, name, "cold", seconds)
    if "nochange" in figures:
        for name, tool in peers.items():
            record(results, name, "nochange", tool.build())
    if "config" in figures:
        for name, tool in peers.items():
            tool.configure(BASE_PORT + 100 + run_index)
            record(results, name, "config", tool.build())
            tool.configure(BASE_PORT)


def smallest_ram(tool: Tool, steps: Sequence[int], identity: Path, timeout: float) -> int | None:
    def reaches(memory: int) -> bool:
        seconds = boot_to_ssh(tool, memory, identity, timeout)
        verdict = "no SSH" if seconds is None else f"SSH in {seconds:.1f} s"
        print(f"  {tool.name:<11} ram {memory} MiB: {verdict}", flush=True)
        return seconds is not None

    return bisect_ram(steps, reaches)


if __name__ == "__main__":
    sys.exit(main())
