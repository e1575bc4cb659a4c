"""The HTTP server nodes boot from: artifact files, rendered iPXE scripts and a boot menu.

    GET /boot.ipxe                      menu of labels (or ?profile=<label>: chain to it)
    GET /<label>/netboot.ipxe           script pointing at /sets/<set>/... of the current set
    GET /<label>/{bzImage,initrd,manifest.json,build.log}    files of the current set
    GET /sets/<set>/{bzImage,initrd,...}                     files of one exact set

A script resolves the label's symlink once and names that set's directory, so a node that
fetched it gets the kernel and initrd of one set even if a publish happens meanwhile
(publishing keeps the previous set on disk). Requests are read-only; every path is checked
by `request_segments` before it comes near the filesystem.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
import signal
import sys
import threading
import time
from asyncio import to_thread
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from aiohttp import web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from plasmaboot.artifacts.layout import BUILD_LOG, INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.errors import UserError
from plasmaboot.formats import FormatError
from plasmaboot.formats.ipxe import BOOT_SCRIPT
from plasmaboot.inventory.load import Inventory
from plasmaboot.serve.connections import (
    GUARD_KEY,
    IDLE_TIMEOUT,
    ConnectionGuard,
    accept_backlog,
    default_connection_limit,
    track_requests,
)
from plasmaboot.serve.files import OpenFileResponse, open_within
from plasmaboot.serve.installed import local_boot_script
from plasmaboot.serve.machines import (
    InventoryWatch,
    ask_with_mac_script,
    look_up,
    machine_params,
    refusal_script,
)
from plasmaboot.serve.metrics import (
    METRICS_KEY,
    add_metrics,
    count_boot,
    count_refused,
    metrics_handler,
)
from plasmaboot.serve.nodes import NODES_KEY, add_node_routes
from plasmaboot.serve.paths import (
    SETS_PREFIX,
    BootSet,
    UnsafePath,
    find_exact_set,
    find_set,
    request_segments,
)
from plasmaboot.serve.scripts import (
    boot_menu,
    bootable_labels,
    chain_script,
    is_bootable,
    read_script,
    render_script,
)
from plasmaboot.serve.status import (
    STATUS_KEY,
    add_status,
    record_boot,
    record_refusal,
    status_handler,
)
from plasmaboot.serve.tokens import DEFAULT_TTL

# What a node boots, and what only operators read (build-host paths, packages): those are
# served only with `operator_files` (serve --operator-files).
BOOT_FILES = frozenset({KERNEL, INITRD})
OPERATOR_FILES = frozenset({MANIFEST, BUILD_LOG})
# Sent instead of aiohttp's `Python/3.x aiohttp/3.y`: no versions for a client to look up.
SERVER_NAME = "plasmaboot"
MENU_TIMEOUT = 10.0
HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
SCRIPT_TYPE = "text/plain"
SHUTDOWN_TIMEOUT = 2.0
# A connection that has not sent a complete request by then is closed (a client that never
# finishes its request line or headers must not hold a connection, and a file descriptor,
# for ever); also how long an idle keep-alive connection stays open.
REQUEST_TIMEOUT = 30.0
ROOT_KEY = web.AppKey("root", Path)
PUBLIC_URL_KEY = web.AppKey("public_url", str)
INVENTORY_KEY = web.AppKey("inventory", InventoryWatch)
EVENTS_KEY = web.AppKey("events", logging.Logger)
OPERATOR_FILES_KEY = web.AppKey("operator_files", bool)
MENU_TIMEOUT_KEY = web.AppKey("menu_timeout", float)
UTC_STAMP = "%Y-%m-%dT%H:%M:%SZ"
TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&]*")  # never written to the access log


def base_url_of(request: web.Request) -> str:
    """The URL nodes reach this server at: --public-url, else the request's Host header."""
    public: str = request.app[PUBLIC_URL_KEY]
    if public:
        return public
    host = request.headers.get("Host", "")
    if not HOST_HEADER.fullmatch(host):
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname is None:
            host = "127.0.0.1"
        else:
            address = ipaddress.ip_address(sockname[0])
            literal = f"[{address}]" if address.version == 6 else str(address)
            host = f"{literal}:{sockname[1]}"
    return f"http://{host}"


