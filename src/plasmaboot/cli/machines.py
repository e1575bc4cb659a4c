"""`plasmaboot machines list|show|check|known-hosts|schema|reinstall`: the machine
inventory (machines.toml), what its machines reported (known-hosts) and what serve answers
an installed machine (reinstall)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from plasmaboot.cli.context import Context, console, pass_context
from plasmaboot.errors import UserError
from plasmaboot.inventory.installed import clear_installed
from plasmaboot.inventory.load import Inventory, load_inventory
from plasmaboot.inventory.model import Machine, inventory_json_schema
from plasmaboot.inventory.state import known_hosts, known_hosts_lines

F = TypeVar("F", bound=Callable[..., Any])


def inventory_option(function: F) -> F:
    """`--inventory FILE`, with $PLASMABOOT_INVENTORY as its default."""
    option = click.option(
        "--inventory",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="PLASMABOOT_INVENTORY",
        help="The machine inventory (machines.toml) [default: $PLASMABOOT_INVENTORY].",
    )
    return option(function)


def inventory_path(inventory: Path | None) -> Path:
    """The inventory given with --inventory (or $PLASMABOOT_INVENTORY); none is a user error."""
    if inventory is None:
        raise UserError(
            "--inventory: no inventory given",
            hint="pass --inventory machines.toml or set PLASMABOOT_INVENTORY",
        )
    return inventory


def require_inventory(obj: Context, inventory: Path | None) -> Inventory:
    return load_inventory(inventory_path(inventory), obj.store())


def machine_json(machine: Machine) -> dict[str, Any]:
    return {**machine.model_dump(mode="json"), "label": machine.label}


@click.group()
def machines() -> None:
    """The machine inventory: which machine boots what (see docs/pxe-server.md)."""


@machines.command("list")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
def machines_list(obj: Context, inventory: Path | None, as_json: bool) -> None:
    """List the machines: name, MACs, set they boot, host name, address, labels."""
    found = require_inventory(obj, inventory)
    if as_json:
        click.echo(json.dumps([machine_json(m) for m in found.machines.values()], indent=2))
        return
    # escape: a label like "[/]" is text, not rich markup
    table = Table(title=escape(f"machines ({found.path})"))
    for column in ("machine", "mac", "boots", "hostname", "ipv4", "labels"):
        table.add_column(column, overflow="fold")
    for machine in found.machines.values():
        labels = ", ".join(f"{k}={v}" for k, v in machine.labels.items()) or "-"
        cells = (machine.name, "\n".join(machine.macs), machine.label, machine.hostname)
        table.add_row(*map(escape, (*cells, machine.ipv4 or "dhcp", labels)))
    console.print(table)


@machines.command("show")
@click.argument("name")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
def machines_show(obj: Context, name: str, inventory: Path | None, as_json: bool) -> None:
    """Show one machine NAME with its defaults applied."""
    found = require_inventory(obj, inventory)
    machine = found.machines.get(name)
    if machine is None:
        by_mac = found.find(name)
        if by_mac is None:
            raise UserError(
                f"no machine {name!r} in {found.path}",
                hint=f"known machines: {', '.join(found.machines) or '(none)'}",
            )
        machine = by_mac
    if as_json:
        click.echo(json.dumps(machine_json(machine), indent=2))
        return
    console.print(f"[bold]{machine.name}[/]: boots {escape(machine.label)}", highlight=False)
    rows = {
        "macs": ", ".join(machine.macs),
        "hostname": machine.hostname,
        "ipv4": machine.ipv4 or "dhcp",
        "kernel params": " ".join(machine.kernel_params) or "-",
        "ssh keys": ", ".join(machine.ssh_keys) or "-",
        "labels": ", ".join(f"{k}={v}" for k, v in machine.labels.items()) or "-",
        "layout": machine.layout or "(the profile's default)",
        "services": ", ".join(machine.services or ()) or "-",
    }
    for key, value in rows.items():
        console.print(f"  {key + ':':<15}{escape(value)}", highlight=False)


@machines.command("check")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print {ok, machines} as JSON.")
@pass_context
def machines_check(obj: Context, inventory: Path | None, as_json: bool) -> None:
    """Check the inventory: exit 0 when it is valid, 2 with one line naming the problem."""
    found = require_inventory(obj, inventory)
    if as_json:
        click.echo(json.dumps({"ok": True, "machines": len(found.machines)}))
        return
    macs = sum(len(m.macs) for m in found.machines.values())
    summary = f"{found.path}: {len(found.machines)} machines, {macs} MACs: valid"
    console.print(escape(summary), highlight=False)


@machines.command("known-hosts")
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="Print each machine's record as JSON.")
@pass_context
def machines_known_hosts(obj: Context, inventory: Path | None, as_json: bool) -> None:
    """Print known_hosts lines (`HOSTNAME,ADDRESS KEY`) of the host keys machines reported
    at their last boot, for `ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=FILE`.

    A report came once per boot with a one-time token from the address the token was
    bound to: MACs and addresses are hints, not proof of a machine's identity.
    """
    found = require_inventory(obj, inventory)
    if as_json:
        records = [
            {"hostname": hostname, **record.as_json()} for hostname, record in known_hosts(found)
        ]
        click.echo(json.dumps(records, indent=2))
        return
    for line in known_hosts_lines(found):
        click.echo(line)


@machines.command("schema")
def machines_schema() -> None:
    """Print the JSON Schema of machines.toml (for editors)."""
    click.echo(json.dumps(inventory_json_schema(), indent=2))


@machines.command("reinstall")
@click.argument("name")
@inventory_option
@pass_context
def machines_reinstall(obj: Context, name: str, inventory: Path | None) -> None:
    """Mark machine NAME for reinstall: its next PXE boot gets its image again, not its disk."""
    found = require_inventory(obj, inventory)
    if name not in found.machines:
        raise UserError(
            f"no machine {name!r} in {found.path}",
            hint=f"known machines: {', '.join(found.machines) or '(none)'}",
        )
    if clear_installed(found.path, name):
        console.print(f"{escape(name)}: marked for reinstall (its next PXE boot gets its image)")
    else:
        console.print(f"{escape(name)}: not installed; nothing to do")
