"""plasmaboot.nix: whether a working nix is here (missing, too old, or fine), as the Nix
backend and `plasmaboot check` ask it. The backend: tests/image/backends/test_nix.py; the
real builds through the command line: tests/integration/test_nix_build.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from nix_flakes import needs_nix
from plasmaboot.cli import main
from plasmaboot.errors import UserError
from plasmaboot.image.backends.nix import NixBackend
from plasmaboot.nix import nix_works

from conftest import REPO


def test_missing_nix_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nix_works() is False
    with pytest.raises(UserError) as caught:
        NixBackend().check_available()
    assert caught.value.exit_code == 2
    assert caught.value.hint is not None and "apt-get install nix-bin" in caught.value.hint
    result = CliRunner().invoke(main, ["check", "--flake", str(REPO)])
    assert result.exit_code == 2
    assert "nix is not installed" in result.output


def test_too_old_nix_names_the_flakes_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix before 2.4 cannot be installed here; a `nix` that reports 2.3 stands in for it."""
    old_nix = tmp_path / "nix"
    old_nix.write_text("#!/bin/sh\necho 'nix (Nix) 2.3.16'\n")
    old_nix.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(UserError) as caught:
        NixBackend().check_available()
    assert "2.3.16 is too old" in caught.value.message
    assert caught.value.hint is not None
    assert "experimental-features = nix-command flakes in /etc/nix/nix.conf" in caught.value.hint
    assert nix_works() is False


@needs_nix
@pytest.mark.nix
def test_nix_works_here() -> None:
    NixBackend().check_available()
    assert nix_works() is True
