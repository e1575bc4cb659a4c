"""A machine's secrets (`--secrets DIR`, the tree under `DIR/<machine>/`) as the tar stream
install sends over SSH's stdin: it lands on the installed root as it is (nixos-anywhere's
`--extra-files` convention), every file mode 0600, owned by root, or by a service's user
when it lies under that service's config directory (`/etc/iam/...` -> iam).

Only regular files and directories are taken (a symlink could point the write anywhere on
the target); only file entries go into the stream, so an existing directory such as /etc
keeps its owner and mode. Contents never reach a log, a report or a command line: the
report lists paths, owners and modes.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from plasmaboot.catalog import load_catalog
from plasmaboot.errors import UserError
from plasmaboot.profiles.located_errors import display_path

MAX_SECRETS = 64 << 20  # all of a machine's secrets together


@dataclass(frozen=True)
class Secret:
    """One secret file as it lands: its path on the installed root, owner, mode."""

    path: str  # "/etc/iam/token"
    owner: str
    mode: int = 0o600

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "owner": self.owner, "mode": f"{self.mode:04o}"}


def service_owners() -> dict[str, str]:
    """Config directory -> the user of the service that owns it (`/etc/iam` -> `iam`)."""
    return {str(PurePosixPath(s.config).parent): s.user for s in load_catalog().values()}


def owner_of(path: PurePosixPath, owners: dict[str, str]) -> str:
    for directory, user in owners.items():
        if path.is_relative_to(directory) and directory not in ("/", "/etc"):
            return user
    return "root"


def list_secrets(root: Path) -> list[tuple[Path, Secret]]:
    """(local file, where it lands) for every file under `root`; a UserError for a symlink,
    device or FIFO, or for a file or directory this user cannot read, naming it (a
    directory that cannot be listed would otherwise drop its secrets without a word)."""
    if not root.is_dir():
        return []
    require_listable(root)
    owners = service_owners()
    found: list[tuple[Path, Secret]] = []
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            require_listable(path)
            continue
        if not stat.S_ISREG(mode):
            raise UserError(
                f"--secrets: {display_path(path)} is not a regular file",
                hint="a secrets tree holds files and directories only (no symlinks)",
            )
        require_readable(path)
        target = PurePosixPath("/") / path.relative_to(root).as_posix()
        found.append((path, Secret(str(target), owner_of(target, owners))))
    return found


def require_listable(directory: Path) -> None:
    if not os.access(directory, os.R_OK | os.X_OK):
        raise unreadable(directory, "Permission denied")


def require_readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise unreadable(path, exc.strerror or str(exc)) from exc


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:  # gone or changed since it was listed
        raise unreadable(path, exc.strerror or str(exc)) from exc


def unreadable(path: Path, reason: str) -> UserError:
    return UserError(
        f"--secrets: {display_path(path)}: cannot read it ({reason})",
        hint="make the machine's secrets readable by the user who runs plasmaboot install",
    )


def secrets_tar(files: list[tuple[Path, Secret]]) -> bytes:
    """The tar stream of `files` (paths relative to the target root; names of owners, which
    the node's tar maps to the installed system's ids: both come from the same image)."""
    total = sum(size_of(path) for path, _ in files)
    if total > MAX_SECRETS:
        raise UserError(f"--secrets: {total} bytes of secrets; at most {MAX_SECRETS} are sent")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, secret in files:
            info = tarfile.TarInfo(secret.path.lstrip("/"))
            try:
                data = path.read_bytes()
            except OSError as exc:  # changed since it was listed
                raise unreadable(path, exc.strerror or str(exc)) from exc
            info.size = len(data)
            info.mode = secret.mode
            info.uname = info.gname = secret.owner
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
