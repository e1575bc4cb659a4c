"""`plasmaboot verify`: the checks of a set as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from plasmaboot.cli.context import console
from plasmaboot.errors import WorkError
from plasmaboot.verify import Outcome, verify_set


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {ok, checks} as JSON for scripts.")
def verify(directory: Path, as_json: bool) -> None:
    """Read the artifact set in DIRECTORY back and check it, trusting nothing the build says:
    kernel header, initrd segments, root squashfs, image security, iPXE script, hashes.

    Exit 0 when every check passes, 1 when any fails, 2 when DIRECTORY is not a set.
    """
    from rich.text import Text

    report = verify_set(directory)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        styles = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.SKIP: "yellow"}
        table = Table(title=Text(f"verify {directory}"))
        for column in ("check", "result", "detail"):
            table.add_column(column)
        for check in report.checks:
            result = Text(str(check.result), style=styles[check.result])
            table.add_row(Text(check.name), result, Text(check.detail))
        console.print(table)
    if not report.ok:
        names = ", ".join(check.name for check in report.failures)
        raise WorkError(f"verify {directory}: {len(report.failures)} checks failed: {names}")
