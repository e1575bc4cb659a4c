"""`plasmaboot profiles list|show` and `plasmaboot schema`: custom profile directories, the
help, usage errors and --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from plasmaboot import __version__
from profile_files import invoke, write_tree

PLASMABOOT = Path(sys.executable).parent / "plasmaboot"


EDGE = """\
description = "Edge: a worker with DNS"
extends = "worker"

[services.flashdns]
enable = true
"""


def test_custom_profile_is_listed_and_resolves(workdir: Path) -> None:
    write_tree(workdir / "profiles", {"edge.toml": EDGE})

    table = invoke("--profiles-dir", "profiles", "profiles", "list")
    assert table.exit_code == 0, table.output
    first_column = [line.split("│")[1].strip() for line in table.stdout.splitlines() if "│" in line]
    assert "edge" in first_column

    listed = invoke("--profiles-dir", "profiles", "profiles", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.stdout)["profiles"]}
    assert set(rows) == {"edge", "all-in-one", "base", "control-plane", "worker"}
    assert rows["edge"]["extends"] == ["base", "worker"]
    assert rows["edge"]["services"] == ["plasmavmc", "novanet", "flashdns"]
    assert json.loads(listed.stdout)["variants"] == ["debug", "minimal", "rescue"]

    shown = invoke("--profiles-dir", "profiles", "profiles", "show", "edge", "--json")
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert body["services"]["flashdns"]["enable"] is True
    assert body["services"]["flashdns"]["ports"] == {"port": 53}
    assert body["sources"][-1] == "profiles/edge.toml"


def test_profiles_dir_from_the_environment(workdir: Path) -> None:
    write_tree(workdir / "site", {"edge.toml": EDGE})
    result = invoke("profiles", "show", "edge", "--json", env={"PLASMABOOT_PROFILES_DIR": "site"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["description"] == "Edge: a worker with DNS"
    without = invoke("profiles", "show", "edge")
    assert without.exit_code == 2

    write_tree(workdir / "more", {"edge-dns.toml": 'extends = "edge"\n'})
    both = invoke(
        "profiles", "show", "edge-dns", "--json", env={"PLASMABOOT_PROFILES_DIR": "more:site"}
    )
    assert both.exit_code == 0, both.output
    assert json.loads(both.stdout)["sources"][-2:] == ["site/edge.toml", "more/edge-dns.toml"]


def test_show_prints_the_resolved_profile(workdir: Path) -> None:
    write_tree(workdir / "profiles", {"edge.toml": EDGE})
    result = invoke("--profiles-dir", "profiles", "profiles", "show", "edge", "--variant", "debug")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("edge-debug: Edge: a worker with DNS (debug variant:")
    assert "flashdns" in result.stdout and "strace" in result.stdout


# ---------------------------------------------------------------------------------------
# The command line.


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"plasmaboot, version {__version__}\n"


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ((), "--profiles-dir"),
        (("profiles",), "List and show profiles"),
        (("profiles", "list"), "--json"),
        (("profiles", "show"), "--variant"),
        (("schema",), "JSON Schema"),
    ],
    ids=["main", "profiles", "profiles-list", "profiles-show", "schema"],
)
def test_help(args: tuple[str, ...], mentions: str) -> None:
    result = invoke(*args, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ")
    assert mentions in result.stdout


def test_schema_is_a_json_schema_of_the_profile_fields() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "plasmaboot profile"
    assert schema["additionalProperties"] is False
    for key in ("extends", "unset", "packages", "ssh", "kernel", "sysctl", "services"):
        assert key in schema["properties"]
    definitions = json.dumps(schema["$defs"])
    for key in ("authorized_keys", "memory_max", "cpu_quota", "include_modules", "dhcp"):
        assert key in definitions


@pytest.mark.parametrize(
    "args",
    [("profiles", "show"), ("profiles", "lst"), ("--no-such-option",), ("schema", "extra")],
    ids=["missing-argument", "unknown-command", "unknown-option", "extra-argument"],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Usage: " in result.stderr
    assert "Traceback" not in result.output


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PLASMABOOT_PROFILES_DIR"}
    return subprocess.run(
        [str(PLASMABOOT), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_debug_shows_a_traceback_for_a_user_error(workdir: Path) -> None:
    write_tree(workdir / "profiles", {"edge.toml": '[services.chainfire]\nport = "abc"\n'})
    message = 'profiles/edge.toml: services.chainfire.port: expected an integer 1-65535, got "abc"'

    plain = run_cli("--profiles-dir", "profiles", "profiles", "show", "edge", cwd=workdir)
    assert plain.returncode == 2
    assert plain.stderr == f"error: {message}\n"
    assert plain.stdout == ""

    debug = run_cli(
        "--debug", "--profiles-dir", "profiles", "profiles", "show", "edge", cwd=workdir
    )
    assert debug.returncode == 1
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert f"plasmaboot.errors.UserError: {message}" in debug.stderr
