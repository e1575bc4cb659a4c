"""What the system learns at run time, kept beside the inventory and never inside the
artifacts: `<inventory dir>/<inventory stem>.state/` (e.g. `machines.state/` beside
`machines.toml`), created 0700 on first write, one JSON file per fact per machine, each
written atomically (a temp file, then one rename).

    hostkeys/<machine>.json   the public host keys a machine reported at its last boot
                              {"machine", "address", "reported_at", "boot", "keys": [...]}
    installed/<machine>.json  the machine is installed to its disk (inventory/installed.py)

A record is a hint, not proof: the report came with a one-time token from the address the
token was bound to, but a MAC or an address can be claimed by another machine on the same
network (TPM attestation comes later).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from plasmaboot.paths import read_regular_file

MAX_RECORD_SIZE = 64 << 10  # a record holds a few public keys


def state_dir(inventory_path: Path) -> Path:
    """`machines.state/` beside `machines.toml` (not created here)."""
    return inventory_path.parent / f"{inventory_path.stem}.state"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` at once: a reader sees the old file or the new one.
    The state directory and its subdirectories are created 0700."""
    make_private_dirs(path.parent)
    descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and missing parents up to the state directory, each 0700."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


def read_json(path: Path) -> Any | None:
    """A state file's JSON; None when it is missing, not a regular file, too large or not
    JSON (state is what plasmaboot wrote; anything else is ignored, never trusted)."""
    try:
        raw = read_regular_file(path, MAX_RECORD_SIZE + 1)
    except OSError:
        return None
    if raw is None or len(raw) > MAX_RECORD_SIZE:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
