"""`plasmaboot report` (plots of the build history and of the current images) and
`plasmaboot diff` (what changed between two sets)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from plasmaboot.cli.context import console
from plasmaboot.errors import UserError


@click.command()
@click.option(
    "--artifacts",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("artifacts"),
    show_default=True,
    help="The directory builds write (build --output-dir): its history and current sets.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("report"),
    show_default=True,
    help="Where index.html, the plots (PNG) and report.json go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON too.")
def report(artifacts: Path, output: Path, as_json: bool) -> None:
    """A static HTML report with plots: size over builds, where an image's bytes go, seconds
    per build step. Open OUTPUT/index.html in a browser; no server is needed.

    \b
    Example:
      plasmaboot report --artifacts artifacts --output report && xdg-open report/index.html
    """
    from plasmaboot.report.figures import collect_figures
    from plasmaboot.report.render import INDEX, render_report

    if not artifacts.is_dir():
        raise UserError(
            f"--artifacts {artifacts}: no such directory",
            hint="give the directory `plasmaboot build --output-dir` wrote (default artifacts)",
        )
    document = render_report(collect_figures(artifacts), output)
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    console.print(
        f"report of {document['builds']} builds and {len(document['images'])} current sets: "
        f"{output / INDEX}",
        highlight=False,
    )


@click.command()
@click.argument("set_a", type=click.Path(path_type=Path, file_okay=False))
@click.argument("set_b", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.option(
    "--top", type=click.IntRange(1), default=20, show_default=True, help="Package sizes shown."
)
def diff(set_a: Path, set_b: Path, as_json: bool, top: int) -> None:
    """What changed from SET_A to SET_B: packages, their sizes, settings, kernel, files.

    \b
    Examples:
      plasmaboot diff artifacts/.sets/worker-1a2b... artifacts/worker
      plasmaboot diff old/control-plane artifacts/control-plane --json
    """
    from plasmaboot.report.diff import diff_lines, diff_sets, load_set

    changes = diff_sets(load_set(set_a, "SET_A"), load_set(set_b, "SET_B"))
    if as_json:
        click.echo(json.dumps(changes, indent=2, sort_keys=True))
        return
    for line in diff_lines(changes, top):
        console.print(line, highlight=False, markup=False)
