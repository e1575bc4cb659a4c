"""Connections under hostile clients: deadlines, a cap, and accept() failures as one line.

- A connection must send a complete request within `request_timeout` seconds of opening
  (or of its previous response), and one that sends nothing at all is closed after
  `idle_timeout` (idle keep-alive, half-open peers, sockets opened and forgotten). A response
  being sent is never cut by these; a peer that stops acknowledging it is dropped by the
  kernel after `request_timeout` (TCP_USER_TIMEOUT).
- At most `limit` connections are open, so a crowd of sockets cannot use up the process's
  descriptors. One more closes the connection waiting longest for a request (idle sockets
  never keep a client out); when every open connection is being answered, it gets `503`
  and is closed at once.
- When accept() fails (EMFILE, ENFILE, ENOBUFS), asyncio retries every second and would
  log a traceback each time: it is one line, at most once per `LOG_INTERVAL`, with the count.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

LOG_INTERVAL = 10.0
IDLE_TIMEOUT = 5.0
BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nServer: plasmaboot\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: 0\r\n\r\n"
)
MAX_CONNECTIONS = 256
RESERVED_DESCRIPTORS = 64  # log files, sets' files being opened, the loop's own
# The listen backlog, and so how many connections asyncio accepts in one go before any of
# them reaches the guard: the cap must leave room for one such burst.
BACKLOG = 128


def soft_descriptor_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def accept_backlog() -> int:
    """The listening socket's backlog, which is also how many connections asyncio accepts in
    one burst before the guard sees any of them: smaller under a low descriptor limit."""
    soft = soft_descriptor_limit()
    if soft is None:
        return BACKLOG
    return max(8, min(BACKLOG, (soft - RESERVED_DESCRIPTORS) // 8))


def default_connection_limit(reserved: int = 0) -> int:
    """256, or fewer when the process may open fewer descriptors: each download holds two
    (its socket and its file); a burst of accepts takes up to a backlog more before the cap
    sees them, and the burst the cap has just refused or evicted still holds its sockets
    until the loop closes them (another backlog); some are kept for everything else, and
    `reserved` more for another listener in the same process (serve --admin-listen)."""
    soft = soft_descriptor_limit()
    if soft is None:
        return MAX_CONNECTIONS
    spare = soft - RESERVED_DESCRIPTORS - 2 * accept_backlog() - reserved
    return max(1, min(MAX_CONNECTIONS, spare // 2))


class RateLimitedLog:
    """One line per kind of trouble at most every `interval` seconds, then how many more."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.logger: logging.Logger | None = None
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def note(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        if self.logger is not None:
            more = f" ({held} more since the last line)" if held else ""
            self.logger.warning("%s%s", message, more)


@dataclass
class Tracked:
    """What the guard knows of one connection."""

    transport: asyncio.Transport
    since: float  # opened, or its last response ended
    received: bool = False  # bytes arrived since `since`
    busy: int = 0  # requests being answered


@dataclass
class ConnectionGuard:
    """The deadlines and the cap of one server (configured by `start_site`)."""

    limit: int = MAX_CONNECTIONS
    request_timeout: float = 30.0
    idle_timeout: float = IDLE_TIMEOUT
    log: RateLimitedLog = field(default_factory=RateLimitedLog)
    open: dict[asyncio.BaseTransport, Tracked] = field(default_factory=dict)
    refused: int = 0
    evicted: int = 0
    closed_by_deadline: int = 0
    _sweeper: asyncio.Task[None] | None = None

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], Any]:
        return lambda: GuardedProtocol(self, make)

    def start(self, logger: logging.Logger) -> None:
        self.log.logger = logger
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.loop_exception)
        self._sweeper = loop.create_task(self.sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def sweep(self) -> None:
        interval = max(0.05, min(1.0, self.idle_timeout / 4, self.request_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.close_overdue(asyncio.get_running_loop().time())

    def close_overdue(self, now: float) -> None:
        for tracked in list(self.open.values()):
            if tracked.busy:
                continue
            deadline = self.request_timeout if tracked.received else self.idle_timeout
            if now - tracked.since >= deadline:
                self.closed_by_deadline += 1
                tracked.transport.close()

    def evict_one(self) -> bool:
        """Make room for a new connection by closing the one waiting longest for a request
        (idle keep-alive, or still sending one): idle sockets never keep clients out. False
        when every open connection is being answered."""
        waiting = [tracked for tracked in self.open.values() if not tracked.busy]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda tracked: tracked.since)
        self.open.pop(oldest.transport, None)
        self.evicted += 1
        oldest.transport.close()
        return True

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """accept() failing for want of descriptors or memory: one line, never a traceback
        per failure (asyncio stops accepting for a second and tries again by itself)."""
        error = context.get("exception")
        if isinstance(error, OSError) and "accept" in str(context.get("message", "")):
            self.log.note(
                "accept",
                f"refused: cannot accept connections: {error.strerror or error} "
                f"(errno {error.errno}); {len(self.open)} open; retrying every second",
            )
            return
        loop.default_exception_handler(context)

    def request_started(self, request: web.BaseRequest) -> Tracked | None:
        tracked = self.open.get(request.transport) if request.transport else None
        if tracked is not None:
            tracked.busy += 1
        return tracked

    @staticmethod
    def request_ended(tracked: Tracked | None) -> None:
        if tracked is not None:
            tracked.busy -= 1
            tracked.since = asyncio.get_running_loop().time()
            tracked.received = False


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen by the guard: it notes bytes arriving,
    counts the connection, and refuses one over the cap before aiohttp sees it."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.make = make
        self.inner: asyncio.Protocol | None = None
        self.tracked: Tracked | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self.guard
        if len(guard.open) >= guard.limit and not guard.evict_one():
            guard.refused += 1
            peer = transport.get_extra_info("peername")
            guard.log.note(
                "limit",
                f"refused: {guard.limit} connections are open (--max-connections); "
                f"answered 503 to {peer[0] if peer else '-'}",
            )
            transport.write(BUSY_REPLY)
            transport.close()
            return
        set_user_timeout(transport, guard.request_timeout)
        self.tracked = Tracked(transport, asyncio.get_running_loop().time())
        guard.open[transport] = self.tracked
        self.inner = self.make()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None or self.tracked is None:
            return
        self.tracked.received = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tracked is not None:
            self.guard.open.pop(self.tracked.transport, None)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


def set_user_timeout(transport: asyncio.Transport, seconds: float) -> None:
    """Data unacknowledged for `seconds` (a peer gone, or one that stopped reading a
    download) drops the connection: the kernel's own deadline for a response being sent."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None:
        return
    with suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUARD_KEY = web.AppKey("connection_guard", ConnectionGuard)


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request is being answered until its response is sent: sent here, so the guard
    knows when a connection goes idle (aiohttp sends a returned response only later)."""
    guard = request.app[GUARD_KEY]
    tracked = guard.request_started(request)
    try:
        response = await handler(request)
        await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        guard.request_ended(tracked)
