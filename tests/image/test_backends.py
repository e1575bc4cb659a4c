"""The backend registry: names, options by backend, and the choice `--backend` makes
(a name refuses another backend's options; auto takes nix where it works and says why).
nix's probes are replaced, so every branch runs on any machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot.cli import main
from plasmaboot.errors import UserError
from plasmaboot.image import backends
from plasmaboot.image.backend import BackendOptions, BackendType, option
from plasmaboot.image.backends import (
    backend_names,
    choices,
    get,
    options_from_values,
    register,
    select_backend,
)
from plasmaboot.image.backends import nix as nix_backend
from plasmaboot.image.backends.debian.backend import DebianBackend, DebianOptions
from plasmaboot.image.backends.nix import NixBackend, NixOptions


@pytest.fixture
def nix_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """A working nix whose flake inputs can be fetched."""
    monkeypatch.setattr(nix_backend, "nix_works", lambda: True)
    monkeypatch.setattr(nix_backend, "flake_inputs_problem", lambda *_: None)


@pytest.fixture
def no_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nix_backend, "nix_works", lambda: False)


@pytest.fixture
def debian_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """debian's tools installed (auto asks), whatever this machine has."""
    monkeypatch.setattr(DebianBackend, "check_available", lambda self: None)


def test_names_and_choices() -> None:
    assert backend_names() == ["debian", "nix"]
    assert choices() == ["auto", "debian", "nix"]
    assert get("nix").options is NixOptions


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(UserError, match=r"--backend: expected one of auto, debian, nix, got 'x'"):
        select_backend("x", {})


def test_options_from_values_give_each_backend_its_own() -> None:
    options = options_from_values({"release": "trixie", "flake": Path("/f"), "plasmacloud": None})
    assert options == {
        "debian": DebianOptions(release="trixie"),
        "nix": NixOptions(flake=Path("/f")),
    }
    assert options["debian"].given() == ["--release"]
    assert options["nix"].given() == ["--flake"]


@pytest.mark.usefixtures("nix_here")
def test_a_backend_asked_for_is_made_with_its_options() -> None:
    options = {"debian": DebianOptions(squashfs_level=15)}
    backend, reason = select_backend("debian", options)
    assert isinstance(backend, DebianBackend) and reason == "asked for"
    assert backend.options.squashfs_level == 15
    nix, _ = select_backend("nix", {"nix": NixOptions(plasmacloud="path:/p")})
    assert isinstance(nix, NixBackend)
    assert nix.input_options() == ["--override-input", "plasmacloud", "path:/p"]


@pytest.mark.parametrize(
    ("choice", "options", "message", "hint"),
    [
        (
            "debian",
            {"nix": NixOptions(flake=Path("."))},
            "--flake applies only to the nix backend, and --backend debian was given",
            "drop --flake, or build with --backend nix",
        ),
        (
            "debian",
            {"nix": NixOptions(plasmacloud="path:/p")},
            "--plasmacloud applies only to the nix backend, and --backend debian was given",
            "drop --plasmacloud, or build with --backend nix",
        ),
        (
            "nix",
            {"debian": DebianOptions(squashfs_level=15)},
            "--squashfs-level applies only to the debian backend, and --backend nix was given",
            "drop --squashfs-level, or build with --backend debian",
        ),
    ],
)
def test_another_backends_option_is_refused(
    choice: str, options: dict[str, BackendOptions], message: str, hint: str
) -> None:
    with pytest.raises(UserError) as caught:
        select_backend(choice, options)
    assert (caught.value.message, caught.value.hint) == (message, hint)
    assert caught.value.exit_code == 2


def test_an_option_at_its_default_is_not_given() -> None:
    backend, _ = select_backend("nix", {"debian": DebianOptions(squashfs_level=19)})
    assert isinstance(backend, NixBackend)


@pytest.mark.usefixtures("nix_here")
def test_auto_takes_nix_where_it_works() -> None:
    backend, reason = select_backend("auto", {"nix": NixOptions(plasmacloud="path:/p")})
    assert isinstance(backend, NixBackend)
    assert backend.options.plasmacloud == "path:/p"
    assert reason == "auto: nix with flakes and reachable inputs"
    _, unused = select_backend("auto", {"debian": DebianOptions(squashfs_level=15)})
    assert unused == "auto: nix with flakes and reachable inputs, --squashfs-level not used"


@pytest.mark.usefixtures("no_nix", "debian_here")
def test_auto_without_nix_takes_debian_and_names_the_unused_options() -> None:
    backend, reason = select_backend("auto", {"debian": DebianOptions(release="trixie")})
    assert isinstance(backend, DebianBackend) and backend.options.release == "trixie"
    assert reason == "auto: no working nix with flakes"
    _, reason = select_backend("auto", {"nix": NixOptions(flake=Path("."), plasmacloud="path:/p")})
    assert reason == "auto: no working nix with flakes, --flake not used, --plasmacloud not used"


@pytest.mark.usefixtures("debian_here")
def test_auto_takes_debian_when_nix_cannot_fetch_its_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    monkeypatch.setattr(nix_backend, "nix_works", lambda: True)

    def unreachable(flake: Path | None, inputs: list[str]) -> str:
        seen.append((flake, inputs))
        return "unable to download nixpkgs"

    monkeypatch.setattr(nix_backend, "flake_inputs_problem", unreachable)
    backend, reason = select_backend("auto", {"nix": NixOptions(plasmacloud="path:/p")})
    assert isinstance(backend, DebianBackend)
    assert reason == (
        "auto: nix cannot fetch the flake's inputs (unable to download nixpkgs), "
        "--plasmacloud not used"
    )
    # the probe tried the override the build would have used
    assert seen == [(None, ["--override-input", "plasmacloud", "path:/p"])]


@pytest.mark.usefixtures("no_nix")
def test_auto_falls_back_to_the_last_backend_even_when_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its own availability check, with the input checks, then says what to install."""

    def missing(self: DebianBackend) -> None:
        raise UserError("required tool 'mmdebstrap' was not found on PATH")

    monkeypatch.setattr(DebianBackend, "check_available", missing)
    backend, reason = select_backend("auto", {})
    assert isinstance(backend, DebianBackend)
    assert reason == "auto: no working nix with flakes"


@dataclass(frozen=True)
class ClashingOptions(BackendOptions):
    release: str = option("v1", help="a release of something else")


def test_two_backends_cannot_share_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    backend_names()  # the built-in backends are registered
    monkeypatch.setattr(backends, "_registry", dict(backends._registry))
    clash = BackendType(
        name="other", options=ClashingOptions, make=lambda _: DebianBackend(), auto_rank=3
    )
    with pytest.raises(ValueError, match="other: option --release is already debian's"):
        register(clash)


def test_the_command_line_is_made_from_the_option_descriptions() -> None:
    result = CliRunner().invoke(main, ["build", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split()).split(" Options: ", 1)[1]
    for name in backend_names():
        for info in get(name).options.describe():
            row = text[text.index(f" {info.flag} ") :][:400]  # the option's row, unwrapped
            assert f"{name.capitalize()} backend: {info.help}." in row
            if info.default is not None:
                assert f"[default: {info.default}" in row
    assert "--backend [auto|debian|nix]" in text
