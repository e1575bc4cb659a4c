"""Timed, nested steps and the build log: every step, command and output goes to the
log file; step starts and ends go to whoever watches progress (a terminal or plain lines)."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

# Called with (subject, step, seconds): seconds is None when the step starts.
ProgressCallback = Callable[[str, str, float | None], None]


class Log:
    """A build log file plus step timing. Steps of different names may run in several
    threads at once (the Debian hook's last two): each thread keeps its own nesting depth
    (starting at 0) and lines are written whole; a progress callback is called from the
    thread of the step."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        subject: str = "",
        progress: ProgressCallback | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.path = path
        self.subject = subject
        self.progress = progress
        self.steps: dict[str, float] = {}
        self.warnings: list[str] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        # a stream we were given (e.g. stdout of the build hook) is written, never closed
        self._file: TextIO | None = stream
        self._owns_file = False
        if path is not None:
            self._owns_file = True
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None and self._owns_file:
            self._file.close()
        self._file = None

    def write(self, text: str) -> None:
        if self._file is None:
            return
        indent = "  " * self._depth
        with self._lock:
            for line in text.splitlines():
                self._file.write(f"{indent}{line}\n")
            self._file.flush()

    def info(self, message: str) -> None:
        self.write(f"[{time.strftime('%H:%M:%S')}] {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.write(f"WARNING: {message}")

    def command(self, argv: list[str]) -> None:
        self.write(f"$ {shlex.join(argv)}")

    @property
    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @_depth.setter
    def _depth(self, value: int) -> None:
        self._local.depth = value

    def output(self, text: str) -> None:
        self._depth += 1
        try:
            self.write(text)
        finally:
            self._depth -= 1

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Log and time one step; nested steps are indented in the log."""
        self.info(f"==> {name}")
        if self.progress is not None:
            self.progress(self.subject, name, None)
        started = time.monotonic()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            seconds = time.monotonic() - started
            self.steps[name] = round(self.steps.get(name, 0.0) + seconds, 3)
            self.info(f"<== {name} ({seconds:.1f}s)")
            if self.progress is not None:
                self.progress(self.subject, name, seconds)

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
