"""Adversarial probe of profile and variant names and of `extends`: a name on the command
line or a file name in a profiles directory is a name by the one rule, never a path; a chain
of `extends` resolves in time linear in its files (a diamond of parents used to be
exponential) and a chain too deep is one located line, never a RecursionError."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.profiles.store import MAX_EXTENDS_DEPTH, ProfileStore
from profile_files import invoke

HOSTILE_NAMES = [
    "../x", "/abs", "a/b", "", "a\x00b", "variants/debug", "..", ".", "base.toml", "Base",
    "a b", "a\nb", "_x", "x\u00e9", "${boot-server}", "a;b",
]  # fmt: skip


def one_line_exit_2(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[1].startswith("hint: "), lines
    return lines[0]


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    """A profiles directory, with a profile just outside it that `../x` would reach."""
    directory = tmp_path / "profiles"
    (directory / "variants").mkdir(parents=True)
    (tmp_path / "x.toml").write_text('extends = "base"\n')
    (directory / "ok.toml").write_text('extends = "base"\n')
    return directory


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("command", [["profiles", "show"], ["build", "--profile"]])
def test_a_profile_name_that_is_no_name_is_refused(
    profiles: Path, command: list[str], name: str
) -> None:
    first = one_line_exit_2("--profiles-dir", str(profiles), *command, name)
    assert "expected a profile name of lowercase letters, digits and '-'" in first, first


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "../x", "../../profiles/ok"])
def test_a_variant_name_that_is_no_name_is_refused(profiles: Path, name: str) -> None:
    first = one_line_exit_2(
        "--profiles-dir", str(profiles), "profiles", "show", "ok", "--variant", name
    )
    assert first.startswith("error: --variant: expected a variant name"), first


@pytest.mark.parametrize(
    "file_name", ["bad\nname", "Upper", "a b", "a.b", "_x", "-x", "x\u202e", "[b]x", "a;b"]
)
@pytest.mark.parametrize(
    "command", [["profiles", "list"], ["build", "--all"], ["profiles", "show", "ok"]]
)
def test_a_profile_file_whose_name_is_no_name_is_refused(
    profiles: Path, file_name: str, command: list[str]
) -> None:
    (profiles / f"{file_name}.toml").write_text('extends = "base"\n')
    if command[-1] == "ok":  # resolving one good profile does not list the directory
        assert invoke("--profiles-dir", str(profiles), *command).exit_code == 0
        return
    first = one_line_exit_2("--profiles-dir", str(profiles), *command)
    assert ": file " in first and "expected a profile name" in first, first


def test_a_variant_file_whose_name_is_no_name_is_refused(profiles: Path) -> None:
    (profiles / "variants" / "De Bug.toml").write_text("")
    first = one_line_exit_2("--profiles-dir", str(profiles), "profiles", "list")
    assert "expected a variant name" in first and '"De Bug.toml"' in first, first


@pytest.mark.parametrize("length", [MAX_EXTENDS_DEPTH + 1, 1000])
def test_a_chain_of_extends_too_deep_is_one_located_line(tmp_path: Path, length: int) -> None:
    (tmp_path / "c0.toml").write_text('extends = "base"\n')
    for i in range(1, length):
        (tmp_path / f"c{i}.toml").write_text(f'extends = "c{i - 1}"\n')
    with pytest.raises(UserError) as caught:
        ProfileStore([tmp_path]).resolve(f"c{length - 1}")
    message = caught.value.message
    assert "\n" not in message and f"at most {MAX_EXTENDS_DEPTH} profiles" in message, message
    assert message.startswith(str(tmp_path)) and ".toml: extends: " in message, message


def test_a_chain_as_deep_as_allowed_resolves(tmp_path: Path) -> None:
    (tmp_path / "c0.toml").write_text('extends = "base"\n')
    for i in range(1, MAX_EXTENDS_DEPTH - 1):
        (tmp_path / f"c{i}.toml").write_text(f'extends = "c{i - 1}"\n')
    top = f"c{MAX_EXTENDS_DEPTH - 2}"
    profile = ProfileStore([tmp_path]).resolve(top)
    assert (
        len(profile.sources) == MAX_EXTENDS_DEPTH
        and profile.extends[-1] == f"c{MAX_EXTENDS_DEPTH - 3}"
    )


@pytest.mark.parametrize("depth", [19, 30])
def test_a_diamond_of_parents_resolves_in_linear_time(tmp_path: Path, depth: int) -> None:
    """Each level extends both profiles of the level below: 2^depth paths, 2*depth files."""
    for side in "ab":
        (tmp_path / f"{side}0.toml").write_text('extends = "base"\n')
    for i in range(1, depth):
        for side in "ab":
            (tmp_path / f"{side}{i}.toml").write_text(f'extends = ["a{i - 1}", "b{i - 1}"]\n')
    started = time.monotonic()
    profile = ProfileStore([tmp_path]).resolve(f"a{depth - 1}")
    assert time.monotonic() - started < 10
    assert len(profile.sources) == 2 * depth  # base and every file once (a(depth-1) is last)
    assert profile.extends[:3] == ["base", "a0", "b0"]


def test_a_cycle_through_a_diamond_is_still_named(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = ["b", "c"]\n')
    (tmp_path / "b.toml").write_text('extends = "base"\n')
    (tmp_path / "c.toml").write_text('extends = ["b", "a"]\n')
    with pytest.raises(UserError) as caught:
        ProfileStore([tmp_path]).resolve("a")
    assert "(cycle a -> c -> a)" in caught.value.message
