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


token_ttl_option = click.option(
    "--token-ttl",
    type=click.FloatRange(min=0.1, max=24 * 60),
    default=15,
    show_default=True,
    metavar="MINUTES",
    help="With --inventory: how long a machine's host-key token (issued with its script) "
    "may be used for its report.",
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
    help="Close a connection that sent no complete request within SECONDS of opening "
    "(or of its previous response).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=5,
    show_default=True,
    metavar="SECONDS",
    help="Close a connection that sends nothing for SECONDS (idle keep-alive, half-open).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1, max=65536),
    metavar="N",
    help="Connections open at once (default: 256, fewer under a low descriptor limit); one "
    "more closes the longest-idle connection, or gets 503 when all are busy.",
)
@click.option(
    "--menu-timeout",
    type=click.FloatRange(min=1, max=3600),
    default=10,
    show_default=True,
    metavar="SECONDS",
    help="The /boot.ipxe menu boots its first entry after SECONDS.",
)
@click.option(
    "--operator-files",
    is_flag=True,
    help="Also serve each set's manifest.json and build.log (nodes need neither; they name "
    "build-host paths and packages).",
)
@click.option(
    "--admin-listen",
    metavar="HOST:PORT",
    help="Serve the status page (/) and /metrics here instead of on --listen.",
)
@inventory_option
@token_ttl_option
@pass_context
def serve(
    obj: Context,
    root: Path,
    listen: str,
    allow_remote: bool,
    public_url: str | None,
    access_log: Path | None,
    request_timeout: float,
    idle_timeout: float,
    max_connections: int | None,
    menu_timeout: float,
    operator_files: bool,
    admin_listen: str | None,
    inventory: Path | None,
    token_ttl: float,
) -> None:
    """Serve artifact sets and iPXE boot scripts over HTTP until Ctrl-C.

    \b
    Nodes chain  http://HOST:PORT/boot.ipxe               (menu of labels)
             or  http://HOST:PORT/boot.ipxe?profile=LABEL
             or  http://HOST:PORT/LABEL/netboot.ipxe
    With --inventory, only known machines boot:
                 http://HOST:PORT/boot.ipxe?mac=${net0/mac}  (its profile's set, its own
                 kernel parameters; unknown MACs get a script that says why and stops)
    Status page  http://HOST:PORT/   Prometheus  http://HOST:PORT/metrics
                 (on --admin-listen instead, when given)
    """
    from plasmaboot.serve.app import (
        boot_limits,
        check_listen,
        limits_of,
        parse_listen,
        serve_forever,
    )

    host, port = parse_listen(listen)
    check_listen(host, allow_remote)
    admin = admin_address(admin_listen, allow_remote) if admin_listen is not None else None
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
        limits=boot_limits(
            limits_of(request_timeout, idle_timeout, max_connections),
            admin=admin is not None,
            chosen=max_connections is not None,
        ),
        operator_files=operator_files,
        menu_timeout=menu_timeout,
        announce=lambda line: click.echo(line, err=True),
        token_ttl=token_ttl * 60,
        admin=admin,
    )


def admin_address(value: str, allow_remote: bool) -> tuple[str, int]:
    """--admin-listen, checked by --listen's rules, its errors naming --admin-listen."""
    from plasmaboot.serve.app import check_listen, parse_listen

    try:
        host, port = parse_listen(value)
        check_listen(host, allow_remote)
    except UserError as exc:
        message = exc.message.replace("--listen", "--admin-listen", 1)
        raise UserError(message, hint=exc.hint) from exc
    return host, port


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
