"""Proof that the Nix side resolves profiles as the Python side does.

nix/lib/profiles.nix resolves profiles/*.toml on its own (a `nix build` needs no Python), into
the shape of the resolved Profile; here both sides resolve every profile and profile ×
variant, and every field of the Profile model is compared (those marked PythonOnly aside),
so a new setting is compared without being listed here. The Nix resolver takes its defaults
from nix/lib/profile-defaults.json, which must equal the model's defaults. `plasmaboot check`
runs all of it, with a parse of every .nix file and `nix flake check`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from plasmaboot.catalog import native_package_names
from plasmaboot.errors import UserError, WorkError
from plasmaboot.log import Log
from plasmaboot.nix import (
    PROBE_TIMEOUT,
    check_nix,
    json_output,
    last_line,
    nix_command,
)
from plasmaboot.paths import data_dir
from plasmaboot.profiles.model import Profile, PythonOnly, setting_defaults
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.run import run

NIX_LIB = Path("nix/lib/profiles.nix")
DEFAULTS_FILE = Path("nix/lib/profile-defaults.json")
# Beside the model's fields: the package list after catalog/packages.toml's [nix] map.
NIX_PACKAGES = "nixPackages"


def compared_fields(model: type[BaseModel]) -> list[str]:
    """The fields of `model` both sides must agree on: all but those marked PythonOnly."""
    return [
        name
        for name, field in model.model_fields.items()
        if not any(isinstance(mark, PythonOnly) for mark in field.metadata)
    ]


def comparable(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a resolved profile (either side's, as JSON) that are compared."""
    keys = [*compared_fields(Profile), NIX_PACKAGES]
    return {key: resolved[key] for key in keys if key in resolved}


def python_profiles(profiles_dir: Path) -> dict[str, dict[str, Any]]:
    """Every profile and profile × variant as the Python loader resolves it, by label."""
    store = ProfileStore([profiles_dir])
    resolved: list[Profile] = []
    for name in store.profile_names():
        resolved.append(store.resolve(name))
        resolved.extend(store.resolve(name, variant) for variant in store.variant_names())
    out: dict[str, dict[str, Any]] = {}
    for profile in resolved:
        body = profile.model_dump(mode="json")
        body[NIX_PACKAGES] = native_package_names("nix", profile.packages)[0]
        out[profile.label] = comparable(body)
    return out


def nix_profiles(profiles_dir: Path, lib_file: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every profile and profile × variant as nix/lib/profiles.nix resolves it, by label."""
    lib = lib_file or data_dir() / NIX_LIB
    proc = run(
        nix_command(
            "eval",
            "--json",
            "--file",
            str(lib),
            "--argstr",
            "profilesDir",
            str(profiles_dir.resolve()),
            "--argstr",
            "catalogDir",
            str((data_dir() / "catalog").resolve()),
            "all",
        ),
        timeout=PROBE_TIMEOUT,
    )
    resolved: dict[str, dict[str, Any]] = json_output(proc.stdout)
    return {label: comparable(body) for label, body in resolved.items()}


def profile_differences(profiles_dir: Path, lib_file: Path | None = None) -> list[str]:
    """Where the Nix and Python resolutions of the profiles in `profiles_dir` differ, one
    line per setting: `worker: network.mtu: python 9000 != nix null`."""
    python_side = python_profiles(profiles_dir)
    nix_side = nix_profiles(profiles_dir, lib_file)
    problems = [
        f"{label}: only the {side} side has it"
        for label, side in [
            *((label, "python") for label in python_side.keys() - nix_side.keys()),
            *((label, "nix") for label in nix_side.keys() - python_side.keys()),
        ]
    ]
    for label in sorted(python_side.keys() & nix_side.keys()):
        problems.extend(
            f"{label}: {line}" for line in value_differences(python_side[label], nix_side[label])
        )
    return sorted(problems)


def value_differences(python: Any, nix: Any, where: str = "") -> list[str]:
    """The differences of two JSON values, by key path (tables are compared key by key)."""
    if isinstance(python, dict) and isinstance(nix, dict):
        lines: list[str] = []
        for key in [*python, *(k for k in nix if k not in python)]:
            path = f"{where}.{key}" if where else str(key)
            if key not in nix:
                lines.append(f"{path}: only the python side has it")
            elif key not in python:
                lines.append(f"{path}: only the nix side has it")
            else:
                lines.extend(value_differences(python[key], nix[key], path))
        return lines
    if python != nix:
        return [f"{where}: python {json.dumps(python)} != nix {json.dumps(nix)}"]
    return []


def defaults_file_problem(root: Path) -> str | None:
    """Why the flake's nix/lib/profile-defaults.json is not the model's defaults, if so."""
    path = root / DEFAULTS_FILE
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{path}: cannot read it ({exc})"
    if written != setting_defaults():
        return f"{path}: not the defaults of the profile model"
    return None


def nix_files(root: Path) -> list[Path]:
    """The .nix files of a checkout (not those in hidden directories or the venv)."""
    return sorted(
        path
        for path in root.rglob("*.nix")
        if not any(part.startswith(".") for part in path.relative_to(root).parts[:-1])
    )


def parse_nix_files(paths: Iterable[Path], log: Log | None = None) -> None:
    """`nix-instantiate --parse` each file: a syntax error fails naming the file."""
    for path in paths:
        proc = run(["nix-instantiate", "--parse", str(path)], log=log, check=False)
        if proc.returncode != 0:
            raise WorkError(f"{path}: not valid Nix: {last_line(proc.stdout)}")


def check_flake(root: Path, eval_only: bool, say: Callable[[str], None]) -> None:
    """`plasmaboot check`: parse every .nix file of the flake at `root`, prove its profile
    defaults current and its resolver in step with Python's, then `nix flake check` (unless
    `eval_only`). `say` gets one line per step passed; a failed step raises."""
    if shutil.which("nix") is None:
        raise UserError(
            "check skipped: nix is not installed, so the flake cannot be evaluated",
            hint="install it: apt-get install nix-bin (or run `make setup`)",
        )
    check_nix()
    files = nix_files(root)
    parse_nix_files(files)
    say(f"parsed {len(files)} .nix files")
    stale = defaults_file_problem(root)
    if stale is not None:
        raise WorkError(
            stale, hint=f"regenerate it: plasmaboot schema --defaults > {root / DEFAULTS_FILE}"
        )
    say(f"{DEFAULTS_FILE}: the defaults of the profile model")
    problems = profile_differences(root / "profiles", root / NIX_LIB)
    if problems:
        raise WorkError(f"{NIX_LIB} and the Python loader disagree:\n  " + "\n  ".join(problems))
    say("profiles: Nix and Python resolve every profile and variant alike")
    if eval_only:
        say("nix flake check: skipped (--eval-only)")
        return
    run(nix_command("flake", "check", str(root.resolve()), "--print-build-logs"))
    say("nix flake check: passed")
