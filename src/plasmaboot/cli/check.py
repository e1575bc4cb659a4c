"""`plasmaboot check`: the Nix side (parse, Nix-vs-Python profile parity, flake check)."""

from __future__ import annotations

from pathlib import Path

import click

from plasmaboot.cli.context import console


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
    from plasmaboot.image.backends.nix import default_flake
    from plasmaboot.profiles.nixparity import check_flake

    check_flake(flake or default_flake(), eval_only, console.print)
