"""What every command shares: the options of the top-level group (accepted after the
subcommand too), the consoles (whole lines and whole tables when the output is not a
terminal), and the one way a plasmaboot error reaches the user (one line, a hint, the exit
code)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import rich.console
from rich.console import ConsoleDimensions
from rich.markup import escape

from plasmaboot.errors import PlasmabootError
from plasmaboot.profiles.store import ProfileStore

# When the output is not a terminal (a CI log, `| tee`), the width a table may take: wide
# enough that no column is cut. COLUMNS, when set, still wins.
PIPE_WIDTH = 4096


class Console(rich.console.Console):
    """rich's Console, except when writing to something other than a terminal: then lines
    are never wrapped (soft wrap) and tables never cut to 80 columns."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._width is not None or "COLUMNS" in os.environ:
            return size
        return ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def print(self, *objects: Any, **options: Any) -> None:
        if options.get("soft_wrap") is None and not self.is_terminal:
            options["soft_wrap"] = True
        super().print(*objects, **options)


console = Console()
err_console = Console(stderr=True)

# Options of the top-level group, also accepted after the subcommand
# (`plasmaboot build --profiles-dir DIR` as well as `plasmaboot --profiles-dir DIR build`).
GLOBAL_FLAGS = ("--debug",)
GLOBAL_VALUE_OPTIONS = ("--profiles-dir",)


def command_position(args: list[str]) -> int | None:
    """Where the subcommand's name is: the first argument that is not a global option or
    its value."""
    index = 0
    while index < len(args):
        if args[index] in GLOBAL_VALUE_OPTIONS:
            index += 2
        elif args[index].startswith("-"):
            index += 1
        else:
            return index
    return None


def hoist_global_options(
    group: click.Group, args: list[str], ctx: click.Context | None = None
) -> list[str]:
    """Move the global options found after the subcommand to before it. A subcommand's own
    option of the same name, and anything after `--`, stay where they are. The subcommand is
    looked up with `get_command`: the top-level group imports its commands on first use."""
    position = command_position(args)
    if position is None:
        return args
    command = group.get_command(ctx or click.Context(group), args[position])
    if command is None:
        return args
    own = {name for param in command.params for name in getattr(param, "opts", [])}
    moved: list[str] = []
    rest: list[str] = []
    tail = args[position + 1 :]
    index = 0
    while index < len(tail):
        arg = tail[index]
        name = arg.split("=", 1)[0]
        if arg == "--":
            rest += tail[index:]
            break
        if name in own:
            rest.append(arg)
        elif arg in GLOBAL_FLAGS or (name in GLOBAL_VALUE_OPTIONS and "=" in arg):
            moved.append(arg)
        elif arg in GLOBAL_VALUE_OPTIONS and index + 1 < len(tail):
            moved += [arg, tail[index + 1]]
            index += 1
        else:
            rest.append(arg)
        index += 1
    return [*args[:position], *moved, args[position], *rest]


class Context:
    """Options shared by every command."""

    def __init__(self, debug: bool, profiles_dirs: tuple[Path, ...]) -> None:
        self.debug = debug
        self.profiles_dirs = profiles_dirs

    def store(self) -> ProfileStore:
        return ProfileStore(self.profiles_dirs)


pass_context = click.make_pass_decorator(Context)


class Group(click.Group):
    """Turns plasmaboot errors into one clean line and the right exit code, and takes the
    global options wherever they are typed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = hoist_global_options(self, args, ctx)
        return super().parse_args(ctx, args)

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
