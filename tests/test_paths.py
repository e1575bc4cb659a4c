"""paths.read_small_file: the one rule for a file a user names (layouts, inventories, key
files, state records, scripts): a regular file of at most the limit, read once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from plasmaboot.paths import NotASmallFile, describe_size, read_small_file


def test_a_small_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1024)
    assert read_small_file(path, 1024) == b"x" * 1024
    (tmp_path / "link").symlink_to(path)  # a link to a regular file is that file
    assert read_small_file(tmp_path / "link", 1024) == b"x" * 1024


def test_one_byte_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1025)
    with pytest.raises(NotASmallFile, match=r"^larger than 1 KiB$"):
        read_small_file(path, 1024)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: os.mkfifo(p),  # would block forever if opened for reading
        lambda p: p.symlink_to("/dev/zero"),  # would never end
        lambda p: p.symlink_to("/dev/urandom"),
        lambda p: p.mkdir(),
    ],
    ids=["fifo", "dev-zero", "dev-urandom", "directory"],
)
def test_what_is_not_a_regular_file_is_never_read(tmp_path: Path, make: object) -> None:
    path = tmp_path / "f"
    make(path)  # type: ignore[operator]
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_small_file(path, 1 << 20)
        except BaseException as exc:  # the test looks at what was raised
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "read_small_file blocked"
    assert len(result) == 1 and isinstance(result[0], NotASmallFile)
    assert str(result[0]) == "not a regular file"


def test_a_missing_file_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "missing", 10)


@pytest.mark.parametrize(
    ("size", "text"),
    [(64 << 10, "64 KiB"), (16 << 20, "16 MiB"), (2 << 30, "2 GiB"), (1000, "1000 bytes")],
)
def test_limits_are_described_as_people_write_them(size: int, text: str) -> None:
    assert describe_size(size) == text
