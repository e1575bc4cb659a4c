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
import ipaddress
import logging
import re
import signal
import sys
import threading
import time
from asyncio import to_thread
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from plasmaboot.artifacts.layout import BUILD_LOG, INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.errors import UserError
from plasmaboot.formats import FormatError
from plasmaboot.formats.ipxe import BOOT_SCRIPT
from plasmaboot.inventory.load import Inventory
from plasmaboot.paths import read_regular_file
from plasmaboot.serve.installed import local_boot_script
from plasmaboot.serve.machines import (
    InventoryWatch,
    ask_with_mac_script,
    look_up,
    machine_params,
    refusal_script,
)
from plasmaboot.serve.paths import (
    SETS_PREFIX,
    BootSet,
    UnsafePath,
    find_exact_set,
    find_set,
    published_labels,
    request_segments,
    resolve_within,
)
from plasmaboot.serve.scripts import boot_menu, chain_script, render_script

ASSET_FILES = frozenset({KERNEL, INITRD, MANIFEST, BUILD_LOG})
HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
SCRIPT_TYPE = "text/plain"
SHUTDOWN_TIMEOUT = 2.0
# A connection that has not sent a complete request by then is closed (a client that never
# finishes its request line or headers must not hold a connection, and a file descriptor,
# for ever); also how long an idle keep-alive connection stays open.
REQUEST_TIMEOUT = 30.0
MAX_SCRIPT_SIZE = 64 << 10  # a set's netboot.ipxe is a few hundred bytes
ROOT_KEY = web.AppKey("root", Path)
PUBLIC_URL_KEY = web.AppKey("public_url", str)
INVENTORY_KEY = web.AppKey("inventory", InventoryWatch)
EVENTS_KEY = web.AppKey("events", logging.Logger)
UTC_STAMP = "%Y-%m-%dT%H:%M:%SZ"


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


def file_response(found: BootSet | None, name: str) -> web.StreamResponse:
    if found is None or name not in ASSET_FILES:
        raise web.HTTPNotFound()
    path = found.directory / name
    if resolve_within(found.directory, name) is None or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


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
                return script_response(boot_menu(root, base_url_of(request)))
            if find_set(root, profile) is None:
                raise web.HTTPNotFound(text=f"no published image {profile!r}\n")
            return script_response(chain_script(base_url_of(request), profile))
        case (str(prefix), str(name), str(file)) if prefix == SETS_PREFIX:
            return respond_from_set(request, find_exact_set(root, name), file)
        case (str(label), str(file)) if label != SETS_PREFIX:
            return respond_from_set(request, find_set(root, label), file)
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
    text = read_script(boot_set)
    if boot_set is None or text is None:
        events.warning(
            "refused: machine %s (MAC %s) from %s: no image published for %s",
            machine.name, found.mac, client, machine.label,
        )  # fmt: skip
        return script_response(refusal_script(f"no image is published for {machine.label}"))
    try:
        render_script(text, base, boot_set.url_prefix)
    except FormatError as exc:
        events.warning(
            "refused: %s: its %s is not plasmaboot's: %s", boot_set.directory.name, IPXE, exc
        )
        return script_response(refusal_script(f"the image for {machine.label} is damaged"))
    try:
        script = render_script(text, base, boot_set.url_prefix, machine_params(machine))
    except FormatError as exc:  # the machine's own parameters push the kernel line too far
        events.warning("refused: machine %s (MAC %s): %s", machine.name, found.mac, exc)
        return script_response(refusal_script(f"the kernel line of {machine.name} is too long"))
    events.info(
        "boot: machine %s (MAC %s) from %s gets %s",
        machine.name, found.mac, client, boot_set.directory.name,
    )  # fmt: skip
    return script_response(script)


def read_script(found: BootSet | None) -> str | None:
    """A set's netboot.ipxe, if it is there, a regular file of script size, and readable (a
    FIFO or a huge file put there never blocks or floods the server)."""
    if found is None or resolve_within(found.directory, IPXE) is None:
        return None
    try:
        raw = read_regular_file(found.directory / IPXE, MAX_SCRIPT_SIZE + 1)
        if raw is None or len(raw) > MAX_SCRIPT_SIZE:
            return None
        return raw.decode().replace("\r\n", "\n").replace("\r", "\n")  # as read_text() did
    except (OSError, UnicodeDecodeError):
        return None


def respond_from_set(request: web.Request, found: BootSet | None, name: str) -> web.StreamResponse:
    if name != IPXE:
        return file_response(found, name)
    text = read_script(found)
    if found is None or text is None:
        raise web.HTTPNotFound()
    try:
        return script_response(render_script(text, base_url_of(request), found.url_prefix))
    except FormatError as exc:
        request.app[EVENTS_KEY].warning(
            "refused: %s: its %s is not plasmaboot's: %s", found.directory.name, IPXE, exc
        )
        raise web.HTTPNotFound(text=f"{IPXE} of this set is damaged; rebuild it\n") from exc


def make_app(
    root: Path, public_base_url: str | None = None, inventory: InventoryWatch | None = None
) -> web.Application:
    """The aiohttp application serving the artifact sets under `root` (read-only); with an
    inventory, `/boot.ipxe` answers known machines only."""
    if not root.is_dir():
        raise UserError(
            f"--root {root}: not a directory",
            hint="pass the directory `plasmaboot build` wrote (e.g. artifacts)",
        )
    app = web.Application()
    app[ROOT_KEY] = root.resolve()
    app[PUBLIC_URL_KEY] = check_public_url(public_base_url) if public_base_url else ""
    app[EVENTS_KEY] = events_logger()
    if inventory is not None:
        app[INVENTORY_KEY] = inventory
        inventory.log = app[EVENTS_KEY]
    app.router.add_get("/{path:.*}", handle)
    return app


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
            printable(request.raw_path),
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


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    log_stream: TextIO,
    request_timeout: float = REQUEST_TIMEOUT,
) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns the runner and the port actually bound."""
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
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(
            f"--listen {host}:{port}: cannot bind ({exc.strerror})",
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
    ) -> None:
        self.root = root
        self.request_timeout = request_timeout
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
        self._app = make_app(root, inventory=inventory)

    def __enter__(self) -> ServerThread:
        if self.access_log is not None:
            self._log_file = self.access_log.open("a", encoding="utf-8", buffering=1)
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
        runner, self.port = await start_site(
            self._app, self.host, self.port, stream, self.request_timeout
        )
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
    request_timeout: float = REQUEST_TIMEOUT,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly (the `plasmaboot serve` command)."""
    app = make_app(root, public_url, inventory)

    async def main(log_stream: TextIO) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        runner, bound = await start_site(app, host, port, log_stream, request_timeout)
        base = f"http://{url_host(host)}:{bound}"
        labels = published_labels(app[ROOT_KEY])
        announce(f"serving {app[ROOT_KEY]} at {base}/ (labels: {', '.join(labels) or 'none'})")
        if inventory is None:
            announce(f"boot menu: {base}/{BOOT_SCRIPT}")
        else:
            machines = len(inventory.current().machines)
            announce(
                f"machines from {inventory.path} ({machines}): "
                f"{base}/{BOOT_SCRIPT}?mac=${{net0/mac}}; unknown MACs are refused"
            )
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        announce("stopped")

    if access_log is None:
        asyncio.run(main(sys.stderr))
        return
    with access_log.open("a", encoding="utf-8", buffering=1) as stream:
        asyncio.run(main(stream))
