"""`plasmaboot machines`: list, show, check and schema, as scripts and people use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot.cli import main
from plasmaboot.inventory.state import record_host_keys

from conftest import make_keypair

INVENTORY = """\
[defaults]
profile = "control-plane"

[machines.cp1]
mac = "52:54:00:12:34:01"
ipv4 = "10.20.0.11/24"

[machines.w1]
mac = ["52:54:00:12:34:02", "52:54:00:12:34:03"]
profile = "worker"
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "machines.toml"
    path.write_text(INVENTORY)
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_list_json(inventory: Path) -> None:
    code, out, _ = invoke("machines", "list", "--inventory", str(inventory), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["name"] for row in rows] == ["cp1", "w1"]
    assert rows[0]["label"] == "control-plane" and rows[0]["ipv4"] == "10.20.0.11/24"
    assert rows[1]["macs"] == ["52:54:00:12:34:02", "52:54:00:12:34:03"]


def test_list_reads_the_inventory_from_the_environment(inventory: Path) -> None:
    code, out, _ = invoke("machines", "list", env={"PLASMABOOT_INVENTORY": str(inventory)})
    assert code == 0 and "cp1" in out and "worker" in out


def test_show_by_name_or_mac(inventory: Path) -> None:
    code, out, _ = invoke("machines", "show", "w1", "--inventory", str(inventory), "--json")
    assert code == 0 and json.loads(out)["label"] == "worker"
    code, out, _ = invoke("machines", "show", "52-54-00-12-34-03", "--inventory", str(inventory))
    assert code == 0 and "w1" in out


def test_show_an_unknown_machine(inventory: Path) -> None:
    code, _, err = invoke("machines", "show", "cp9", "--inventory", str(inventory))
    assert code == 2
    assert err.splitlines()[0].startswith("error: no machine 'cp9'")
    assert "known machines: cp1, w1" in err


def test_check(inventory: Path) -> None:
    code, out, _ = invoke("machines", "check", "--inventory", str(inventory), "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "machines": 2}


def test_check_refuses_a_bad_inventory_in_one_line(inventory: Path) -> None:
    inventory.write_text(INVENTORY.replace("10.20.0.11/24", "10.20.0.11"))
    code, _, err = invoke("machines", "check", "--inventory", str(inventory))
    assert code == 2
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("error: ") and "machines.cp1.ipv4" in first


def test_no_inventory_given() -> None:
    code, _, err = invoke("machines", "list", env={"PLASMABOOT_INVENTORY": ""})
    assert code == 2 and "--inventory: no inventory given" in err


def test_schema_is_json_schema() -> None:
    code, out, _ = invoke("machines", "schema")
    assert code == 0 and json.loads(out)["title"] == "plasmaboot machine inventory"


def test_known_hosts_prints_the_reported_keys(inventory: Path, tmp_path: Path) -> None:
    key = " ".join(make_keypair(tmp_path, "host").with_suffix(".pub").read_text().split()[:2])
    record_host_keys(inventory, "w1", "10.20.0.50", "0123abcd", [key])
    code, out, _ = invoke("machines", "known-hosts", "--inventory", str(inventory))
    assert code == 0 and out == f"w1,10.20.0.50 {key}\n"
    code, out, _ = invoke("machines", "known-hosts", "--inventory", str(inventory), "--json")
    (record,) = json.loads(out)
    assert record["hostname"] == "w1" and record["keys"] == [key] and record["boot"] == "0123abcd"


def test_known_hosts_with_no_reports_prints_nothing(inventory: Path) -> None:
    assert invoke("machines", "known-hosts", "--inventory", str(inventory)) == (0, "", "")
