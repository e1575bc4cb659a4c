"""The node install talks to: a shell over SSH whose host key is pinned, never trusted on
first use unless the operator says so (`--insecure-first-use`, for tests until host-key
reports land). Data (the secrets tar, the kernel, the .debs) goes over stdin; the command
line holds no secret, and what a command prints is logged, so no command prints one."""

from __future__ import annotations

import shlex
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

    def argv(self, script: str) -> list[str]:
        policy = "accept-new" if self.first_use else "yes"
        argv = [
            "ssh",
            "-o", f"StrictHostKeyChecking={policy}",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=3",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(self.identity),
            "-p", str(self.port),
            f"root@{self.host}",
            f"sh -euc {shlex.quote(script)}",
        ]  # fmt: skip
        return self.netns.argv(argv) if self.netns is not None else argv

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