def script_response(text: str) -> web.Response:
    return web.Response(
        text=text,
        content_type=SCRIPT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


async def file_response(
    request: web.Request, found: BootSet | None, name: str
) -> web.StreamResponse:
    """A file of a set that nodes boot (kernel, initrd), or, when the server was told to
    show them, what operators read (manifest, build log); opened without following a link
    that appeared after the check (serve.files)."""
    allowed = OPERATOR_FILES | BOOT_FILES if request.app[OPERATOR_FILES_KEY] else BOOT_FILES
    if found is None or name not in allowed:
        raise web.HTTPNotFound()
    root: Path = request.app[ROOT_KEY]
    parts = found.directory.relative_to(root).parts
    handle = await to_thread(open_within, root, *parts, name)
    if handle is None:
        raise web.HTTPNotFound()
    return OpenFileResponse(handle)


async def handle(request: web.Request) -> web.StreamResponse:
    try:
        segments = request_segments(request.raw_path)
    except UnsafePath as exc:
        raise web.HTTPBadRequest(text=f"refused path: {exc}\n") from exc
    root: Path = request.app[ROOT_KEY]
    match segments:
        case (str(name),) if name == BOOT_SCRIPT and INVENTORY_KEY in request.app:
            watch = request.app[INVENTORY_KEY]
            # a reload reads and checks the whole file: off the event loop, so downloads and
            # other requests go on meanwhile
            current = watch.current() if watch.unchanged() else await to_thread(watch.current)
            return machine_script(request, current)
        case (str(name),) if name == BOOT_SCRIPT:
            profile = request.query.get("profile")
            if profile is None:
                menu = boot_menu(root, base_url_of(request), request.app[MENU_TIMEOUT_KEY])
                return script_response(menu)
            if not await to_thread(is_bootable, root, profile):
                raise web.HTTPNotFound(text=f"no bootable image is published as {profile!r}\n")
            return script_response(chain_script(base_url_of(request), profile))
        case (str(prefix), str(name), str(file)) if prefix == SETS_PREFIX:
            return await respond_from_set(request, find_exact_set(root, name), file)
        case (str(label), str(file)) if label != SETS_PREFIX:
            return await respond_from_set(request, find_set(root, label), file)
    raise web.HTTPNotFound()


def machine_script(request: web.Request, inventory: Inventory) -> web.Response:
    """`/boot.ipxe?mac=...` with an inventory: the machine's own script, or a refusal."""
    base = base_url_of(request)
    raw_mac = request.query.get("mac")
    if raw_mac is None:
        return script_response(ask_with_mac_script(base))
    events = request.app[EVENTS_KEY]
    client = request.remote or "-"
    found = look_up(inventory, raw_mac)
    if found.machine is None:
        shown = found.mac or f"{printable(raw_mac[:40])} (not a MAC address)"
        events.warning("refused: MAC %s from %s is not in the inventory", shown, client)
        refused(
            request, found.mac or printable(raw_mac[:40]), "unknown MAC" if found.mac else "no MAC"
        )
        reason = f"MAC {found.mac} is not in the inventory" if found.mac else "no valid MAC given"
        return script_response(refusal_script(reason))
    machine = found.machine
    local = local_boot_script(inventory.path, machine)
    if local is not None:
        events.info(
            "boot: machine %s (MAC %s) from %s is installed: local disk",
            machine.name,
            found.mac,
            client,
        )
        return script_response(local)
    boot_set = find_set(request.app[ROOT_KEY], machine.label)
    text = read_script(request.app[ROOT_KEY], boot_set)
    if boot_set is None or text is None:
        events.warning(
            "refused: machine %s (MAC %s) from %s: no image published for %s",
            machine.name, found.mac, client, machine.label,
        )  # fmt: skip
        refused(request, found.mac or "", "no image")
        return script_response(refusal_script(f"no image is published for {machine.label}"))
    try:
        render_script(text, base, boot_set.url_prefix)
    except FormatError as exc:
        events.warning(
            "refused: %s: its %s is not plasmaboot's: %s", boot_set.directory.name, IPXE, exc
        )
        refused(request, found.mac or "", "damaged image")
        return script_response(refusal_script(f"the image for {machine.label} is damaged"))
    try:
        script = render_script(text, base, boot_set.url_prefix, machine_params(machine))
    except FormatError as exc:  # the machine's own parameters push the kernel line too far
        events.warning("refused: machine %s (MAC %s): %s", machine.name, found.mac, exc)
        refused(request, found.mac or "", "kernel line too long")
        return script_response(refusal_script(f"the kernel line of {machine.name} is too long"))
    if NODES_KEY in request.app:  # its per-node layer, and a host-key token
        script = request.app[NODES_KEY].add_to_script(request, machine, script)
    events.info(
        "boot: machine %s (MAC %s) from %s gets %s",
        machine.name, found.mac, client, boot_set.directory.name,
    )  # fmt: skip
    count_boot(request.app, machine.label, machine.name)
    record_boot(request.app, machine.name, boot_set.directory.name, client)
    return script_response(script)


def refused(request: web.Request, mac: str, reason: str) -> None:
    """Count a refused machine (metrics) and remember its MAC (status page)."""
    count_refused(request.app, reason)
    record_refusal(request.app, mac, request.remote or "-", reason)


async def respond_from_set(
    request: web.Request, found: BootSet | None, name: str
) -> web.StreamResponse:
    if name != IPXE:
        return await file_response(request, found, name)
    text = read_script(request.app[ROOT_KEY], found)
    if found is None or text is None:
        raise web.HTTPNotFound()
    try:
        script = script_response(render_script(text, base_url_of(request), found.url_prefix))
    except FormatError as exc:
        request.app[EVENTS_KEY].warning(
            "refused: %s: its %s is not plasmaboot's: %s", found.directory.name, IPXE, exc
        )
        raise web.HTTPNotFound(text=f"{IPXE} of this set is damaged; rebuild it\n") from exc
    label = request_segments(request.raw_path)[0]  # the label, or "sets" for an exact set
    label = found.directory.name if label == SETS_PREFIX else label
    count_boot(request.app, label)
    record_boot(request.app, label, found.directory.name, request.remote or "-")
    return script


def make_app(
    root: Path,
    public_base_url: str | None = None,
    inventory: InventoryWatch | None = None,
    leases: Path | None = None,
    token_ttl: float = DEFAULT_TTL,
    *,
    operator_files: bool = False,
    menu_timeout: float = MENU_TIMEOUT,
    admin_routes: bool = True,
) -> web.Application:
    """The aiohttp application serving the artifact sets under `root` (read-only); with an
    inventory, `/boot.ipxe` answers known machines only. `operator_files` also serves each
    set's manifest.json and build.log; the menu picks its first entry after `menu_timeout`
    seconds. `/` and `/metrics` are answered here unless `admin_routes` is False (then
    `make_admin_app` answers them elsewhere)."""
    if not root.is_dir():
        raise UserError(
            f"--root {root}: not a directory",
            hint="pass the directory `plasmaboot build` wrote (e.g. artifacts)",
        )
    app = web.Application()
    app[ROOT_KEY] = root.resolve()
    app[PUBLIC_URL_KEY] = check_public_url(public_base_url) if public_base_url else ""
    app[EVENTS_KEY] = events_logger()
    app[OPERATOR_FILES_KEY] = operator_files
    app[MENU_TIMEOUT_KEY] = menu_timeout
    app.on_response_prepare.append(name_server)
    app[GUARD_KEY] = ConnectionGuard()
    app.middlewares.append(track_requests)
    app.on_cleanup.append(stop_guard)
    if inventory is not None:
        app[INVENTORY_KEY] = inventory
        inventory.log = app[EVENTS_KEY]
        add_node_routes(
            app, app[ROOT_KEY], inventory, base_url_of, app[EVENTS_KEY], leases, token_ttl
        )
    add_metrics(app, route=admin_routes)  # GET /metrics, and every request counted
    add_status(app, app[ROOT_KEY], inventory, route=admin_routes)  # GET /: the status page
    app.router.add_get("/{path:.*}", handle)
    return app


async def stop_guard(app: web.Application) -> None:
    await app[GUARD_KEY].stop()


async def name_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def make_admin_app(boot_app: web.Application) -> web.Application:
    """`serve --admin-listen`: the status page and /metrics of `boot_app`, on their own."""
    admin = web.Application()
    admin.on_response_prepare.append(name_server)
    admin[GUARD_KEY] = ConnectionGuard()  # the same deadlines and cap as the boot listener
    admin.middlewares.append(track_requests)
    admin.on_cleanup.append(stop_guard)
    admin[EVENTS_KEY] = boot_app[EVENTS_KEY]
    admin[STATUS_KEY] = boot_app[STATUS_KEY]
    admin[METRICS_KEY] = boot_app[METRICS_KEY]
    admin.router.add_get("/", status_handler)
    admin.router.add_get("/metrics", metrics_handler)
    return admin


def check_public_url(url: str) -> str:
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", url):
        raise UserError(
            f"--public-url {url!r}: expected http://HOST:PORT or http://HOST:PORT/PATH",
            hint="give the URL nodes use to reach this server, e.g. http://10.0.0.1:8080",
        )
    return url.rstrip("/")


# --------------------------------------------------------------------------------------
# access log


def printable(text: str) -> str:
    return "".join(c if 0x20 < ord(c) < 0x7F else f"\\x{ord(c):02x}" for c in text)


class AccessLogger(AbstractAccessLogger):
    """One line per request: time, client, method, path, status, body bytes, seconds."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        sent = 0
        if request.method != "HEAD" and response.status not in (204, 304):
            sent = response.content_length or 0
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.logger.info(
            "%s %s %s %s %d %d %.3fs",
            stamp,
            request.remote or "-",
            request.method,
            printable(TOKEN_IN_QUERY.sub(r"\1<token>", request.raw_path)),
            response.status,
            sent,
            time,
        )


class RequestErrorFormatter(logging.Formatter):
    """aiohttp's complaint about a malformed request (a line too long, a bad character, no
    HTTP at all) as one line naming the client and the problem: a client cannot fill the log
    with tracebacks. Any other error keeps its traceback (it is a bug of the server)."""

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return super().format(record)
        problem = (error.message or type(error).__name__).strip().splitlines()[0]
        line = f"refused: {record.getMessage().lower()}: {problem}"
        shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in line)
        return f"{self.formatTime(record, self.datefmt)} {shown}"


def errors_logger(stream: TextIO) -> logging.Logger:
    """Where aiohttp reports requests it could not handle: the server's own log stream."""
    logger = logging.Logger("plasmaboot.serve.errors", logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RequestErrorFormatter("%(asctime)s %(message)s", UTC_STAMP))
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    logger.addHandler(handler)
    return logger


