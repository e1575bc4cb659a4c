"""`/metrics` of serve in Prometheus' text format (the official client, a registry of each
app's own: two servers in one process never mix their counts).

    plasmaboot_boots_total{profile,machine}          boot scripts handed out (machine "" when
                                                     a node chained /LABEL/netboot.ipxe itself)
    plasmaboot_refused_machines_total{reason}        /boot.ipxe answers that refused a machine
    plasmaboot_http_requests_total{file,status}      requests, by file name and status
    plasmaboot_http_sent_bytes_total{file}           body bytes of the responses sent
    plasmaboot_http_request_duration_seconds{file}   time until the response's headers
    plasmaboot_node_segments_total{machine}          per-node segments made (count_node_segment)

The `file` label is a known file name (what exists in a set or a fixed route): a path a
client makes up becomes `other`, so a scanner cannot grow the registry without bound.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder, generate_latest

from plasmaboot.serve.paths import UnsafePath, request_segments

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OTHER = "other"


class ServeMetrics:
    """The counters of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.boots = Counter(
            "plasmaboot_boots",
            "Boot scripts handed out, per profile (label) and machine.",
            ["profile", "machine"],
            registry=self.registry,
        )
        self.refused = Counter(
            "plasmaboot_refused_machines",
            "Machines refused at /boot.ipxe (unknown MAC, no valid MAC, no image, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.requests = Counter(
            "plasmaboot_http_requests",
            "HTTP requests, per file name and status.",
            ["file", "status"],
            registry=self.registry,
        )
        self.sent = Counter(
            "plasmaboot_http_sent_bytes",
            "Response body bytes, per file name (Range requests count their part).",
            ["file"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "plasmaboot_http_request_duration_seconds",
            "Seconds from the request to its response's headers, per file name.",
            ["file"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.node_segments = Counter(
            "plasmaboot_node_segments",
            "Per-node initrd segments made, per machine.",
            ["machine"],
            registry=self.registry,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("metrics", ServeMetrics)
FIXED_ROUTES = {(): "status", ("metrics",): "metrics", ("boot.ipxe",): "boot.ipxe"}


def file_label(raw_path: str, status: int) -> str:
    """What a request asked for, from a bounded set of names."""
    try:
        segments = request_segments(raw_path)
    except UnsafePath:
        return OTHER
    if segments in FIXED_ROUTES:
        return FIXED_ROUTES[segments]
    if segments and segments[0] == "node":
        return "node"
    if status >= 400 or not segments or len(segments) > 3:
        return OTHER  # a file that was not there: its name is the client's invention
    return segments[-1][:64]


# -- what the handlers (and the nodes' handlers) call


def metrics_of(app: web.Application) -> ServeMetrics | None:
    return app.get(METRICS_KEY)


def count_boot(app: web.Application, profile: str, machine: str = "") -> None:
    metrics = metrics_of(app)
    if metrics is not None:
        metrics.boots.labels(profile, machine).inc()


def count_refused(app: web.Application, reason: str) -> None:
    metrics = metrics_of(app)
    if metrics is not None:
        metrics.refused.labels(reason).inc()


def count_node_segment(app: web.Application, machine: str) -> None:
    """For serve/nodes.py: one per-node segment made for `machine`."""
    metrics = metrics_of(app)
    if metrics is not None:
        metrics.node_segments.labels(machine).inc()


# -- the middleware, the signal and the handler

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def observe_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[METRICS_KEY]
        name = file_label(request.raw_path, status)
        metrics.requests.labels(name, str(status)).inc()
        metrics.latency.labels(name).observe(time.monotonic() - started)


async def count_sent_bytes(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the body's length is known once the headers are made."""
    if request.method == "HEAD" or response.status not in (200, 206):
        return
    metrics = request.app.get(METRICS_KEY)
    if metrics is not None and response.content_length:
        name = file_label(request.raw_path, response.status)
        metrics.sent.labels(name).inc(response.content_length)


async def metrics_handler(request: web.Request) -> web.Response:
    """The text format (0.0.4), or OpenMetrics when the scraper asks for it (Accept)."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[METRICS_KEY].registry)
    response = web.Response(body=body, headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = content_type
    return response


def add_metrics(app: web.Application, route: bool = True) -> ServeMetrics:
    """Count this app's requests, and answer GET /metrics unless `route` is False (the admin
    listener answers it then). Call before the catch-all route."""
    metrics = ServeMetrics()
    app[METRICS_KEY] = metrics
    app.middlewares.append(observe_request)
    app.on_response_prepare.append(count_sent_bytes)
    if route:
        app.router.add_get("/metrics", metrics_handler)
    return metrics
