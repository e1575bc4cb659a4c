"""`plasmaboot check`: the Nix side (parse, Nix-vs-Python profile parity, flake check)."""

from __future__ import annotations

from pathlib import Path

import click

from plasmaboot.cli.context import console
from plasmaboot.errors import UserError, WorkError


@click.command()
@click.option(
    "--flake",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The plasmaboot flake directory (default: this checkout).",
)
@click.option(
    "--eval-only",
    is_flag=True,
    help="Skip `nix flake check` (it fetches nixpkgs); only parse and compare profiles.",
)
def check(flake: Path | None, eval_only: bool) -> None:
    """Check the Nix side: parse every .nix file, prove nix/lib/profiles.nix resolves every
    profile and variant as the Python loader does, then run `nix flake check`."""
    import shutil

    from plasmaboot.image.backends.nix import (
        check_nix,
        default_flake,
        nix_command,
        nix_files,
        parse_nix_files,
        profile_differences,
    )
    from plasmaboot.run import run

    root = flake or default_flake()
    if shutil.which("nix") is None:
        raise UserError(
            "check skipped: nix is not installed, so the flake cannot be evaluated",
            hint="install it: apt-get install nix-bin (or run `make setup`)",
        )
    check_nix()
    files = nix_files(root)
    parse_nix_files(files)
    console.print(f"parsed {len(files)} .nix files")
    problems = profile_differences(root / "profiles", root / "nix" / "lib" / "profiles.nix")
    if problems:
        raise WorkError(
            "nix/lib/profiles.nix and the Python loader disagree:\n  " + "\n  ".join(problems)
        )
    console.print("profiles: Nix and Python resolve every profile and variant alike")
    if eval_only:
        console.print("nix flake check: skipped (--eval-only)")
        return
    run(nix_command("flake", "check", str(root.resolve()), "--print-build-logs"))
    console.print("nix flake check: passed")
