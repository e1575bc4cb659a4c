"""`plasmaboot serve`: the HTTP side of PXE."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from plasmaboot.cli.context import Context, pass_context
from plasmaboot.cli.machines import inventory_option
from plasmaboot.errors import UserError
from plasmaboot.serve.machines import InventoryWatch

root_option = click.option(
    "--root",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory of published artifact sets (what `build --output-dir` wrote).",
)


@click.command()
@root_option
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="HOST:PORT to bind ([::1]:PORT for IPv6, port 0 picks a free one).",
)
@click.option("--allow-remote", is_flag=True, help="Allow binding an address other than loopback.")
@click.option(
    "--public-url",
    help="Base URL written into boot scripts (default: from each request's Host header).",
)
@click.option(
    "--access-log",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append access log lines (and refusals, inventory reloads) to this file, not stderr.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=1),
    default=30,
    show_default=True,
    metavar="SECONDS",
    help="Close a connection that sent no complete request within SECONDS (or idles as long).",
)
@inventory_option
@pass_context
def serve(
    obj: Context,
    root: Path,
    listen: str,
    allow_remote: bool,
    public_url: str | None,
    access_log: Path | None,
    request_timeout: float,
    inventory: Path | None,
) -> None:
    """Serve artifact sets and iPXE boot scripts over HTTP until Ctrl-C.

    \b
    Nodes chain  http://HOST:PORT/boot.ipxe               (menu of labels)
             or  http://HOST:PORT/boot.ipxe?profile=LABEL
             or  http://HOST:PORT/LABEL/netboot.ipxe
    With --inventory, only known machines boot:
                 http://HOST:PORT/boot.ipxe?mac=${net0/mac}  (its profile's set, its own
                 kernel parameters; unknown MACs get a script that says why and stops)
    """
    from plasmaboot.serve.app import check_listen, parse_listen, serve_forever

    host, port = parse_listen(listen)
    check_listen(host, allow_remote)
    if not root.is_dir():
        raise UserError(
            f"--root {root}: no such directory",
            hint="pass the directory `plasmaboot build --output-dir` wrote (e.g. artifacts)",
        )
    if access_log is not None:
        check_appendable(access_log, "--access-log")
    watch = InventoryWatch(inventory, obj.store()) if inventory is not None else None
    serve_forever(
        root,
        host,
        port,
        public_url=public_url,
        access_log=access_log,
        inventory=watch,
        request_timeout=request_timeout,
        announce=lambda line: click.echo(line, err=True),
    )


def check_appendable(path: Path, option: str) -> None:
    """`path` can take appended lines: created if missing, a regular file (or a character
    device such as /dev/null) if not. Opened without blocking, so a FIFO with no reader is
    refused at once instead of holding the start for ever."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, 0o644)
    except OSError as exc:
        raise UserError(
            f"{option} {path}: cannot append to it ({exc.strerror})",
            hint="pass a file in a directory you can write",
        ) from exc
    try:
        mode = os.fstat(descriptor).st_mode
    finally:
        os.close(descriptor)
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise UserError(
            f"{option} {path}: expected a regular file, got a FIFO or socket",
            hint="pass a file in a directory you can write",
        )
