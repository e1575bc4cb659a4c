"""cli.context: global options in either position, and output that is not a terminal keeps
whole lines and whole tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.table import Table

from plasmaboot.cli import main
from plasmaboot.cli.context import Console, hoist_global_options

PROFILE = 'extends = "worker"\ndescription = "a profile of the extra directory"\n'


@pytest.fixture
def extra(tmp_path: Path) -> Path:
    directory = tmp_path / "extra"
    directory.mkdir()
    (directory / "my-very-long-profile-name-for-the-summary-table.toml").write_text(PROFILE)
    return directory


@pytest.mark.parametrize(
    "args",
    [
        ["--profiles-dir", "{d}", "profiles", "list"],
        ["profiles", "--profiles-dir", "{d}", "list"],
        ["profiles", "list", "--profiles-dir", "{d}"],
        ["profiles", "list", "--profiles-dir={d}"],
    ],
)
def test_profiles_dir_before_or_after_the_subcommand(extra: Path, args: list[str]) -> None:
    argv = [arg.replace("{d}", str(extra)) for arg in args]
    result = CliRunner().invoke(main, argv, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "my-very-long-profile-name-for-the-summary-table" in result.output


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path: Path) -> None:
    args = ["diff", str(tmp_path), str(tmp_path)]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 2 and plain.exc_info is not None
    assert plain.exc_info[0] is SystemExit
    debug = CliRunner().invoke(main, [*args, "--debug"])
    assert debug.exc_info is not None and debug.exc_info[0].__name__ == "UserError"


def test_global_options_after_a_command_not_imported_yet(
    extra: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a fresh process: the top-level group has imported none of its commands yet
    (cli.COMMANDS load on first use), and the options after the command still work."""
    monkeypatch.setattr(main, "commands", {})
    argv = ["profiles", "list", "--profiles-dir", str(extra)]
    listed = CliRunner().invoke(main, argv, env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    assert "my-very-long-profile-name-for-the-summary-table" in listed.output
    monkeypatch.setattr(main, "commands", {})
    debug = CliRunner().invoke(main, ["diff", str(tmp_path), str(tmp_path), "--debug"])
    assert debug.exc_info is not None and debug.exc_info[0].__name__ == "UserError"


def test_hoisting_leaves_other_arguments_alone() -> None:
    from plasmaboot.cli import main as group

    assert hoist_global_options(group, ["build", "-p", "worker", "--debug"]) == [
        "--debug",
        "build",
        "-p",
        "worker",
    ]
    assert hoist_global_options(group, ["--profiles-dir", "build", "build", "--debug"]) == [
        "--profiles-dir",
        "build",
        "--debug",
        "build",
    ]
    after_dashes = ["diff", "--", "--debug", "b"]
    assert hoist_global_options(group, after_dashes) == after_dashes
    assert hoist_global_options(group, ["nonsense", "--debug"]) == ["nonsense", "--debug"]


def test_piped_output_keeps_lines_and_tables_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    path = tmp_path / "out.txt"
    with path.open("w") as handle:
        console = Console(file=handle)
        assert not console.is_terminal
        long_line = "artifacts/" + "/".join(f"directory-{n}" for n in range(30)) + "/initrd"
        console.print(long_line, highlight=False)
        table = Table()
        for column in ("profile", "variant", "backend", "kernel", "initrd", "total"):
            table.add_column(column)
        table.add_row("all-in-one-with-a-long-name", "debug", "debian", "8.0", "120.0", "128.0")
        table.add_row("control-plane-with-a-long-name", "-", "debian", "8.0", "110.0", "118.0")
        console.print(table)
    text = path.read_text()
    assert long_line + "\n" in text  # one line, not wrapped at 80 columns
    assert "all-in-one-with-a-long-name" in text and "control-plane-with-a-long-name" in text
    assert "…" not in text


def test_columns_still_wins_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    with (tmp_path / "out.txt").open("w") as handle:
        assert Console(file=handle).width == 40
