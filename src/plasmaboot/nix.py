"""Running nix: the command with flakes enabled and the store options this machine needs,
whether a working nix is here, and reading what it prints. Used by the Nix backend
(image/backends/nix.py) and by the Nix/Python profile parity check (profiles/nixparity.py)."""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
from functools import cache
from typing import Any

from plasmaboot.errors import UserError, WorkError
from plasmaboot.run import require_tool, run

FEATURES = ("--extra-experimental-features", "nix-command flakes")
MIN_VERSION = (2, 4)  # the first Nix with `nix build <flake>#attr` and flakes
FLAKES_HINT = (
    "enable experimental-features = nix-command flakes in /etc/nix/nix.conf "
    "(Nix 2.4 or later), then retry"
)
PROBE_TIMEOUT = 60.0


def nix_command(*args: str) -> list[str]:
    """`nix` with flakes enabled and the store options this machine needs."""
    return ["nix", *FEATURES, *store_options(), *args]


@cache
def store_options() -> tuple[str, ...]:
    """Options that make a root, daemon-less Nix (Debian's nix-bin as installed) build.

    Nix as root builds as the users of `build-users-group` (nixbld); Debian's nix-bin does
    not create that group unless the daemon is set up, and every build then fails. Without
    the group, root builds as itself, still in the sandbox.
    """
    if os.geteuid() != 0:
        return ()
    group = configured_build_users_group()
    if not group:
        return ()
    try:
        grp.getgrnam(group)
    except KeyError:
        return ("--option", "build-users-group", "")
    return ()


def configured_build_users_group() -> str:
    proc = run(["nix", *FEATURES, "show-config"], check=False, timeout=PROBE_TIMEOUT)
    text = proc.stdout.decode("utf-8", "replace")
    match = re.search(r"^build-users-group = (.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def nix_version() -> tuple[int, ...]:
    proc = run(["nix", "--version"], check=False, timeout=PROBE_TIMEOUT)
    text = proc.stdout.decode("utf-8", "replace")
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if proc.returncode != 0 or match is None:
        raise UserError(
            f"`nix --version` did not report a version: {text.strip()[-200:]!r}",
            hint="reinstall Nix: apt-get install nix-bin",
        )
    return tuple(int(part) for part in match.groups() if part is not None)


def check_nix() -> None:
    """Raise UserError saying what to do unless nix is installed, new enough, has flakes
    and can write to its store."""
    require_tool("nix")
    version = nix_version()
    if version < MIN_VERSION:
        found = ".".join(map(str, version))
        raise UserError(f"nix {found} is too old for flakes (need 2.4 or later)", hint=FLAKES_HINT)
    flakes = run(
        ["nix", *FEATURES, "eval", "--expr", "builtins ? getFlake"],
        check=False,
        timeout=PROBE_TIMEOUT,
    )
    if flakes.returncode != 0 or last_line(flakes.stdout) != "true":
        raise UserError(
            f"nix cannot use flakes: {last_line(flakes.stdout) or 'no output'}", hint=FLAKES_HINT
        )
    store = run(nix_command("store", "ping"), check=False, timeout=PROBE_TIMEOUT)
    if store.returncode != 0:
        raise UserError(
            f"nix cannot open its store: {last_line(store.stdout)}",
            hint="run as root (a single-user store in /nix) or start the daemon: nix-daemon &",
        )


def nix_works() -> bool:
    """True when nix is installed, has flakes and can build here (for `--backend auto`)."""
    if shutil.which("nix") is None:
        return False
    try:
        check_nix()
    except (UserError, WorkError):
        return False
    return True


def last_line(output: bytes) -> str:
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def json_output(output: bytes) -> Any:
    """The JSON value nix printed; run() merges stderr, so skip nix's warning lines."""
    for line in reversed(output.decode("utf-8", "replace").splitlines()):
        if line.startswith(("{", "[", '"')) or line in {"true", "false", "null"}:
            return json.loads(line)
    raise WorkError(f"nix printed no JSON value: {last_line(output)!r}")
