"""The build's checks: input (before any work, nothing created) and output (a set that is
not bootable never gets committed). The command-line side of the input checks is in
tests/cli/test_build.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaboot.errors import UserError, WorkError
from plasmaboot.image.backend import BuildRequest, BuildResult, Suitability
from plasmaboot.image.checks import check_creatable_dir, check_inputs, check_outputs
from plasmaboot.profiles.store import ProfileStore

from conftest import make_kernel, make_keypair


class RecordingBackend:
    """Records which of its checks ran, and fails the one it is told to."""

    name = "recording"
    takes_ssh_keys = True

    def __init__(self, failing: str | None = None) -> None:
        self.failing = failing
        self.checked: list[str] = []

    def check(self, what: str) -> None:
        self.checked.append(what)
        if what == self.failing:
            raise UserError(f"{what} failed")

    def check_options(self) -> None:
        self.check("options")

    def check_available(self) -> None:
        self.check("available")

    def suitability(self) -> Suitability:
        return Suitability(usable=True)

    def cache_inputs(self, request: BuildRequest) -> dict[str, str]:
        return {}

    def build(self, request: BuildRequest) -> BuildResult:
        raise AssertionError("checks never build")


def test_the_backends_options_are_checked_first(tmp_path: Path) -> None:
    backend = RecordingBackend(failing="options")
    with pytest.raises(UserError, match="options failed"):
        check_inputs(
            [ProfileStore().resolve("base")], backend, [], [(tmp_path, "--output-dir")], True
        )
    assert backend.checked == ["options"]
    backend = RecordingBackend()
    check_inputs([ProfileStore().resolve("base")], backend, [], [(tmp_path, "--output-dir")], True)
    assert backend.checked == ["options", "available"]


def test_keys_are_checked_by_the_one_rule(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("ssh-ed25519 AAAAnotakey\n")
    with pytest.raises(UserError, match=r"--ssh-key .*junk\.pub: expected OpenSSH public keys"):
        check_inputs([], RecordingBackend(), [junk], [])
    private = make_keypair(tmp_path)
    with pytest.raises(UserError, match="refusing to put it in an image") as caught:
        check_inputs([], RecordingBackend(), [private], [])
    assert caught.value.hint is not None and "id_ed25519.pub" in caught.value.hint


def test_a_directory_is_checked_without_being_created(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "artifacts"
    check_creatable_dir(target, "--output-dir")
    assert not (tmp_path / "new").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"--pxe-dir .*: cannot write there"):
        check_creatable_dir(blocker / "pxe", "--pxe-dir")


def good_outputs(directory: Path) -> Path:
    directory.mkdir()
    make_kernel(directory / "bzImage", size=2 << 20)
    (directory / "initrd").write_bytes(b"\x1f\x8b" + bytes(5 << 20))
    (directory / "netboot.ipxe").write_text("#!ipxe\n")
    return directory


def test_check_outputs_accepts_a_good_set(tmp_path: Path) -> None:
    check_outputs(good_outputs(tmp_path / "set"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "bzImage").write_text("not a kernel" * 200000), "not a Linux kernel"),
        (lambda d: (d / "initrd").write_bytes(b"070701" + bytes(5 << 20)), "compressed cpio"),
        (lambda d: (d / "initrd").write_bytes(b"\x1f\x8b" + bytes(100)), "sane range"),
        (lambda d: (d / "netboot.ipxe").unlink(), "no netboot.ipxe"),
        (lambda d: (d / "initrd").write_bytes(b""), "no initrd"),
    ],
)
def test_check_outputs_rejects(tmp_path: Path, damage: object, message: str) -> None:
    directory = good_outputs(tmp_path / "set")
    assert callable(damage)
    damage(directory)
    with pytest.raises(WorkError, match=message):
        check_outputs(directory)


def test_a_backend_that_ignores_ssh_key_refuses_it(tmp_path: Path) -> None:
    """An --ssh-key the backend would silently drop is refused before any check runs (the
    Nix backend reads keys only from the profile), and names the key and the backend."""
    public = make_keypair(tmp_path).with_suffix(".pub")
    backend = RecordingBackend()
    backend.takes_ssh_keys = False
    profile = ProfileStore().resolve("base")
    with pytest.raises(UserError, match=r"--ssh-key .*: the recording backend does not take"):
        check_inputs([profile], backend, [public], [(tmp_path / "out", "--output-dir")])
    assert backend.checked == ["options"]
    # without --ssh-key it goes on (and still wants a key from somewhere, or --no-ssh-key)
    with pytest.raises(UserError, match="no SSH key"):
        check_inputs([profile], backend, [], [(tmp_path / "out", "--output-dir")])
