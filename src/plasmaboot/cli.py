"""The plasmaboot command line: profiles, schema, build, verify, serve, boot-test.

Exit codes: 0 success, 1 a failure while working, 2 bad input or usage. A user error is one
line (what, where) plus a hint; a traceback only with --debug.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from plasmaboot import __version__
from plasmaboot.errors import PlasmabootError
from plasmaboot.profiles import Profile, ProfileStore, profile_json_schema

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


class Context:
    """Options shared by every command."""

    def __init__(self, debug: bool, profiles_dirs: tuple[Path, ...]) -> None:
        self.debug = debug
        self.profiles_dirs = profiles_dirs

    def store(self) -> ProfileStore:
        return ProfileStore(self.profiles_dirs)


pass_context = click.make_pass_decorator(Context)


class Group(click.Group):
    """Turns plasmaboot errors into one clean line and the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PlasmabootError as exc:
            if "--debug" in sys.argv:
                raise
            report_error(exc)
            sys.exit(exc.exit_code)


def report_error(exc: PlasmabootError) -> None:
    kind = "error" if exc.exit_code == 2 else "failed"
    err_console.print(f"[bold red]{kind}:[/] {exc.message}", markup=True, highlight=False)
    if exc.hint:
        err_console.print(f"[dim]hint:[/] {exc.hint}", markup=True, highlight=False)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="plasmaboot")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--profiles-dir",
    "profiles_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    envvar="PLASMABOOT_PROFILES_DIR",
    help="Extra directory of <name>.toml profiles (searched before the built-in ones).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool, profiles_dirs: tuple[Path, ...]) -> None:
    """Build, verify, publish, serve and boot-test PlasmaCloud netboot images.

    \b
    Typical flow:
      plasmaboot profiles list
      plasmaboot build --profile control-plane --ssh-key ~/.ssh/id_ed25519.pub
      plasmaboot verify artifacts/control-plane
      plasmaboot boot-test control-plane --identity ~/.ssh/id_ed25519
      plasmaboot serve --root artifacts
    """
    ctx.obj = Context(debug, profiles_dirs)


# --------------------------------------------------------------------------------------
# profiles


@main.group()
def profiles() -> None:
    """List and show profiles (TOML files; see README: Profiles)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
def profiles_list(obj: Context, as_json: bool) -> None:
    """List profiles: name, extends, description, services."""
    store = obj.store()
    resolved = [store.resolve(name) for name in store.profile_names()]
    if as_json:
        rows = [
            {
                "name": p.name,
                "extends": p.extends,
                "description": p.description,
                "services": list(p.services),
            }
            for p in resolved
        ]
        click.echo(json.dumps({"profiles": rows, "variants": store.variant_names()}, indent=2))
        return
    table = Table(title="profiles")
    for column in ("name", "extends", "description", "services"):
        table.add_column(column)
    for p in resolved:
        services = ", ".join(p.services) if p.services else "-"
        table.add_row(p.name, ", ".join(p.extends) or "-", p.description, services)
    console.print(table)
    console.print(f"variants (--variant): {', '.join(store.variant_names())}")


@profiles.command("show")
@click.argument("name")
@click.option("--variant", help="Apply a variant (minimal, debug, rescue, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved profile as JSON.")
@pass_context
def profiles_show(obj: Context, name: str, variant: str | None, as_json: bool) -> None:
    """Show the fully resolved profile NAME (inheritance and variant applied)."""
    profile = obj.store().resolve(name, variant)
    if as_json:
        body = profile.model_dump(mode="json")
        body["content_hash"] = profile.content_hash()
        click.echo(json.dumps(body, indent=2))
        return
    print_profile(profile)


def print_profile(profile: Profile) -> None:
    console.print(f"[bold]{profile.label}[/]: {profile.description}")
    console.print(f"  sources:  {', '.join(profile.sources)}")
    console.print(f"  packages: {', '.join(profile.packages)}")
    console.print(f"  kernel:   {' '.join(profile.kernel_params)}")
    if profile.kernel_modules:
        console.print(f"  modules:  {', '.join(profile.kernel_modules)}")
    for key, value in profile.sysctl.items():
        console.print(f"  sysctl:   {key} = {value}")
    if profile.services:
        table = Table(title="services")
        for column in ("service", "enabled", "ports", "MemoryMax", "CPUQuota", "package"):
            table.add_column(column)
        for svc in profile.services.values():
            ports = ", ".join(f"{k}={v}" for k, v in svc.ports.items())
            table.add_row(
                svc.name,
                "yes" if svc.enable else "no",
                ports,
                svc.memory_max or "-",
                svc.cpu_quota or "-",
                svc.package_file or f"({svc.package_name}: not given)",
            )
        console.print(table)


@main.command()
def schema() -> None:
    """Print the JSON Schema of a profile file (for editors)."""
    click.echo(json.dumps(profile_json_schema(), indent=2))


# --------------------------------------------------------------------------------------
# check (the Nix side)


@main.command()
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

    from plasmaboot.build.nix import (
        check_nix,
        default_flake,
        nix_command,
        nix_files,
        parse_nix_files,
        profile_differences,
    )
    from plasmaboot.errors import UserError, WorkError
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
