"""The one way plasmaboot runs a program: a list of arguments, a minimal environment,
the exact command and its output in the log, and an error that shows both on failure.

`run()` runs a program to its end (its output captured, or streamed line by line) and
honours a timeout on every path; `start()` starts one in the background (QEMU, a
compressor fed through a pipe) with the same checks and logging, and its `Background`
handle stops it, always reaping it. A background program dies with plasmaboot."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from plasmaboot.errors import UserError, WorkError
from plasmaboot.log import Log

# Which Debian package provides each external tool, so a missing one names its fix.
TOOL_PACKAGES: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "qemu-system-x86_64": "qemu-system-x86",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "dpkg-deb": "dpkg",
    "nix": "nix-bin",
    "nix-instantiate": "nix-bin",
    "zstd": "zstd",
    "busybox": "busybox-static",
    "nginx": "nginx-light",
    "ip": "iproute2",
    "dnsmasq": "dnsmasq-base",
}

BASE_ENV_KEYS = ("PATH", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH", "NIX_CONFIG", "NIX_PATH")
TAIL_LINES = 25
STOP_TIMEOUT = 5.0  # seconds a stopped program gets to exit before it is killed
WATCHDOG_INTERVAL = 1.0
PR_SET_PDEATHSIG = 1


def require_tool(name: str) -> str:
    """Return the tool's path or fail with the package that provides it."""
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise UserError(
            f"required tool {name!r} was not found on PATH",
            hint=f"install it: apt-get install {package} (or run `make setup`)",
        )
    return path


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An explicit environment: only what programs need, so builds do not depend on the shell."""
    env = {key: os.environ[key] for key in BASE_ENV_KEYS if key in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run(
    cmd: Sequence[str | Path],
    *,
    log: Log | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    idle_timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a program, log the command and its combined output, fail clearly if it fails.

    With `on_line`, output is streamed: each line goes to the log and to `on_line` as it
    arrives (for progress on long programs such as mmdebstrap). `timeout` bounds the whole
    run on every path; `idle_timeout` (streaming only) stops a program that has printed
    nothing for that long, such as mmdebstrap behind a stalled mirror."""
    argv = checked_argv(cmd)
    if log is not None:
        log.command(argv)
    if on_line is not None:
        return run_streaming(
            argv,
            log=log,
            env=env,
            cwd=cwd,
            check=check,
            on_line=on_line,
            timeout=timeout,
            idle_timeout=idle_timeout,
        )
    try:
        proc = subprocess.run(
            argv,
            env=minimal_env(env),
            cwd=cwd,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise timed_out(argv, timeout or 0) from exc
    output = proc.stdout or b""
    if log is not None and output:
        log.output(output.decode("utf-8", "replace"))
    if check and proc.returncode != 0:
        raise command_failed(argv, proc.returncode, output.decode("utf-8", "replace"), log)
    return proc


def checked_argv(cmd: Sequence[str | Path]) -> list[str]:
    """The command as strings; a tool named without a path must be installed."""
    argv = [str(part) for part in cmd]
    if "/" not in argv[0]:
        require_tool(argv[0])
    return argv


def timed_out(argv: list[str], seconds: float, what: str = "") -> WorkError:
    return WorkError(f"command timed out after {seconds:.0f}s{what}: {shlex.join(argv)}")


def command_failed(argv: list[str], code: int, output: str, log: Log | None) -> WorkError:
    tail = "\n".join(output.splitlines()[-TAIL_LINES:])
    return WorkError(
        f"command failed with exit code {code}: {shlex.join(argv)}\n{tail}",
        hint=f"the full output is in {log.path}" if log is not None and log.path else None,
    )


def run_streaming(
    argv: list[str],
    *,
    log: Log | None,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    check: bool,
    on_line: Callable[[str], None],
    timeout: float | None = None,
    idle_timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        argv,
        env=minimal_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so a timeout stops the program and everything it started
    ) as proc:
        assert proc.stdout is not None
        watchdog = Watchdog(proc, timeout, idle_timeout)
        try:
            for raw in proc.stdout:
                watchdog.saw_output()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                if log is not None:
                    log.output(line)
                on_line(line)
            code = proc.wait()
        finally:
            watchdog.cancel()
    if watchdog.fired is not None:
        raise timed_out(argv, watchdog.fired[1], watchdog.fired[0])
    if check and code != 0:
        raise command_failed(argv, code, "\n".join(tail), log)
    return subprocess.CompletedProcess(argv, code, b"", b"")


class Watchdog:
    """Stops a streaming program (its whole process group) when it runs longer than
    `timeout` or prints nothing for `idle_timeout` seconds."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        timeout: float | None,
        idle_timeout: float | None,
    ) -> None:
        self.proc = proc
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.started = self.last_output = time.monotonic()
        self.fired: tuple[str, float] | None = None  # (why, after how many seconds)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if timeout is not None or idle_timeout is not None:
            self._thread = threading.Thread(target=self._watch, name="plasmaboot-watchdog")
            self._thread.daemon = True
            self._thread.start()

    def saw_output(self) -> None:
        self.last_output = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(WATCHDOG_INTERVAL):
            now = time.monotonic()
            if self.timeout is not None and now - self.started > self.timeout:
                self.fired = ("", self.timeout)
            elif self.idle_timeout is not None and now - self.last_output > self.idle_timeout:
                self.fired = (" without output", self.idle_timeout)
            if self.fired is not None:
                stop_group(self.proc)
                return

    def cancel(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def stop_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to the program's process group, SIGKILL if it has not exited in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------
# Background programs


def die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it if plasmaboot dies (even -9)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


Sink = Path | IO[bytes] | int


class Background:
    """A program started by `start()`: poll it, wait for it, stop it; a context manager
    that always stops and reaps it on exit."""

    def __init__(self, argv: list[str], proc: subprocess.Popen[bytes], log: Log | None) -> None:
        self.argv = argv
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.proc.stdin

    def poll(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code; a WorkError (and the program stopped) if it runs past `timeout`."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise timed_out(self.argv, timeout or 0) from exc

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate, then kill if it does not exit in time; always reaps it."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):  # a program that went away broke its pipe
                self.proc.stdin.close()
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log is not None:
            self.log.info(f"stopped {self.argv[0]} (pid {self.proc.pid})")

    def __enter__(self) -> Background:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    cmd: Sequence[str | Path],
    *,
    log: Log | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | IO[bytes] = subprocess.DEVNULL,
    stdout: Sink = subprocess.DEVNULL,
    stderr: Sink | None = None,
) -> Background:
    """Start a program in the background, logged like `run()`. `stdout` and `stderr` take a
    path (appended to), an open binary file or a subprocess constant; stderr None joins
    stdout. The program is killed if plasmaboot dies."""
    argv = checked_argv(cmd)
    if "/" not in argv[0]:
        argv[0] = require_tool(argv[0])
    if log is not None:
        log.command(argv)
    opened: list[IO[bytes]] = []

    def sink(target: Sink) -> IO[bytes] | int:
        if isinstance(target, Path):
            handle = target.open("ab")
            opened.append(handle)
            return handle
        return target

    try:
        proc = subprocess.Popen(
            argv,
            env=minimal_env(env),
            cwd=cwd,
            stdin=stdin,
            stdout=sink(stdout),
            stderr=subprocess.STDOUT if stderr is None else sink(stderr),
            preexec_fn=die_with_parent,
        )
    finally:
        for handle in opened:  # the child holds its own descriptors now
            handle.close()
    return Background(argv, proc, log)
