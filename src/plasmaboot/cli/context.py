"""What every command shares: the options of the top-level group, the consoles, and the
one way a plasmaboot error reaches the user (one line, a hint, the exit code)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from plasmaboot.errors import PlasmabootError
from plasmaboot.profiles.store import ProfileStore

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
            if isinstance(ctx.obj, Context) and ctx.obj.debug:
                raise
            report_error(exc)
            sys.exit(exc.exit_code)


def report_error(exc: PlasmabootError) -> None:
    # escape: messages quote TOML ("[services.iam]"), which rich would take for markup;
    # soft_wrap: a message stays one line whatever the terminal width.
    kind = "error" if exc.exit_code == 2 else "failed"
    line = f"[bold red]{kind}:[/] {escape(exc.message)}"
    err_console.print(line, markup=True, highlight=False, soft_wrap=True)
    if exc.hint:
        hint = f"[dim]hint:[/] {escape(exc.hint)}"
        err_console.print(hint, markup=True, highlight=False, soft_wrap=True)
