"""`plasmaboot build --metrics-file F`: the figures of a build in Prometheus' text format,
for node_exporter's textfile collector (written to a temporary file in the same directory,
then renamed over F, so the collector never reads half a file)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from plasmaboot.errors import UserError


def build_metrics_text(records: Iterable[dict[str, Any]]) -> str:
    """The text exposition of build history records (one per profile built)."""
    registry = CollectorRegistry(auto_describe=True)
    ids = ["profile", "variant", "backend"]

    def gauge(name: str, help_text: str, labels: list[str]) -> Gauge:
        return Gauge(name, help_text, labels, registry=registry)

    info = gauge(
        "plasmaboot_build_info",
        "A built set (always 1): its set id, content hash, kernel and plasmaboot version.",
        [*ids, "set", "content_hash", "kernel_version", "version"],
    )
    seconds = gauge("plasmaboot_build_duration_seconds", "Seconds the build took.", ids)
    steps = gauge("plasmaboot_build_step_seconds", "Seconds per build step.", [*ids, "step"])
    sizes = gauge("plasmaboot_build_file_bytes", "Size of each file of the set.", [*ids, "file"])
    layers = gauge("plasmaboot_build_layer_bytes", "Size of each initrd layer.", [*ids, "layer"])
    packages = gauge("plasmaboot_build_packages", "Packages in the image.", ids)
    cache = gauge("plasmaboot_build_cache_hit", "1 when the set came from the cache.", ids)
    finished = gauge(
        "plasmaboot_build_timestamp_seconds", "When the build finished (Unix time).", ids
    )
    for record in records:
        key = [record["profile"], record.get("variant") or "", record.get("backend") or ""]
        info.labels(
            *key,
            record.get("set", ""),
            record.get("content_hash", ""),
            record.get("kernel_version", ""),
            record.get("version", ""),
        ).set(1)
        seconds.labels(*key).set(record.get("seconds", 0))
        for step, value in record.get("steps", {}).items():
            steps.labels(*key, step).set(value)
        for name, size in record.get("sizes", {}).get("files", {}).items():
            sizes.labels(*key, name).set(size)
        for name, size in record.get("sizes", {}).get("layers", {}).items():
            layers.labels(*key, name).set(size)
        packages.labels(*key).set(record.get("packages", 0))
        cache.labels(*key).set(1 if record.get("cache") == "hit" else 0)
        finished.labels(*key).set(unix_time(record.get("at", "")))
    return generate_latest(registry).decode()


def unix_time(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return 0.0


def check_metrics_file(path: Path) -> None:
    """Before the build: the file's directory exists (a typo fails now, not after an hour)."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir() or path.is_dir():
        raise UserError(
            f"--metrics-file {path}: {'is a directory' if path.is_dir() else 'no such directory'}",
            hint="give a file in an existing directory, e.g. "
            "/var/lib/node_exporter/textfile_collector/plasmaboot.prom",
        )


def write_metrics_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file beside it, then rename(2)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(
            f"--metrics-file {path}: cannot write in {directory} ({exc.strerror})",
            hint="give a file in an existing directory you can write",
        ) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
