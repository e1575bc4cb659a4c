"""`plasmaboot profiles list|show` and `plasmaboot schema`."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from plasmaboot.cli.context import Context, console, pass_context
from plasmaboot.install.layout import layout_json_schema
from plasmaboot.profiles.model import Profile, profile_json_schema, setting_defaults


@click.group()
def profiles() -> None:
    """List and show profiles (TOML files; see README: Profiles)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
def profiles_list(obj: Context, as_json: bool) -> None:
    """List profiles: name, extends, description, services."""
    store = obj.store()
    resolved = [store.resolve(name) for name in store.profile_names()]
    variants = store.variant_names()  # a bad file name is an error before any output
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
        click.echo(json.dumps({"profiles": rows, "variants": variants}, indent=2))
        return
    table = Table(title="profiles")
    for column in ("name", "extends", "description", "services"):
        table.add_column(column)
    for p in resolved:
        services = ", ".join(p.services) if p.services else "-"
        # escape: a description or value like "[/]" is text, not rich markup
        table.add_row(*map(escape, (p.name, ", ".join(p.extends) or "-", p.description, services)))
    console.print(table)
    console.print(f"variants (--variant): {', '.join(variants)}")


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
    console.print(f"[bold]{profile.label}[/]: {escape(profile.description)}")
    console.print(f"  sources:  {escape(', '.join(profile.sources))}")
    console.print(f"  packages: {escape(', '.join(profile.packages))}")
    console.print(f"  kernel:   {escape(' '.join(profile.kernel.params))}")
    if profile.kernel.modules:
        console.print(f"  modules:  {escape(', '.join(profile.kernel.modules))}")
    for key, value in profile.sysctl.items():
        console.print(f"  sysctl:   {escape(f'{key} = {value}')}")
    if profile.services:
        table = Table(title="services")
        for column in ("service", "enabled", "ports", "MemoryMax", "CPUQuota", "package"):
            table.add_column(column)
        for svc in profile.services.values():
            ports = ", ".join(f"{k}={v}" for k, v in svc.ports.items())
            package = svc.package_file or f"({svc.package_name}: not given)"
            cells = (svc.name, "yes" if svc.enable else "no", ports)
            table.add_row(
                *map(escape, (*cells, svc.memory_max or "-", svc.cpu_quota or "-", package))
            )
        console.print(table)


@click.command()
@click.option(
    "--defaults",
    is_flag=True,
    help="Print the default of every setting instead (nix/lib/profile-defaults.json).",
)
@click.option("--layout", is_flag=True, help="Print the JSON Schema of a disk layout instead.")
def schema(defaults: bool, layout: bool) -> None:
    """Print the JSON Schema of a profile file (for editors)."""
    if layout:
        click.echo(json.dumps(layout_json_schema(), indent=2))
        return
    if defaults:
        click.echo(json.dumps(setting_defaults(), indent=2))
        return
    click.echo(json.dumps(profile_json_schema(), indent=2))
