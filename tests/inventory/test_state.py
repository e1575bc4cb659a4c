"""inventory.state: run-time facts beside the inventory, written atomically, read back
checked; host keys and the known_hosts lines made from them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from plasmaboot.inventory.load import load_inventory
from plasmaboot.inventory.state import (
    hostkeys_path,
    known_hosts_lines,
    read_host_keys,
    record_host_keys,
    state_dir,
    write_json_atomic,
)
from plasmaboot.profiles.store import ProfileStore

from conftest import make_keypair

INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"
ipv4 = "10.20.0.11/24"
hostname = "w1.lab"

[machines.w2]
mac = "52:54:00:12:34:02"
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "machines.toml"
    path.write_text(INVENTORY)
    return path


def public_key(directory: Path, name: str) -> str:
    return " ".join(make_keypair(directory, name).with_suffix(".pub").read_text().split()[:2])


def test_the_state_lives_beside_the_inventory_private(inventory: Path) -> None:
    assert state_dir(inventory) == inventory.parent / "machines.state"
    write_json_atomic(state_dir(inventory) / "hostkeys" / "w1.json", {"a": 1})
    for directory in (state_dir(inventory), state_dir(inventory) / "hostkeys"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    written = state_dir(inventory) / "hostkeys" / "w1.json"
    assert json.loads(written.read_text()) == {"a": 1}
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert [p.name for p in written.parent.iterdir()] == ["w1.json"]  # no temp file left


def test_known_hosts_names_hostname_and_address(inventory: Path, tmp_path: Path) -> None:
    key1, key2 = public_key(tmp_path, "k1"), public_key(tmp_path, "k2")
    record_host_keys(inventory, "w1", "10.20.0.11", "boot1", [key1, key2])
    record_host_keys(inventory, "w2", "10.20.0.99", "boot2", [key2])
    found = load_inventory(inventory, ProfileStore())
    assert known_hosts_lines(found) == [
        f"w1.lab,10.20.0.11 {key1}",
        f"w1.lab,10.20.0.11 {key2}",
        f"w2,10.20.0.99 {key2}",
    ]
    record = read_host_keys(inventory, "w1")
    assert record is not None and record.boot == "boot1" and record.reported_at.endswith("Z")


@pytest.mark.parametrize(
    "record",
    [
        {"machine": "w1", "address": "10.0.0.1\nevil", "keys": ["KEY"]},
        {"machine": "w1", "address": "10.0.0.1", "keys": ["ssh-ed25519 AAAAnotakey"]},
        {"machine": "w1", "address": "10.0.0.1", "keys": ["KEY\n10.0.0.9 ssh-ed25519 AAAA"]},
        {"machine": "w1", "address": "10.0.0.1", "keys": []},
        {"machine": "w2", "address": "10.0.0.1", "keys": ["KEY"]},  # another machine's
        ["not", "a", "record"],
    ],
)
def test_a_tampered_record_gives_no_line(inventory: Path, tmp_path: Path, record: object) -> None:
    key = public_key(tmp_path, "k")
    text = json.dumps(record).replace("KEY", key)
    write_json_atomic(hostkeys_path(inventory, "w1"), json.loads(text))
    assert read_host_keys(inventory, "w1") is None
    assert known_hosts_lines(load_inventory(inventory, ProfileStore())) == []


def test_a_machine_name_never_becomes_a_path_outside(inventory: Path) -> None:
    with pytest.raises(ValueError):
        hostkeys_path(inventory, "../../etc/passwd")
