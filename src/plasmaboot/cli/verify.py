"""`plasmaboot verify`: the checks of a set as a table or JSON."""

from __future__ import annotations

from pathlib import Path

import click

from plasmaboot.checks import render_checks
from plasmaboot.cli.context import console
from plasmaboot.errors import WorkError
from plasmaboot.verify import verify_set


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {ok, checks} as JSON for scripts.")
def verify(directory: Path, as_json: bool) -> None:
    """Read the artifact set in DIRECTORY back and check it, trusting nothing the build says:
    kernel header, initrd segments, root squashfs, image security, iPXE script, hashes.

    Exit 0 when every check passes, 1 when any fails, 2 when DIRECTORY is not a set.
    """
    report = verify_set(directory)
    if as_json:
        click.echo(report.to_json())
    else:
        console.print(render_checks(f"verify {directory}", report.checks))
    if not report.ok:
        names = ", ".join(check.name for check in report.failures)
        raise WorkError(f"verify {directory}: {len(report.failures)} checks failed: {names}")
