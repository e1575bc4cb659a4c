"""`plasmaboot build` and `plasmaboot publish`, with live progress and the build summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from plasmaboot.artifacts.layout import BOOT_FILES, MANIFEST, ensure_writable_dir
from plasmaboot.artifacts.publish import check_not_own_directory, publish_atomically
from plasmaboot.cli.context import Context, console, err_console, pass_context
from plasmaboot.errors import UserError
from plasmaboot.image.backend import OptionInfo
from plasmaboot.image.backends import AUTO, backend_types, choices, options_from_values
from plasmaboot.image.pipeline import BuildOptions, BuildOutcome, build_profiles
from plasmaboot.report.metrics import build_metrics_text, check_metrics_file, write_metrics_file
from plasmaboot.verify.manifest import check_manifest

F = TypeVar("F", bound=Callable[..., Any])


def click_type(info: OptionInfo) -> Any:
    """The click type that parses a backend option's values."""
    if info.value_type is Path:
        return click.Path(path_type=Path)
    if info.value_type is int and info.minimum is not None and info.maximum is not None:
        return click.IntRange(info.minimum, info.maximum)
    return info.value_type


def backend_options(command: F) -> F:
    """Every backend's options, made from the backends' own descriptions (defaults, help,
    ranges), in the order the backends registered."""
    for backend in reversed(backend_types()):
        for info in reversed(backend.options.describe()):
            command = click.option(
                info.flag,
                info.name,
                type=click_type(info),
                default=info.default,
                show_default=info.default is not None,
                metavar=info.metavar,
                help=f"{backend.name.capitalize()} backend: {info.help}.",
            )(command)
    return command


@click.command()
@click.option("--profile", "-p", "profile_names", multiple=True, help="Profile to build (repeat).")
@click.option("--all", "build_all", is_flag=True, help="Build every profile.")
@click.option("--variant", help="Variant applied to each profile (minimal, debug, rescue, ...).")
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Artifacts go to OUTPUT_DIR/<profile>/.",
)
@click.option(
    "--pxe-dir",
    type=click.Path(path_type=Path),
    help="Also publish bzImage, initrd, netboot.ipxe atomically to PXE_DIR/<profile>/.",
)
@click.option(
    "--backend",
    type=click.Choice(choices()),
    default=AUTO,
    show_default=True,
    help="auto = nix where a working nix with flakes is present, else debian.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Profiles built in parallel.",
)
@click.option(
    "--no-cache", is_flag=True, help="Rebuild from scratch (downloaded .debs are still reused)."
)
@click.option(
    "--ssh-key",
    "ssh_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Public key file for root's authorized_keys (repeat). Private keys are refused.",
)
@click.option(
    "--metrics-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the build's figures in Prometheus text format (node_exporter textfile).",
)
@click.option(
    "--no-ssh-key",
    "no_ssh_key",
    is_flag=True,
    help="Build even if no key (--ssh-key or the profile's) can log into the image.",
)
@backend_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary for scripts.")
@pass_context
def build(
    obj: Context,
    /,
    profile_names: tuple[str, ...],
    build_all: bool,
    variant: str | None,
    output_dir: Path,
    pxe_dir: Path | None,
    backend: str,
    jobs: int,
    no_cache: bool,
    ssh_keys: tuple[Path, ...],
    metrics_file: Path | None,
    no_ssh_key: bool,
    as_json: bool,
    **backend_values: Any,
) -> None:
    """Build netboot artifacts into OUTPUT_DIR/<profile>/ (bzImage, initrd, netboot.ipxe, ...).

    \b
    Examples:
      plasmaboot build --profile control-plane --ssh-key ~/.ssh/id_ed25519.pub
      plasmaboot build --all --jobs 2 --pxe-dir /srv/pxe/assets/nixos
      plasmaboot build -p worker --variant debug --backend debian
      plasmaboot build -p worker --backend nix --plasmacloud path:../plasmacloud
    """
    store = obj.store()
    names = list(profile_names)
    if build_all:
        names += [n for n in store.profile_names() if n not in names]
    if not names:
        raise UserError("no profile given", hint="pass --profile NAME (repeatable) or --all")
    names = list(dict.fromkeys(names))  # a profile given twice is built once
    if metrics_file is not None:
        check_metrics_file(metrics_file)
    if no_ssh_key and ssh_keys:
        raise UserError(
            f"--no-ssh-key: expected no --ssh-key with it, got {', '.join(map(str, ssh_keys))}",
            hint="drop one of the two",
        )
    resolved = [store.resolve(name, variant) for name in names]
    options = BuildOptions(
        output_dir=output_dir.absolute(),
        pxe_dir=pxe_dir.absolute() if pxe_dir else None,
        backend=backend,
        backend_options=options_from_values(backend_values),
        jobs=jobs,
        use_cache=not no_cache,
        ssh_keys=ssh_keys,
        allow_no_keys=no_ssh_key,
    )
    with BuildProgress(err_console, quiet=as_json) as progress:
        outcomes = build_profiles(
            resolved, options, progress.update, on_backend=progress.announce_backend
        )
    if metrics_file is not None:
        write_metrics_file(metrics_file, build_metrics_text(o.record for o in outcomes))
    if as_json:
        click.echo(json.dumps([outcome_json(o) for o in outcomes], indent=2))
    else:
        print_summary(outcomes)


