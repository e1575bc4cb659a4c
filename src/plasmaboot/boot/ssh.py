"""SSH to the guest, through QEMU's forwarded port on the user network or straight to its
address inside boot-test's namespace: run a command as root with the operator's key, tell a
server's banner from a reset or silence, try a password-only login, and wait until the
guest's sshd answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from plasmaboot.boot.netns import Netns
from plasmaboot.boot.qemu import PxeVm
from plasmaboot.errors import WorkError
from plasmaboot.log import Log
from plasmaboot.run import run

# Once the guest's DHCP lease is seen, SSH is probed this often: a probe is then answered
# at once (a reset while sshd is not listening yet), so this is the resolution of the
# PXE-to-SSH figure.
SSH_POLL_INTERVAL = 0.25
# Before the lease a probe is answered by nobody: QEMU holds it inside slirp, and it
# reaches sshd seconds later. So probe only every few seconds (only a guest whose lease
# the capture misses needs these), and drop the probe as soon as the lease shows.
SSH_BLIND_PROBE_INTERVAL = 3.0
SSH_BLIND_PROBE_WAIT = 3.0
# After the lease: wait SSH_FIRST_GREETING_WAIT for an answer, doubling on each silent
# probe (the address may not be set yet); once the guest has reset a probe, its TCP stack
# is up and the greeting alone can take seconds (sshd forks and re-executes itself per
# connection, slowly under TCG): wait for it rather than start another sshd.
SSH_FIRST_GREETING_WAIT = 1.0
SSH_GREETING_TIMEOUT = 15.0
# On a tap the guest's own TCP stack answers: a connection is refused at once while sshd
# is not listening, and unanswered (no ARP reply, a dropped SYN) while the system has no
# address yet; give up on those quickly, the next probe follows SSH_POLL_INTERVAL later.
SSH_CONNECT_TIMEOUT = 1.0
GREETING_SLICE = 0.2
SSH_COMMAND_TIMEOUT = 120.0


# ssh's words for a connection that broke before the server could accept or refuse a key
TRANSIENT_SSH_FAILURES = (
    "Connection timed out during banner exchange",
    "kex_exchange_identification",
    "Connection reset by peer",
    "Connection closed by remote host",
)
LOGIN_ATTEMPTS = 3
LOGIN_RETRY_PAUSE = 5.0


class Greeting(StrEnum):
    """What came back on the SSH port (see Ssh.greeting)."""

    BANNER = "banner"
    CLOSED = "closed"
    SILENT = "silent"


@dataclass(frozen=True)
class Ssh:
    """The guest's sshd at `host`:`port`; with `netns`, reached from inside that namespace
    (ssh runs through `ip netns exec`, probes use a socket made there)."""

    port: int
    identity: Path
    log: Log | None = None
    host: str = "127.0.0.1"
    netns: Netns | None = None
    # the node's reported host keys: connect with StrictHostKeyChecking=yes against them
    known_hosts: Path | None = None

    @property
    def direct(self) -> bool:
        """True when the guest's own TCP stack answers (a tap), not QEMU's port forward."""
        return self.netns is not None

    @property
    def target(self) -> str:
        return f"root@{self.host}"

    def inside(self, argv: list[str]) -> list[str]:
        return self.netns.argv(argv) if self.netns is not None else argv

    def base(self) -> list[str]:
        if self.known_hosts is not None:
            checking = ["-o", "StrictHostKeyChecking=yes",
                        "-o", f"UserKnownHostsFile={self.known_hosts}"]  # fmt: skip
        else:
            checking = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return ["ssh", *checking, "-o", "ConnectTimeout=5", "-p", str(self.port)]

    def argv(self, command: str) -> list[str]:
        return self.inside([
            *self.base(),
            "-i", str(self.identity),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            self.target,
            command,
        ])  # fmt: skip

    def run(self, command: str, timeout: float = SSH_COMMAND_TIMEOUT) -> tuple[int, str]:
        try:
            proc = run(self.argv(command), log=self.log, check=False, timeout=timeout)
        except WorkError as exc:
            return 255, exc.message
        return proc.returncode, proc.stdout.decode("utf-8", "replace")

    def output(self, command: str, timeout: float = SSH_COMMAND_TIMEOUT) -> str:
        code, out = self.run(command, timeout)
        if code != 0:
            raise WorkError(f"over SSH, `{command}` failed with exit code {code}: {out.strip()}")
        return out

    def connect(self, timeout: float) -> socket.socket:
        if self.netns is not None:
            return self.netns.connect((self.host, self.port), timeout)
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def greeting(
        self,
        timeout: float,
        give_up: Callable[[], bool] | None = None,
        connect_timeout: float | None = None,
    ) -> Greeting:
        """What the SSH port says within `timeout` s: the server's banner; a closed
        connection (the guest's TCP stack reset it: nothing listens yet); or silence (also
        a connection nobody answered within `connect_timeout`). Through QEMU's port forward
        QEMU accepts the connection itself whatever the guest does, so only what comes back
        tells. `give_up` is asked every GREETING_SLICE s while the port is silent."""
        deadline = time.monotonic() + timeout
        try:
            sock = self.connect(connect_timeout or timeout)
        except ConnectionRefusedError:
            return Greeting.CLOSED
        except OSError:  # no route, no ARP reply, a timeout: nobody there yet
            return Greeting.SILENT
        try:
            with sock:
                sock.settimeout(GREETING_SLICE)
                while True:
                    try:
                        data = sock.recv(64)
                    except TimeoutError:
                        if time.monotonic() >= deadline or (give_up is not None and give_up()):
                            return Greeting.SILENT
                        continue
                    return Greeting.BANNER if data.startswith(b"SSH-") else Greeting.CLOSED
        except OSError:
            return Greeting.CLOSED

    def login(self) -> tuple[bool, str]:
        """Log in with the key. A connection that broke before authentication (a banner
        that came too late on a loaded host, a reset) is tried again, a few times: only a
        server that answered and refused the key is a refusal."""
        for _ in range(LOGIN_ATTEMPTS):
            code, out = self.run("true", timeout=60)
            if code == 0 or not any(sign in out for sign in TRANSIENT_SSH_FAILURES):
                break
            time.sleep(LOGIN_RETRY_PAUSE)
        return code == 0, out.strip()

    def password_probe(self) -> tuple[int, str]:
        """Try to log in with a password only, verbosely: what does the server offer?"""
        argv = [
            *self.base(),
            "-v",
            "-o", "BatchMode=yes",
            "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no",
            self.target,
            "true",
        ]  # fmt: skip
        try:
            proc = run(self.inside(argv), log=self.log, check=False, timeout=60)
        except WorkError as exc:
            return 255, exc.message
        return proc.returncode, proc.stdout.decode("utf-8", "replace")


def wait_for_ssh(vm: PxeVm, ssh: Ssh, timeout: float) -> None:
    """Until the SSH server greets: probed often once the guest has its address, and only
    now and then before (see SSH_BLIND_PROBE_INTERVAL)."""
    if ssh.direct:
        wait_for_ssh_direct(vm, ssh, timeout)
        return
    next_blind_probe = 0.0
    wait = SSH_FIRST_GREETING_WAIT

    def network_up() -> bool:
        return "network_up" in vm.watch.events

    def greeted() -> bool:
        nonlocal next_blind_probe, wait
        if not network_up():
            if time.monotonic() < next_blind_probe:
                return False
            next_blind_probe = time.monotonic() + SSH_BLIND_PROBE_INTERVAL
            return ssh.greeting(SSH_BLIND_PROBE_WAIT, give_up=network_up) is Greeting.BANNER
        answer = ssh.greeting(wait)
        if answer is Greeting.CLOSED:
            wait = SSH_GREETING_TIMEOUT
        elif answer is Greeting.SILENT:
            wait = min(2 * wait, SSH_GREETING_TIMEOUT)
        return answer is Greeting.BANNER

    vm.wait_until(greeted, timeout, "the SSH server to answer", SSH_POLL_INTERVAL)


def wait_for_ssh_direct(vm: PxeVm, ssh: Ssh, timeout: float) -> None:
    """Until the SSH server greets, on a network where the guest's own TCP stack answers:
    probed every SSH_POLL_INTERVAL once the initrd is fetched (before, only the firmware or
    iPXE could answer). The first answer after a silent probe (the kernel booting) marks
    `network_up`: the system has its address. A reset before any silence is iPXE's, which
    still holds the address between the initrd and the kernel."""
    silent_seen = False

    def kernel_there() -> bool:
        return bool({"initrd_fetched", "kernel_started"} & vm.watch.events.keys())

    def greeted() -> bool:
        nonlocal silent_seen
        if not kernel_there():
            return False
        answer = ssh.greeting(SSH_GREETING_TIMEOUT, connect_timeout=SSH_CONNECT_TIMEOUT)
        if answer is Greeting.SILENT:
            silent_seen = True
        elif silent_seen or answer is Greeting.BANNER:
            vm.watch.mark("network_up")
        return answer is Greeting.BANNER

    vm.wait_until(greeted, timeout, "the SSH server to answer", SSH_POLL_INTERVAL)