def events_logger() -> logging.Logger:
    """What the server has to say besides requests (refused machines, inventory reloads);
    `start_site` points it at the access log's stream."""
    logger = logging.Logger("plasmaboot.serve.events", logging.INFO)
    logger.propagate = False
    return logger


def log_events_to(logger: logging.Logger, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt=UTC_STAMP))
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    logger.handlers = [handler]


def access_logger(stream: TextIO) -> logging.Logger:
    """A logger of its own per server, writing bare lines to `stream`."""
    logger = logging.Logger("plasmaboot.serve.access", logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


@dataclass(frozen=True)
class Limits:
    """How long a connection may take to ask, idle, and how many may be open at once
    (serve.connections)."""

    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_connections: int = field(default_factory=default_connection_limit)


# The status page and /metrics are for a few scrapers and people: a small cap, so a crowd on
# --admin-listen cannot take the descriptors the boot listener's downloads need.
ADMIN_CONNECTIONS = 16


def admin_limits(limits: Limits | None) -> Limits:
    return dataclasses.replace(limits or Limits(), max_connections=ADMIN_CONNECTIONS)


def admin_reserve() -> int:
    """Descriptors the admin listener may hold: its cap, plus the two accept bursts (taken,
    and refused but not yet closed) that default_connection_limit counts for any listener."""
    return ADMIN_CONNECTIONS + 2 * accept_backlog()


def boot_limits(limits: Limits | None, admin: bool, chosen: bool) -> Limits:
    """The boot listener's limits: with an admin listener beside it and no cap chosen by
    the user (--max-connections), the default cap leaves the admin listener its share of
    the process's descriptors."""
    limits = limits or Limits()
    if admin and not chosen:
        return dataclasses.replace(
            limits, max_connections=default_connection_limit(admin_reserve())
        )
    return limits


def limits_of(request_timeout: float, idle_timeout: float, max_connections: int | None) -> Limits:
    if max_connections is None:
        return Limits(request_timeout, idle_timeout)
    return Limits(request_timeout, idle_timeout, max_connections)


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site with every connection passed through the app's ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, guard: ConnectionGuard, host: str, port: int):
        super().__init__(runner, host, port)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.protocol_factory(server), self._host, self._port, backlog=accept_backlog()
        )


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    log_stream: TextIO,
    limits: Limits | None = None,
    option: str = "--listen",
) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns the runner and the port actually bound."""
    limits = limits or Limits()
    request_timeout = limits.request_timeout
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=access_logger(log_stream),
        logger=errors_logger(log_stream),
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        # aiohttp closes a connection still waiting for a request after keepalive_timeout,
        # counted from its start (or from the last response)
        keepalive_timeout=request_timeout,
    )
    log_events_to(app[EVENTS_KEY], log_stream)
    # aiohttp answers a request it cannot parse itself, outside the app (no
    # on_response_prepare), naming its and Python's versions: its default is ours instead
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
    guard = app[GUARD_KEY]
    guard.limit = limits.max_connections
    guard.request_timeout = request_timeout
    guard.idle_timeout = min(limits.idle_timeout, request_timeout)
    await runner.setup()
    guard.start(app[EVENTS_KEY])
    site = GuardedSite(runner, guard, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(
            f"{option} {host}:{port}: cannot bind ({exc.strerror})",
            hint="choose another port, or stop what is using it",
        ) from exc
    bound = next(iter(runner.addresses))
    return runner, int(bound[1])


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------------------
# running it: a background thread (tests, boot-test) or the foreground (the CLI)


class ServerThread:
    """Serve `root` from a background thread with its own event loop; a context manager."""

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        access_log: Path | None = None,
        inventory: InventoryWatch | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        leases: Path | None = None,
        token_ttl: float = DEFAULT_TTL,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int | None = None,
        operator_files: bool = False,
        menu_timeout: float = MENU_TIMEOUT,
    ) -> None:
        self.root = root
        self.limits = limits_of(request_timeout, idle_timeout, max_connections)
        self.host = host
        self.port = port
        self.access_log = access_log
        self.base_url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="plasmaboot-serve", daemon=True)
        self._log_file: TextIO | None = None
        self._app = make_app(
            root,
            inventory=inventory,
            leases=leases,
            token_ttl=token_ttl,
            operator_files=operator_files,
            menu_timeout=menu_timeout,
        )

    def __enter__(self) -> ServerThread:
        if self.access_log is not None:
            self._log_file = open_access_log(self.access_log, "access log")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._close_log()
            raise self._error
        self.base_url = f"http://{url_host(self.host)}:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        stream = self._log_file if self._log_file is not None else sys.stderr
        runner, self.port = await start_site(self._app, self.host, self.port, stream, self.limits)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback) -> (host, port); UserError otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)|([^:\[\]]*):([0-9]+)", value)
    if match is None:
        raise UserError(
            f"--listen {value!r}: expected HOST:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)",
            hint="HOST is an IP address or localhost; PORT is 0-65535 (0 picks a free port)",
        )
    host = match.group(1) or match.group(3) or "127.0.0.1"
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise UserError(f"--listen {value!r}: port {port} is out of range (0-65535)")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise UserError(
                f"--listen {value!r}: {host!r} is not an IP address",
                hint="give an address such as 127.0.0.1, 0.0.0.0 or ::1 (or localhost)",
            ) from exc
    return host, port


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def check_listen(host: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(host):
        raise UserError(
            f"--listen {host}: not a loopback address; serving to the network needs --allow-remote",
            hint="anything that can reach this address can download the images; "
            "add --allow-remote if that is intended",
        )


def serve_forever(
    root: Path,
    host: str,
    port: int,
    *,
    public_url: str | None = None,
    access_log: Path | None = None,
    inventory: InventoryWatch | None = None,
    limits: Limits | None = None,
    operator_files: bool = False,
    menu_timeout: float = MENU_TIMEOUT,
    announce: Callable[[str], None] = print,
    token_ttl: float = DEFAULT_TTL,
    admin: tuple[str, int] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly (the `plasmaboot serve` command).
    With `admin` (host, port), / and /metrics are served there instead."""
    app = make_app(
        root,
        public_url,
        inventory,
        token_ttl=token_ttl,
        operator_files=operator_files,
        menu_timeout=menu_timeout,
        admin_routes=admin is None,
    )

    async def main(log_stream: TextIO) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        runner, bound = await start_site(app, host, port, log_stream, limits)
        runners = [runner]
        if admin is not None:
            try:
                admin_runner, admin_port = await start_site(
                    make_admin_app(app), *admin, log_stream, admin_limits(limits), "--admin-listen"
                )
            except BaseException:
                await runner.cleanup()
                raise
            runners.append(admin_runner)
        base = f"http://{url_host(host)}:{bound}"
        labels = bootable_labels(app[ROOT_KEY])
        announce(f"serving {app[ROOT_KEY]} at {base}/ (labels: {', '.join(labels) or 'none'})")
        if inventory is None:
            announce(f"boot menu: {base}/{BOOT_SCRIPT}")
        else:
            machines = len(inventory.current().machines)
            announce(
                f"machines from {inventory.path} ({machines}): "
                f"{base}/{BOOT_SCRIPT}?mac=${{net0/mac}}; unknown MACs are refused"
            )
        admin_base = f"http://{url_host(admin[0])}:{admin_port}" if admin is not None else base
        announce(f"status page: {admin_base}/ metrics: {admin_base}/metrics")
        try:
            await stop.wait()
        finally:
            for each in reversed(runners):
                await each.cleanup()
        announce("stopped")

    if access_log is None:
        asyncio.run(main(sys.stderr))
        return
    with open_access_log(access_log) as stream:
        asyncio.run(main(stream))


def open_access_log(path: Path, option: str = "--access-log") -> TextIO:
    """The access log, opened for appending lines; any failure (a /proc file that cannot
    seek, a directory, no permission) is one line naming the option."""
    try:
        return path.open("a", encoding="utf-8", buffering=1)
    except OSError as exc:
        raise UserError(
            f"{option} {path}: cannot append to it ({exc.strerror or exc})",
            hint="pass a file in a directory you can write",
        ) from exc
