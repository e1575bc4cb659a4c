"""located_errors: any TOML file checked against any pydantic model gets one located line
(here a made-up inventory model, to show nothing in it is about profiles)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from plasmaboot.errors import UserError
from plasmaboot.profiles.located_errors import format_loc, read_toml, validate_data

MAC_PATTERN = r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$"


class Disk(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    device: str
    size_gib: int = Field(ge=1)


class Machine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    mac: str = Field(pattern=MAC_PATTERN)
    disks: list[Disk] = []


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    machines: dict[str, Machine]


def problem(data: object) -> tuple[str, str | None]:
    with pytest.raises(UserError) as caught:
        validate_data(
            Inventory, data, "machines.toml", {MAC_PATTERN: "a MAC like 52:54:00:12:34:56"}
        )
    return caught.value.message, caught.value.hint


def test_a_pattern_is_explained_in_words() -> None:
    assert problem({"machines": {"n1": {"mac": "nope"}}}) == (
        'machines.toml: machines.n1.mac: expected a MAC like 52:54:00:12:34:56, got "nope"',
        None,
    )


def test_an_unknown_key_gets_a_suggestion_and_the_known_keys() -> None:
    data = {"machines": {"n1": {"mac": "52:54:00:12:34:56", "disks": [{"devise": "sda"}]}}}
    assert problem(data) == (
        "machines.toml: machines.n1.disks[0].devise: unknown key (did you mean 'device'?)",
        "known keys here: device, size_gib",
    )


def test_a_bound_and_a_type_name_the_value() -> None:
    disk = {"device": "sda", "size_gib": 0}
    data = {"machines": {"n1": {"mac": "52:54:00:12:34:56", "disks": [disk]}}}
    assert problem(data)[0] == (
        "machines.toml: machines.n1.disks[0].size_gib: expected a number at least 1, got 0"
    )
    data["machines"]["n1"]["disks"] = "sda"
    assert problem(data)[0] == 'machines.toml: machines.n1.disks: expected a list, got "sda"'


def test_a_key_that_is_not_a_bare_word_is_quoted() -> None:
    assert format_loc(["sysctl", "net.ipv4.ip_forward"]) == 'sysctl."net.ipv4.ip_forward"'
    assert format_loc(["kernel", "params", 1]) == "kernel.params[1]"


def test_bad_utf8_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "machines.toml").write_bytes(b'[machines.n1]\nmac = "\xff"\n')
    with pytest.raises(UserError) as caught:
        read_toml(Path("machines.toml"))
    assert caught.value.message == "machines.toml: line 2: expected UTF-8 text, got the byte 0xff"
