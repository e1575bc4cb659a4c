"""`plasmaboot install`: refusals before any connection, and --nix output."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from plasmaboot.cli import main

INVENTORY = """\
[machines.cp1]
mac = "52:54:00:12:34:01"
profile = "control-plane"
ipv4 = "10.0.0.5/24"
services = ["iam"]
"""


def invoke(tmp_path: Path, *args: str) -> tuple[int, str]:
    inventory = tmp_path / "machines.toml"
    inventory.write_text(INVENTORY)
    (tmp_path / "id").write_text("not used")
    result = CliRunner().invoke(
        main, ["install", *args, "--inventory", str(inventory), "--identity", str(tmp_path / "id")]
    )
    return result.exit_code, result.output


def test_no_trusted_host_key_is_refused(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "cp1")
    assert code == 2
    assert "no host key to trust for the node" in output and "--insecure-first-use" in output


def test_an_unknown_machine_is_refused(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "cp9")
    assert code == 2 and "no machine 'cp9'" in output


def test_nix_prints_disko_and_the_nixos_anywhere_command(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "cp1", "--nix", "github:plasmacloud/site")
    assert code == 0, output
    assert "disko = {" in output and 'device = "/dev/vda";' in output
    assert (
        "# nixos-anywhere --flake github:plasmacloud/site#cp1 --target-host root@10.0.0.5" in output
    )


def test_a_failure_writes_the_report_in_the_state(tmp_path: Path) -> None:
    code, _ = invoke(tmp_path, "cp1", "--artifacts", str(tmp_path / "none"), "--insecure-first-use")
    assert code == 2
    report = tmp_path / "machines.state" / "reports" / "install-cp1.json"
    assert '"ok": false' in report.read_text() and "no kernel" in report.read_text()
    assert (tmp_path / "machines.state").stat().st_mode & 0o777 == 0o700
