"""Per-node layers and host keys without trust-on-first-use, end to end: two machines boot
the same CI image through `plasmaboot pxe-server` in a network namespace; each gets its own
host name and its own authorized key from its per-node layer, reports its per-boot host
keys once, and `machines known-hosts` lines match the keys its sshd presents
(ssh-keyscan, then ssh with StrictHostKeyChecking=yes). A replayed report is refused.

RUN AFTER THE LAYERS MERGE: the node only sees its per-node layer once stage-1 stacks
`/layers/90-node/` (contract C1, the layers helper's stage-1) and the image's sshd reads
`/etc/plasmaboot/node/authorized_keys` (C2). Before that this test fails at the host name.
    PLASMABOOT_TEST_CACHE=/work/.testcache pytest -m slow tests/integration/test_node_layer.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from netns import (
    BOOT_TIMEOUT,
    PXE_FILES,
    PXE_TOOLS,
    Netns,
    netns,
    qemu_argv,
    require,
    wait_for_text,
)

from conftest import CiImage, make_keypair

pytestmark = pytest.mark.slow  # every wait below is bounded (BOOT_TIMEOUT, run timeouts)

MACHINES = {  # name: (MAC, address)
    "node-a": ("52:54:00:77:10:01", "10.77.0.11"),
    "node-b": ("52:54:00:77:10:02", "10.77.0.12"),
}
HTTP_PORT = 8080


@pytest.fixture(autouse=True)
def pxe_tools() -> None:
    require(*PXE_TOOLS, "ssh-keyscan", files=PXE_FILES)  # in CI a missing tool fails


def inventory_text(ci_image: CiImage) -> str:
    lines = [f'[defaults]\nprofile = "{ci_image.label}"\n']
    for name, (mac, address) in MACHINES.items():
        lines.append(
            f'[machines.{name}]\nmac = "{mac}"\nipv4 = "{address}/24"\n'
            f'hostname = "{name}.lab"\nssh_keys = ["{name}.pub"]\nlabels = {{ rack = "r1" }}\n'
        )
    return "\n".join(lines)


@contextmanager
def pxe_server(space: Netns, ci_image: CiImage, inventory: Path, log: Path) -> Iterator[None]:
    # a global IPv6 address on the bridge: dnsmasq's RA then stops iPXE waiting for IPv6
    subprocess.run(
        ["ip", "-n", space.name, "addr", "add", "fd77::1/64", "dev", space.bridge], check=True
    )
    proc = space.popen(
        sys.executable, "-m", "plasmaboot", "--profiles-dir", str(ci_image.profiles_dir),
        "pxe-server", "--interface", space.bridge, "--root", str(ci_image.artifacts),
        "--inventory", str(inventory), "--dhcp-range", "10.77.0.100,10.77.0.150",
        "--http-port", str(HTTP_PORT), log=log,
    )  # fmt: skip
    try:
        assert wait_for_text(log, "pxe-server on ", 60, proc), log.read_text()
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ssh_argv(identity: Path, address: str, known_hosts: Path | None, command: str) -> list[str]:
    checking = (
        ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
        if known_hosts is not None
        else ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    )
    return [
        "ssh", *checking, "-o", "ConnectTimeout=5", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-i", str(identity),
        f"root@{address}", command,
    ]  # fmt: skip


def boot(space: Netns, stack: ExitStack, workdir: Path, name: str) -> None:
    mac, _ = MACHINES[name]
    workdir.mkdir()
    tap = space.add_tap(f"tap-{name[-1]}")
    qemu = space.popen(*qemu_argv(tap, mac, workdir, uefi=False), log=workdir / "qemu.log")
    stack.callback(qemu.wait)
    stack.callback(qemu.kill)


def wait_for_ssh(space: Netns, identity: Path, address: str, workdir: Path) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        answer = space.run(*ssh_argv(identity, address, None, "hostname"), timeout=60)
        if answer.returncode == 0:
            return answer.stdout.strip()
        time.sleep(3)
    serial = (workdir / "serial.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"no SSH at {address} after {BOOT_TIMEOUT:.0f}s\n{serial}")


def known_hosts(ci_image: CiImage, inventory: Path) -> list[str]:
    argv = [sys.executable, "-m", "plasmaboot", "--profiles-dir", str(ci_image.profiles_dir),
            "machines", "known-hosts", "--inventory", str(inventory)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return proc.stdout.splitlines()


def wait_for_reports(ci_image: CiImage, inventory: Path, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = known_hosts(ci_image, inventory)
        reported = {line.split(",", 1)[0] for line in lines}
        if reported == {f"{name}.lab" for name in MACHINES} or time.monotonic() > deadline:
            return lines
        time.sleep(2)


def test_two_machines_from_one_image_get_their_own_names_keys_and_known_hosts(
    ci_image: CiImage, tmp_path: Path
) -> None:
    inventory = tmp_path / "machines.toml"
    identities = {name: make_keypair(tmp_path, name) for name in MACHINES}
    inventory.write_text(inventory_text(ci_image))
    server_log = tmp_path / "pxe-server.log"
    with (
        netns("nodes") as space,
        pxe_server(space, ci_image, inventory, server_log),
        ExitStack() as stack,
    ):
        for name in MACHINES:
            boot(space, stack, tmp_path / f"vm-{name}", name)
        for name, (_, address) in MACHINES.items():
            # each machine's own key (its per-node layer's authorized_keys) lets root in
            hostname = wait_for_ssh(space, identities[name], address, tmp_path / f"vm-{name}")
            assert hostname == f"{name}.lab"
        other = space.run(*ssh_argv(identities["node-b"], "10.77.0.11", None, "true"))
        assert other.returncode != 0  # node-b's key is not node-a's

        lines = wait_for_reports(ci_image, inventory)
        log = server_log.read_text()
        assert {line.split(" ", 1)[0] for line in lines} == {
            f"{name}.lab,{address}" for name, (_, address) in MACHINES.items()
        }, log[-3000:]
        known = tmp_path / "known_hosts"
        known.write_text("".join(f"{line}\n" for line in lines))
        for name, (_, address) in MACHINES.items():
            # the keys its sshd presents are exactly the keys it reported
            scan = space.run("ssh-keyscan", "-T", "10", address, timeout=60)
            presented = {" ".join(line.split()[1:3]) for line in scan.stdout.splitlines()}
            reported = {
                " ".join(line.split()[1:3]) for line in lines if line.startswith(f"{name}.lab,")
            }
            assert presented and presented == reported, (scan.stdout, lines)
            # and ssh with StrictHostKeyChecking=yes accepts the node on them alone
            strict = space.run(*ssh_argv(identities[name], address, known, "hostname"))
            assert strict.returncode == 0 and strict.stdout.strip() == f"{name}.lab"
        a_keys = {line.split(" ", 1)[1] for line in lines if line.startswith("node-a.lab,")}
        b_keys = {line.split(" ", 1)[1] for line in lines if line.startswith("node-b.lab,")}
        assert not a_keys & b_keys  # one image, two machines, their own host keys

        # a replayed report (the node's own token, from its own address) is refused
        replay = space.run(
            *ssh_argv(
                identities["node-a"], "10.77.0.11", known,
                "bash /etc/plasmaboot/node/report-hostkeys; cat /run/plasmaboot/hostkeys-report",
            )
        )  # fmt: skip
        assert replay.returncode == 0 and "HTTP 409" in replay.stdout, replay
        assert "refused: host-key report for node-a from 10.77.0.11: token already used" in (
            server_log.read_text()
        )
        assert "token=" not in server_log.read_text().replace("token=<token>", "")
