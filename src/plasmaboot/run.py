"""The one way plasmaboot runs a program: a list of arguments, a minimal environment,
the exact command and its output in the log, and an error that shows both on failure."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

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
}

BASE_ENV_KEYS = ("PATH", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH", "NIX_CONFIG", "NIX_PATH")
TAIL_LINES = 25


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
) -> subprocess.CompletedProcess[bytes]:
    """Run a program, log the command and its combined output, fail clearly if it fails.

    With `on_line`, output is streamed: each line goes to the log and to `on_line` as it
    arrives (for progress on long programs such as mmdebstrap)."""
    argv = [str(part) for part in cmd]
    if "/" not in argv[0]:
        require_tool(argv[0])
    if log is not None:
        log.command(argv)
    if on_line is not None:
        return run_streaming(argv, log=log, env=env, cwd=cwd, check=check, on_line=on_line)
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
        raise WorkError(f"command timed out after {timeout:.0f}s: {shlex.join(argv)}") from exc
    output = proc.stdout or b""
    if log is not None and output:
        log.output(output.decode("utf-8", "replace"))
    if check and proc.returncode != 0:
        raise command_failed(argv, proc.returncode, output.decode("utf-8", "replace"), log)
    return proc


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
) -> subprocess.CompletedProcess[bytes]:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        argv, env=minimal_env(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            if log is not None:
                log.output(line)
            on_line(line)
        code = proc.wait()
    if check and code != 0:
        raise command_failed(argv, code, "\n".join(tail), log)
    return subprocess.CompletedProcess(argv, code, b"", b"")
