"""The node install talks to: a shell over SSH whose host key is pinned, never trusted on
first use unless the operator says so (`--insecure-first-use`, for tests until host-key
reports land). Data (the secrets tar, the kernel, the .debs) goes over stdin; the command
line holds no secret, and what a command prints is logged, so no command prints one."""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from plasmaboot.boot.netns import Netns
from plasmaboot.errors import WorkError
from plasmaboot.log import Log
from plasmaboot.run import run

COMMAND_TIMEOUT = 600.0
# ssh's own failures (connection refused, lost, timed out) exit 255; the scripts install
# runs never do (`sh -eu` exits with the failed command's status, 1-127 or 128+signal)
SSH_FAILED = 255
# A shared connection nobody uses ends after this many seconds (if plasmaboot is killed
# before it closes it); a command running on it keeps it open however long it runs.
CONTROL_PERSIST = 120
# ssh expands %-tokens in ControlPath and splits its options on blanks, and a socket's
# path has at most 107 bytes: the socket's directory must be plain and short
CONTROL_PARENT_SAFE = re.compile(r"[A-Za-z0-9_./-]{1,60}")


def control_parent() -> str:
    """Where the shared connection's private directory goes: the temporary directory when
    its path is plain and short, else /tmp."""
    parent = tempfile.gettempdir()
    return parent if CONTROL_PARENT_SAFE.fullmatch(parent) else "/tmp"


class Remote(Protocol):
    """A root shell on the node (tests give a fake one)."""

    host: str

    def sh(self, script: str, input: bytes | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run `script` with `sh -eu`; its output; a WorkError naming the step on failure."""
        ...


@dataclass
class SshRemote:
    """root@host over SSH with the operator's key and a known_hosts file that must hold the
    host's key (`known_hosts`), or, only when `first_use` is set, one that records it."""

    host: str
    identity: Path
    known_hosts: Path
    first_use: bool = False
    port: int = 22
    log: Log | None = None
    netns: Netns | None = None
    control: Path | None = None  # the shared connection's socket (`shared_connection`)

    def options(self) -> list[str]:
        policy = "accept-new" if self.first_use else "yes"
        shared = (
            ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}",
             "-o", f"ControlPersist={CONTROL_PERSIST}"]
            if self.control is not None
            else ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        )  # fmt: skip
        return [
            "-o", f"StrictHostKeyChecking={policy}",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=3",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            *shared,
            "-i", str(self.identity),
            "-p", str(self.port),
        ]  # fmt: skip

    def argv(self, script: str) -> list[str]:
        argv = ["ssh", *self.options(), f"root@{self.host}", f"sh -euc {shlex.quote(script)}"]
        return self.netns.argv(argv) if self.netns is not None else argv

    @contextmanager
    def shared_connection(self) -> Iterator[SshRemote]:
        """One SSH connection for every command run inside (OpenSSH's ControlMaster): the
        first command opens it, the others ride on it, so a key exchange and an sshd fork
        (seconds each under TCG) happen once. Its socket is in a private (0700) directory,
        and the connection is closed on the way out, also after a failure. A lost connection
        still fails the command on it with ssh's 255 (the master gives up after
        ServerAlive's 30 s); the next command would open a new one."""
        directory = Path(tempfile.mkdtemp(prefix="plasmaboot-ssh-", dir=control_parent()))
        self.control = directory / "m"  # mkdtemp's directory is 0700
        try:
            yield self
        finally:
            if self.control.exists():
                argv = ["ssh", *self.options(), "-O", "exit", f"root@{self.host}"]
                argv = self.netns.argv(argv) if self.netns is not None else argv
                # a master that does not answer in time ends by itself (CONTROL_PERSIST)
                with suppress(WorkError):
                    run(argv, log=self.log, check=False, timeout=15)
            self.control = None
            shutil.rmtree(directory, ignore_errors=True)

    def sh(self, script: str, input: bytes | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
        proc = run(self.argv(script), log=self.log, input=input, check=False, timeout=timeout)
        out = proc.stdout.decode("utf-8", "replace")
        if proc.returncode == 255 and "Host key verification failed" in out:
            raise WorkError(
                f"{self.host}: its SSH host key is not the one in {self.known_hosts}",
                hint="the node's reported key is what install trusts: check "
                "`plasmaboot machines known-hosts`, or that the address is the machine's",
            )
        first = script.strip().splitlines()[0] if script.strip() else ""
        tail = " | ".join(out.strip().splitlines()[-5:])
        if proc.returncode == SSH_FAILED:
            raise WorkError(
                f"lost the SSH connection to {self.host} during `{first[:120]}`: "
                + (tail or "ssh exited 255"),
                hint="once the node answers again, run the same command with --wipe "
                "(its disk holds this run's partitions)",
            )
        if proc.returncode != 0:
            raise WorkError(
                f"on {self.host}: `{first[:120]}` failed with exit code {proc.returncode}: {tail}"
            )
        return out
