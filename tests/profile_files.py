"""Helpers of the profile tests: write profile files into a directory, resolve them, run
the command line in-process."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from plasmaboot.cli import main
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ0ZXN0a2V5Zm9ydGVzdHNvbmx5AAAAAAAAAAAAAAAAAA test\n"


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def resolve(root: Path, files: dict[str, str], name: str, variant: str | None = None) -> Profile:
    write_tree(root, files)
    return ProfileStore([root]).resolve(name, variant)


def write_custom_profiles(profiles: Path) -> None:
    """Profiles that use every merge rule, for comparing the Nix and Python sides: `edge`
    (multiple extends, "!item", key files, service ports, limits and settings), `edge-lab`
    (unset of a service's port and of single keys) and `bare` (no parent: only defaults)."""
    (profiles / "keys").mkdir()
    (profiles / "keys" / "ops.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ops\n")
    (profiles / "edge.toml").write_text(
        """
description = "Edge: a worker with its own DNS and KV store"
extends = ["worker", "base"]
unset = ["sysctl.fs.file-max"]
packages = ["!tcpdump", "busybox", "gdisk", "qemu"]

[ssh]
authorized_keys = ["keys/ops.pub"]

[kernel]
params = ["!loglevel=4", "quiet"]
modules = ["!tun", "br_netfilter"]

[network]
mtu = 9000

[console]
baud = 57600

[sysctl]
"vm.swappiness" = 10

[service_defaults]
cpu_quota = "80%"

[services.chainfire]
enable = true
port = 3379
memory_max = "1G"
settings = { cluster = { name = "edge" } }

[services.flashdns]
enable = true
"""
    )
    (profiles / "edge-lab.toml").write_text(
        'extends = "edge"\nunset = ["services.chainfire.port", "console.baud", "network.mtu"]\n'
    )
    (profiles / "bare.toml").write_text('description = "nothing inherited"\n')
