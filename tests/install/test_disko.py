"""install.disko: the layout as a disko configuration, and the nixos-anywhere command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.install.disko import disko_config, nixos_anywhere_command, render_nix
from plasmaboot.install.layout import load_layout

LAYOUTS = Path("layouts")
GIB = 1 << 30


def test_nix_values_are_rendered_and_escaped() -> None:
    text = render_nix({"a": 'x"${y}\\', "b-c": [1, True], "d e": {}})
    assert text == '{\n  a = "x\\"\\${y}\\\\";\n  b-c = [\n    1\n    true\n  ];\n  "d e" = { };\n}'


def test_the_default_layout_as_disko() -> None:
    text = disko_config(load_layout(LAYOUTS / "default.toml"))
    assert 'device = "/dev/vda";' in text
    assert 'type = "EF02";' in text and 'type = "EF00";' in text
    assert 'size = "100%";' in text and 'format = "ext4";' in text
    assert 'mountpoint = "/boot/efi";' in text


def test_luks_and_lvm_as_disko() -> None:
    text = disko_config(load_layout(LAYOUTS / "lvm-luks.toml"), devices=["/dev/nvme0n1"])
    assert 'passwordFile = "/tmp/plasmaboot-keys/cryptlvm.key";' in text
    assert 'type = "lvm_pv";' in text and 'vg = "vg0";' in text
    assert 'size = "100%FREE";' in text and 'type = "swap";' in text


def test_a_glob_needs_the_device_found_on_the_node() -> None:
    with pytest.raises(UserError, match=r"disks\[0\]\.match: .* is a glob"):
        disko_config(load_layout(LAYOUTS / "lvm-luks.toml"))


def test_the_nixos_anywhere_command_has_paths_only(tmp_path: Path) -> None:
    layout = load_layout(LAYOUTS / "lvm-luks.toml")
    command = nixos_anywhere_command(
        layout, ".", "cp1", "root@10.0.0.5", Path("id"), tmp_path / "secrets" / "cp1"
    )
    assert command[:7] == [
        "nixos-anywhere",
        "--flake",
        ".#cp1",
        "--target-host",
        "root@10.0.0.5",
        "-i",
        "id",
    ]
    assert command[7:9] == ["--extra-files", str(tmp_path / "secrets/cp1")]
    assert command[9:] == [
        "--disk-encryption-keys",
        "/tmp/plasmaboot-keys/cryptlvm.key",
        str(tmp_path / "secrets/cp1/etc/plasmaboot/luks/root.key"),
    ]
    with pytest.raises(UserError, match="no --secrets"):
        nixos_anywhere_command(layout, ".", "cp1", "root@x", Path("id"), None)


@pytest.mark.nix
@pytest.mark.parametrize("name", ["default", "control-plane", "lvm-luks"])
def test_nix_parses_and_evaluates_the_configuration(tmp_path: Path, name: str) -> None:
    if shutil.which("nix-instantiate") is None:
        pytest.fail("nix-instantiate is missing (apt-get install nix-bin)")
    path = tmp_path / "disko.nix"
    path.write_text(disko_config(load_layout(LAYOUTS / f"{name}.toml"), devices=["/dev/vda"]))
    subprocess.run(["nix-instantiate", "--parse", path], check=True, capture_output=True)
    out = subprocess.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "-E",
            f"(import {path}).disko.devices.disk.disk0.device",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == '"/dev/vda"'