@click.command()
@click.argument("sets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--pxe-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="PXE server assets directory; each set goes to PXE_DIR/<label>/.",
)
def publish(sets: tuple[Path, ...], pxe_dir: Path) -> None:
    """Publish built artifact SETS (e.g. artifacts/worker) to a PXE server's assets directory.

    Copies bzImage, initrd and netboot.ipxe to PXE_DIR/<label>/ atomically: the new set
    appears whole or not at all, and the previous one stays for nodes still downloading it.
    Every file is checked against manifest.json first, and the bytes copied are checked
    again: a damaged set, or one that changes while it is copied, is refused. The published
    netboot.ipxe names its own set directory (PXE_DIR/.sets/<label>-<id>/).
    """
    checked = []
    for directory in sets:
        if not (directory / MANIFEST).is_file():
            raise UserError(
                f"{directory}: no {MANIFEST}, so this is not an artifact set",
                hint="give a directory a build wrote, e.g. artifacts/<profile>",
            )
        checks, manifest = check_manifest(directory)  # the same byte check `verify` makes
        problems = [f"{c.name}: {c.detail}" for c in checks if c.failed]
        if problems or manifest is None:
            raise UserError(
                f"{directory}: refusing to publish: {'; '.join(problems)}",
                hint="rebuild it (plasmaboot build --no-cache)",
            )
        check_not_own_directory(directory, pxe_dir)
        checked.append((directory, manifest))
    ensure_writable_dir(pxe_dir, "--pxe-dir")
    for directory, manifest in checked:
        label = manifest.label
        published = publish_atomically(
            directory, pxe_dir.absolute(), label, BOOT_FILES, expected=manifest.files
        )
        console.print(f"{label}: published to {pxe_dir / label} ({published.name})")


def outcome_json(outcome: BuildOutcome) -> dict[str, Any]:
    return {
        "profile": outcome.profile.name,
        "variant": outcome.profile.variant,
        "label": outcome.profile.label,
        "backend": outcome.backend,
        "kernel_version": outcome.kernel_version,
        "kernel_size": outcome.kernel_size,
        "initrd_size": outcome.initrd_size,
        "total_size": outcome.total_size,
        "seconds": round(outcome.seconds, 2),
        "cache_hit": outcome.cache_hit,
        "path": str(outcome.path),
        "published": str(outcome.published) if outcome.published else None,
        "warnings": outcome.warnings,
        "layers": outcome.layers,
    }


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def print_summary(outcomes: list[BuildOutcome]) -> None:
    table = Table(title="build summary")
    columns = ("profile", "variant", "backend", "kernel", "initrd", "total", "time", "cache")
    for column in (*columns, "layers"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(
            o.profile.name,
            o.profile.variant or "-",
            o.backend,
            mib(o.kernel_size),
            mib(o.initrd_size),
            mib(o.total_size),
            f"{o.seconds:.1f}s",
            "hit" if o.cache_hit else "miss",
            layers_cell(o.layers),
        )
    console.print(table)
    for o in outcomes:
        for warning in o.warnings:
            console.print(f"[yellow]warning[/] {o.profile.label}: {warning}", highlight=False)
        console.print(
            f"{o.profile.label}: {o.path}"
            + (f" (published to {o.published})" if o.published else "")
        )


def layers_cell(layers: dict[str, str]) -> str:
    """`10-packages reused, 50-profile built`; `-` for an image without layers (Nix)."""
    shown = [(name, state) for name, state in layers.items() if name != "stage1"]
    return ", ".join(f"{name} {state}" for name, state in shown) or "-"


class BuildProgress:
    """Live progress per profile on a terminal. Otherwise (a CI log, `| tee`) one line per
    step when it ends, with its duration: a step's end (`mmdebstrap done in 312.4s`), and
    each phase a step reports while it runs (`mmdebstrap: downloading`), printed when the
    next one begins."""

    def __init__(self, out: Console, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.live = out.is_terminal and not quiet
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        # per subject: the phase or step start not yet printed, and when it began
        self.pending: dict[str, tuple[str, float]] = {}

    def __enter__(self) -> BuildProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()
        if exc and exc[0] is not None:
            self.pending.clear()  # the error says what happened; no half-step line before it
        for subject in list(self.pending):
            self.flush(subject, final=True)

    def announce_backend(self, name: str) -> None:
        if not self.quiet:
            self.out.print(f"backend: {name}")

    def line(self, subject: str, text: str) -> None:
        self.out.print(f"{time.strftime('%H:%M:%S')} {subject}: {text}", highlight=False)

    def flush(self, subject: str, final: bool = False) -> None:
        """Print the pending phase with its duration. A step's start is not printed (its
        end is, with the duration), unless nothing followed it (e.g. `cache hit`)."""
        text, started = self.pending.pop(subject)
        if ": " in text or final:
            self.line(subject, f"{text} ({time.monotonic() - started:.1f}s)")

    def update(self, subject: str, step: str, seconds: float | None) -> None:
        if self.quiet:
            return
        if not self.live:
            if subject in self.pending:
                self.flush(subject)
            if seconds is None:
                self.pending[subject] = (step, time.monotonic())
            else:
                self.line(subject, f"{step} done in {seconds:.1f}s")
            return
        if subject not in self.tasks:
            self.tasks[subject] = self.progress.add_task(subject, total=None)
        text = f"[bold]{subject}[/]: {escape(step)}" + (f" ({seconds:.1f}s)" if seconds else "")
        self.progress.update(self.tasks[subject], description=text)
