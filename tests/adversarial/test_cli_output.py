"""Adversarial probe of what `machines list|show|check|schema` and `profiles list|show` print:
a value is text, never rich markup (`[/]` used to end the command with a MarkupError
traceback, `[bold red]` to restyle the table), and a bad inventory is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from profile_files import invoke

MACHINE = '[machines.a]\nprofile = "worker"\nmac = "52:54:00:12:34:01"\n'
WIDE = {"COLUMNS": "400"}  # rich folds nothing: values are compared whole
MARKUP = ["[/]", "[bold red]x", "[link=http://evil]y[/link]", "\\\\[x]", "[/bold]"]


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    directory = tmp_path / "[red]inv"  # markup in the path, too
    directory.mkdir()
    path = directory / "machines.toml"
    labels = ", ".join(f'l{i} = "{value}"' for i, value in enumerate(MARKUP))
    path.write_text(MACHINE + f"labels = {{ {labels} }}\n")
    return path


@pytest.mark.parametrize("command", [["list"], ["show", "a"], ["show", "52-54-00-12-34-01"]])
def test_labels_are_printed_as_text(inventory: Path, command: list[str]) -> None:
    result = invoke("machines", *command, "--inventory", str(inventory), env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.exception is None
    for value in MARKUP:
        assert value.replace("\\\\", "\\") in result.output, (value, result.output)
    assert "[red]inv" in result.output or command[0] == "show"


def test_check_names_a_path_with_brackets(inventory: Path) -> None:
    result = invoke("machines", "check", "--inventory", str(inventory), env=WIDE)
    assert result.exit_code == 0 and "[red]inv/machines.toml: 1 machines" in result.output


def test_json_keeps_every_value_exactly(inventory: Path) -> None:
    result = invoke("machines", "list", "--json", "--inventory", str(inventory))
    labels = json.loads(result.output)[0]["labels"]
    assert list(labels.values()) == [value.replace("\\\\", "\\") for value in MARKUP]


def test_show_of_an_unknown_hostile_name_is_one_line(inventory: Path) -> None:
    result = invoke("machines", "show", "[/]\x1b[2J\u202e", "--inventory", str(inventory))
    assert result.exit_code == 2 and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    first = result.output.splitlines()[0]
    assert first.startswith("error: no machine '[/]\\x1b[2J\\u202e'"), first


def test_schema_is_json_and_forbids_unknown_keys() -> None:
    result = invoke("machines", "schema")
    schema = json.loads(result.output)
    assert schema["additionalProperties"] is False
    machine = schema["$defs"]["MachineTable"]
    assert machine["additionalProperties"] is False and "mac" in machine["required"]


@pytest.mark.parametrize(
    "text",
    [
        MACHINE + 'labels = { rack = "\\u001b[31m" }\n',
        MACHINE + 'hostname = "ignore"\n',
        MACHINE + 'kernel_params = ["a||reboot"]\n',
        "x = " + "[" * 5000 + "]" * 5000 + "\n",
        MACHINE.replace('"worker"', f'"{"x" * 300}"'),
    ],
    ids=["escape-label", "dnsmasq-word", "ipxe-chain", "deep", "long-profile"],
)
def test_the_real_command_line_says_one_line_and_exits_2(tmp_path: Path, text: str) -> None:
    path = tmp_path / "machines.toml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "plasmaboot", "machines", "check", "--inventory", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: machines.toml: ") or "machines.toml" in lines[0], lines
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("hint: ")), lines


# ------------------------------------------------------------------------------------------
# profiles show / list: descriptions and sysctl values are text too

PROFILE = (
    'extends = "base"\ndescription = "[/] and [bold]"\n[sysctl]\n"kernel.domainname" = "[/]"\n'
)


def test_profiles_show_prints_markup_as_text(tmp_path: Path) -> None:
    (tmp_path / "evil.toml").write_text(PROFILE)
    result = invoke("--profiles-dir", str(tmp_path), "profiles", "show", "evil")
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "evil: [/] and [bold]" in result.output
    assert "kernel.domainname = [/]" in result.output


def test_profiles_list_prints_markup_as_text(tmp_path: Path) -> None:
    (tmp_path / "evil.toml").write_text(PROFILE)
    result = invoke("--profiles-dir", str(tmp_path), "profiles", "list")
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "[/] and [bold]" in "".join(result.output.split("│"))


@pytest.mark.parametrize("command", [["profiles", "show"], ["build", "--profile"]])
def test_a_profile_name_longer_than_a_file_name_is_unknown(command: list[str]) -> None:
    result = invoke(*command, "x" * 300)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "unknown profile" in result.output
