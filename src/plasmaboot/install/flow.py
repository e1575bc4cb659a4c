"""One install from start to first boot: the Debian steps in order, each timed and in the
report; then reboot, wait for the installed system's SSH (pinned to the host keys made
during the install), and check its enabled services. A failure anywhere still writes the
report, naming the step and why; the same command runs again after it is fixed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plasmaboot.errors import PlasmabootError, WorkError
from plasmaboot.install.debian import STEPS, Install, plan_json, release_previous
from plasmaboot.install.remote import Remote
from plasmaboot.inventory.state import make_private_dirs
from plasmaboot.log import Log

FIRST_BOOT_TIMEOUT = 600.0
SERVICES_TIMEOUT = 180.0
POLL = 2.0


@dataclass
class Report:
    """The JSON report of one install (paths, owners and modes of secrets; never contents)."""

    machine: str
    host: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    ok: bool = False
    failed_step: str | None = None
    error: str | None = None
    hint: str | None = None
    steps: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "host": self.host,
            "started_at": self.started_at,
            "ok": self.ok,
            "failed_step": self.failed_step,
            "error": self.error,
            "hint": self.hint,
            "steps": self.steps,
            **self.data,
        }

    def write(self, path: Path) -> None:
        make_private_dirs(path.parent)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(self.as_json(), indent=2) + "\n")
        temp.replace(path)


def timed(report: Report, log: Log, name: str, action: Callable[[], None]) -> None:
    started = time.monotonic()
    try:
        with log.step(name):
            action()
    except PlasmabootError as exc:
        report.failed_step, report.error, report.hint = name, exc.message, exc.hint
        raise
    finally:
        report.steps[name] = round(time.monotonic() - started, 2)


def install_to_disk(install: Install, remote: Remote, report: Report, log: Log) -> None:
    """The install steps (everything up to the reboot)."""
    report.data["parts"] = install.parts  # filled as the steps run
    timed(report, log, "release", lambda: release_previous(install, remote))
    for name, step in STEPS:
        timed(report, log, name, lambda step=step: step(install, remote))  # type: ignore[misc]
        report.data["plan"] = plan_json(install)
    report.data["host_keys"] = install.host_keys
    report.data["services"] = list(install.services)
    report.data["secrets"] = [secret.as_json() for _, secret in install.secrets]
    report.data["kernel"] = install.kernel_version


def reboot(remote: Remote) -> None:
    """Reboot the node; the SSH session returns first (the reboot is started detached)."""
    remote.sh("(sleep 1; systemctl reboot) >/dev/null 2>&1 &")


def wait_for_installed(installed: Remote, timeout: float = FIRST_BOOT_TIMEOUT) -> None:
    """Until the installed system answers SSH with its own (pinned) key: the RAM system's
    key fails the check, so answering at all means the disk booted."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            installed.sh("true", timeout=30)
            return
        except WorkError as exc:
            last = exc.message
        time.sleep(POLL)
    raise WorkError(
        f"the installed system did not answer SSH with its own host key within {timeout:.0f} s"
        + (f" (last: {last})" if last else ""),
        hint="watch the machine's console: did it boot from its disk?",
    )


def check_services(
    installed: Remote, services: tuple[str, ...], timeout: float = SERVICES_TIMEOUT
) -> dict[str, str]:
    """Each enabled service's state, once all are active (or at the timeout)."""
    if not services:
        return {}
    deadline = time.monotonic() + timeout
    while True:
        out = installed.sh(
            "systemctl is-active " + " ".join(f"{s}.service" for s in services) + " || true"
        )
        states = dict(zip(services, out.split(), strict=False))
        if all(states.get(s) == "active" for s in services):
            return states
        if time.monotonic() >= deadline or any(v == "failed" for v in states.values()):
            bad = ", ".join(
                f"{s}: {states.get(s, '?')}" for s in services if states.get(s) != "active"
            )
            raise WorkError(
                f"enabled services not active on the installed system: {bad}",
                hint="see `journalctl -u <service>` on the machine",
            )
        time.sleep(POLL)
