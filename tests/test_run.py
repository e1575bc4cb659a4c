"""run.py: the one subprocess helper, in the foreground and the background."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from plasmaboot.errors import UserError, WorkError
from plasmaboot.log import Log
from plasmaboot.run import run, start


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_logs_the_command_and_its_output(tmp_path: Path) -> None:
    with Log(tmp_path / "build.log") as log:
        run(["sh", "-c", "echo hello"], log=log)
    text = (tmp_path / "build.log").read_text()
    assert "$ sh -c 'echo hello'" in text and "  hello" in text


def test_a_failure_shows_the_command_and_the_tail() -> None:
    with pytest.raises(WorkError, match=r"exit code 3: sh -c .*\nlast words"):
        run(["sh", "-c", "echo last words; exit 3"])


def test_a_missing_tool_names_its_package() -> None:
    with pytest.raises(UserError, match="not-a-tool-anywhere"):
        run(["not-a-tool-anywhere"])


def test_a_captured_run_honours_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(WorkError, match="timed out after 1s"):
        run(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 10


def test_a_streamed_run_honours_its_timeout(tmp_path: Path) -> None:
    """The mmdebstrap path: a program that keeps printing is still stopped at the deadline,
    with what it started (its process group)."""
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; while true; do echo tick; sleep 0.2; done"
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(WorkError, match="timed out after 2s"):
        run(["sh", "-c", script], on_line=lines.append, timeout=2)
    assert time.monotonic() - started < 15
    assert "tick" in lines
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child), "the program's own child outlived the timeout"


def test_a_silent_streamed_run_is_stopped_after_its_idle_timeout() -> None:
    """A stalled mirror: mmdebstrap prints nothing more; the build does not hang."""
    lines: list[str] = []
    with pytest.raises(WorkError, match="timed out after 2s without output"):
        run(["sh", "-c", "echo start; sleep 60"], on_line=lines.append, idle_timeout=2)
    assert lines == ["start"]


def test_a_streamed_run_that_keeps_talking_is_not_idle() -> None:
    script = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done"
    lines: list[str] = []
    run(["sh", "-c", script], on_line=lines.append, idle_timeout=2)
    assert lines == ["1", "2", "3", "4", "5", "6"]


def test_background_program_is_logged_and_stopped(tmp_path: Path) -> None:
    with Log(tmp_path / "build.log") as log:
        with start(["sleep", "60"], log=log) as proc:
            assert proc.running()
            pid = proc.pid
        assert proc.returncode is not None  # reaped
        assert not alive(pid)
    text = (tmp_path / "build.log").read_text()
    assert "sleep 60" in text and f"stopped {proc.argv[0]} (pid {pid})" in text


def test_background_program_writes_to_a_file(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    with start(["sh", "-c", "echo out; echo err >&2"], stdout=output) as proc:
        assert proc.wait(timeout=10) == 0
    assert sorted(output.read_text().split()) == ["err", "out"]


def test_background_wait_times_out_and_stops_it() -> None:
    proc = start(["sleep", "60"])
    with pytest.raises(WorkError, match="timed out"):
        proc.wait(timeout=1)
    assert proc.returncode is not None


def test_background_program_dies_with_its_parent(tmp_path: Path) -> None:
    """A plasmaboot killed with -9 leaves no QEMU behind."""
    pidfile = tmp_path / "pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from plasmaboot.run import start; "
            f"p = start(['sleep', '60']); open({str(pidfile)!r}, 'w').write(str(p.pid)); "
            "time.sleep(60)",
        ],
        env={**os.environ},
    )
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "the parent never started its child"
        time.sleep(0.1)
    child = int(pidfile.read_text())
    assert alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)


def test_steps_in_two_threads_keep_their_own_nesting(tmp_path: Path) -> None:
    """The Debian hook's last two steps run at once: a thread's depth is its own, so a line
    is never indented by the other thread's step."""
    started = threading.Barrier(2, timeout=10)
    with Log(tmp_path / "build.log") as log:

        def step(name: str) -> None:
            with log.step(name):
                started.wait()
                log.info(f"inside {name}")
                started.wait()

        threads = [threading.Thread(target=step, args=(name,)) for name in ("first", "second")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.info("after")
    lines = (tmp_path / "build.log").read_text().splitlines()
    inside = [line for line in lines if "inside" in line]
    assert len(inside) == 2 and all(line.startswith("  [") for line in inside)
    assert lines[-1].startswith("[") and lines[-1].endswith("after")
    assert sorted(log.steps) == ["first", "second"]
