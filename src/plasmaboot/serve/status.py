"""The status page at `/`: the machines of the inventory with their profile and current
set, the last boot this server saw of each, the last host key each reported (from the
inventory's state directory, `<inventory stem>.state/hostkeys/<machine>.json`), the refused
MACs, and the published labels. Plain HTML and CSS, no script, every value escaped; one
column on a phone.

Refused MACs are also kept in `<inventory stem>.state/refused.json` (counts, first and last
seen, last address; at most MAX_REFUSED MACs, the least recently seen dropped first), so
they outlive a restart.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import time
from asyncio import to_thread
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from aiohttp import web

from plasmaboot.artifacts.layout import MANIFEST
from plasmaboot.formats.sshkeys import public_key_type
from plasmaboot.inventory import state
from plasmaboot.inventory.load import Inventory
from plasmaboot.inventory.state import state_dir, write_json_atomic
from plasmaboot.serve.machines import InventoryWatch
from plasmaboot.serve.paths import find_set, published_labels

MAX_REFUSED = 256
MAX_STATE_FILE = 1 << 20
SAVE_INTERVAL = 5.0  # seconds between two writes of refused.json (a flood writes rarely)
REFUSED = "refused.json"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_json(path: Path) -> Any:
    """A JSON file of the state directory (refused.json is larger than one record)."""
    return state.read_json(path, MAX_STATE_FILE)


def fingerprint(key_line: str) -> str | None:
    """`SHA256:...` as ssh-keygen -l prints it, for a valid public key line."""
    if public_key_type(key_line) is None:
        return None
    blob = base64.b64decode(key_line.split()[1] if " " in key_line else key_line)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def host_key(state_path: Path, machine: str) -> dict[str, str] | None:
    """The machine's last reported host key (ed25519 if there is one) and when: a record
    that `machines known-hosts` and `install` would trust too (state.parse_host_keys)."""
    if not state.is_machine_name(machine):  # the inventory's names are; never a path
        return None
    path = state_path / state.HOSTKEYS / f"{machine}.json"
    record = state.parse_host_keys(read_json(path), machine)
    if record is None:
        return None
    key = sorted(record.keys, key=lambda k: not k.startswith("ssh-ed25519 "))[0]
    return {
        "type": key.split()[0],
        "fingerprint": fingerprint(key) or "",
        "reported_at": record.reported_at,
        "installed": "yes" if record.installed else "",
    }


# --------------------------------------------------------------------------------------
# what this server saw


@dataclass
class Seen:
    """Boots and refusals this server saw (boots since its start; refusals persisted)."""

    state: Path | None = None  # where refused.json lives (None: no inventory, kept in memory)
    boots: dict[str, dict[str, str]] = field(default_factory=dict)  # machine or label ->
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)  # MAC ->
    _saved: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.state is not None:
            loaded = read_json(self.state / REFUSED)
            if isinstance(loaded, dict):
                self.refused = {
                    str(mac): entry for mac, entry in loaded.items() if isinstance(entry, dict)
                }

    def boot(self, key: str, set_name: str, address: str) -> None:
        self.boots[key] = {"at": utc_now(), "set": set_name, "address": address}

    def refuse(self, mac: str, address: str, reason: str) -> None:
        now = utc_now()
        with self._lock:
            entry = self.refused.pop(mac, None) or {"count": 0, "first_seen": now}
            entry.update(count=int(entry.get("count", 0)) + 1, last_seen=now)
            entry.update(address=address, reason=reason)
            self.refused[mac] = entry  # most recent last
            while len(self.refused) > MAX_REFUSED:
                self.refused.pop(next(iter(self.refused)))
            if self.state is not None and time.monotonic() - self._saved >= SAVE_INTERVAL:
                self._saved = time.monotonic()
                self.save()

    def save(self) -> None:
        if self.state is None:
            return
        # a full or read-only disk must not stop the server; the page still shows them
        with contextlib.suppress(OSError):
            write_json_atomic(self.state / REFUSED, self.refused)


SEEN_KEY = web.AppKey("seen", Seen)


def seen_of(app: web.Application) -> Seen | None:
    return app.get(SEEN_KEY)


def record_boot(app: web.Application, key: str, set_name: str, address: str) -> None:
    seen = seen_of(app)
    if seen is not None:
        seen.boot(key, set_name, address)


def record_refusal(app: web.Application, mac: str, address: str, reason: str) -> None:
    seen = seen_of(app)
    if seen is not None:
        seen.refuse(mac, address, reason)


# --------------------------------------------------------------------------------------
# the page

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;padding:.75rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:.2rem 0 .8rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .45rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#eef2f6}.muted{color:#777}code{font-size:.85em}
@media (max-width:40rem){
 table,tbody,tr,td{display:block;width:100%;box-sizing:border-box}
 tr.head{display:none}tr{margin-bottom:.6rem;border:1px solid #ccc}
 td{border:none;border-bottom:1px solid #eee}
 td::before{content:attr(data-th) ": ";font-weight:600}
}
"""


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    """A table whose cells are already escaped HTML; on a phone each row becomes a card."""
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td data-th="{escape(h)}">{cell}</td>' for h, cell in zip(headers, row, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table><tr class="head">{head}</tr>{body}</table>'


