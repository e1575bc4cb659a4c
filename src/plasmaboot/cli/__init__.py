"""The plasmaboot command line: profiles, schema, build, publish, verify, serve, machines,
pxe-server, check, boot-test and install, one module per command group.

Exit codes: 0 success, 1 a failure while working, 2 bad input or usage. A user error is one
line (what, where) plus a hint; a traceback only with --debug.
"""

from __future__ import annotations

from pathlib import Path

import click

from plasmaboot import __version__
from plasmaboot.cli.boot import boot_test
from plasmaboot.cli.build import build, publish
from plasmaboot.cli.check import check
from plasmaboot.cli.context import Context, Group, console, err_console
from plasmaboot.cli.install import install
from plasmaboot.cli.machines import machines
from plasmaboot.cli.profiles import profiles, schema
from plasmaboot.cli.pxe import pxe_server
from plasmaboot.cli.serve import serve
from plasmaboot.cli.verify import verify

__all__ = ["console", "err_console", "main"]


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


COMMANDS = (
    profiles,
    schema,
    machines,
    build,
    publish,
    verify,
    serve,
    pxe_server,
    check,
    boot_test,
    install,
)
for command in COMMANDS:
    main.add_command(command)
