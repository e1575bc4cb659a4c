"""The plasmaboot command line: profiles, schema, build, publish, verify, serve, machines,
pxe-server, check, boot-test, report, diff and install, one module per command group.

Exit codes: 0 success, 1 a failure while working, 2 bad input or usage. A user error is one
line (what, where) plus a hint; a traceback only with --debug.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from plasmaboot import __version__
from plasmaboot.cli.context import Context, Group, console, err_console

__all__ = ["console", "err_console", "main"]

# Each command by name, as "module:attribute". A command's module is imported when the
# command runs (or help lists it): a no-change rebuild spent most of its CPU importing the
# serve, pxe-server and boot-test code (aiohttp, the inventory models) it never ran.
COMMANDS = {
    "profiles": "plasmaboot.cli.profiles:profiles",
    "schema": "plasmaboot.cli.profiles:schema",
    "machines": "plasmaboot.cli.machines:machines",
    "build": "plasmaboot.cli.build:build",
    "publish": "plasmaboot.cli.build:publish",
    "verify": "plasmaboot.cli.verify:verify",
    "serve": "plasmaboot.cli.serve:serve",
    "pxe-server": "plasmaboot.cli.pxe:pxe_server",
    "check": "plasmaboot.cli.check:check",
    "boot-test": "plasmaboot.cli.boot:boot_test",
    "report": "plasmaboot.cli.report:report",
    "diff": "plasmaboot.cli.report:diff",
    "install": "plasmaboot.cli.install:install",
}


class LazyGroup(Group):
    """The top-level group: commands added with add_command, then COMMANDS, imported on
    first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMANDS:
            module, _, attribute = COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