def set_name(root: Path, label: str) -> str:
    found = find_set(root, label)
    return found.directory.name if found is not None else ""


def built_at(root: Path, label: str) -> str:
    found = find_set(root, label)
    if found is None:
        return ""
    manifest = read_json(found.directory / MANIFEST)
    return str(manifest.get("built_at", "")) if isinstance(manifest, dict) else ""


def machine_rows(root: Path, inventory: Inventory, seen: Seen, state: Path) -> list[list[str]]:
    rows = []
    for name, machine in sorted(inventory.machines.items()):
        boot = seen.boots.get(name)
        key = host_key(state, name)
        current = set_name(root, machine.label)
        rows.append(
            [
                f"<b>{escape(name)}</b><br><code>{'<br>'.join(escape(m) for m in machine.macs)}"
                "</code>",
                escape(machine.label),
                escape(current) if current else '<span class="muted">not published</span>',
                (
                    f"{escape(boot['at'])}<br>from {escape(boot['address'])}<br>"
                    f'<span class="muted">{escape(boot["set"])}</span>'
                )
                if boot
                else '<span class="muted">not since start</span>',
                (
                    f"<code>{escape(key['fingerprint'])}</code><br>{escape(key['type'])}, "
                    f"{escape(key['reported_at'])}{' (installed)' if key['installed'] else ''}"
                )
                if key
                else '<span class="muted">none reported</span>',
            ]
        )
    return rows


def status_page(root: Path, inventory: Inventory | None, seen: Seen) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="refresh" content="30">',
        "<title>plasmaboot serve</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>plasmaboot serve</h1>",
        f'<p class="muted">{escape(utc_now())} &middot; <a href="/metrics">metrics</a></p>',
    ]
    if inventory is not None:
        parts.append(f"<h2>Machines ({len(inventory.machines)})</h2>")
        state = state_dir(inventory.path)
        parts.append(
            table(
                ["machine", "profile", "set", "last boot seen", "host key"],
                machine_rows(root, inventory, seen, state),
                "The inventory has no machines.",
            )
        )
        refused = [
            [
                f"<code>{escape(mac)}</code>",
                escape(str(entry.get("count", ""))),
                escape(str(entry.get("last_seen", ""))),
                escape(str(entry.get("address", ""))),
                escape(str(entry.get("reason", ""))),
            ]
            for mac, entry in reversed(seen.refused.items())
        ]
        parts.append(f"<h2>Refused MACs ({len(refused)})</h2>")
        parts.append(table(["MAC", "times", "last seen", "from", "why"], refused, "None refused."))
    labels = [
        [
            escape(label),
            escape(set_name(root, label)),
            escape(built_at(root, label)),
            escape(seen.boots[label]["at"]) if label in seen.boots else "",
        ]
        for label in published_labels(root)
    ]
    parts.append(f"<h2>Published ({len(labels)})</h2>")
    parts.append(table(["label", "set", "built", "last chained"], labels, "Nothing is published."))
    parts.append("</body></html>\n")
    return "\n".join(parts)


@dataclass(frozen=True)
class StatusSource:
    root: Path
    watch: InventoryWatch | None
    seen: Seen


STATUS_KEY = web.AppKey("status", StatusSource)


def add_status(
    app: web.Application, root: Path, watch: InventoryWatch | None, route: bool = True
) -> Seen:
    """Keep what the status page shows, and answer GET / with it unless `route` is False (the
    admin listener answers it then). Call before the catch-all route; refused.json is
    written once more when the server stops."""
    seen = Seen(state=state_dir(watch.path) if watch is not None else None)
    app[SEEN_KEY] = seen
    app[STATUS_KEY] = StatusSource(root, watch, seen)
    if route:
        app.router.add_get("/", status_handler)

    async def save_seen(_: web.Application) -> None:
        seen.save()

    app.on_cleanup.append(save_seen)
    return seen


async def status_handler(request: web.Request) -> web.Response:
    source = request.app[STATUS_KEY]
    # the inventory reload and the page's reads of sets and state files: off the event loop
    inventory = await to_thread(source.watch.current) if source.watch is not None else None
    text = await to_thread(status_page, source.root, inventory, source.seen)
    return web.Response(
        text=text, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"}
    )
