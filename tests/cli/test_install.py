"""`plasmaboot install`: refusals before any connection, and --nix output."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot.cli import main
from plasmaboot.cli.install import ip_address_of, known_hosts_file
from plasmaboot.inventory.load import load_inventory
from plasmaboot.inventory.state import record_host_keys
from plasmaboot.profiles.store import ProfileStore

from conftest import make_keypair

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


def test_the_reported_keys_are_trusted_under_the_name_ssh_connects_to(tmp_path: Path) -> None:
    """--host may name the node otherwise than the address its report came from: ssh checks
    the key under the name it connects to, so known_hosts lists both."""
    inventory = tmp_path / "machines.toml"
    inventory.write_text(INVENTORY)
    key = " ".join(make_keypair(tmp_path).with_suffix(".pub").read_text().split()[:2])
    record_host_keys(inventory, "cp1", "10.0.0.5", "boot-1", [key])
    entry = load_inventory(inventory, ProfileStore()).machines["cp1"]
    for address, hosts in [("cp1.lab", "cp1.lab,10.0.0.5"), ("10.0.0.5", "10.0.0.5")]:
        pinned = known_hosts_file(inventory, entry, None, False, tmp_path, address)
        assert pinned.read_text() == f"{hosts} {key}\n"


def test_installed_keys_are_recorded_under_an_ip_address(tmp_path: Path) -> None:
    """State keeps IP addresses only: `--host cp1.lab` records the inventory's address (or
    the reported one), so the installed machine stays in `machines known-hosts`."""
    inventory = tmp_path / "machines.toml"
    inventory.write_text(INVENTORY)
    entry = load_inventory(inventory, ProfileStore()).machines["cp1"]
    assert ip_address_of("10.0.0.9", inventory, entry) == "10.0.0.9"
    assert ip_address_of("cp1.lab", inventory, entry) == "10.0.0.5"  # the inventory's
    dynamic = entry.model_copy(update={"ipv4": None})
    assert ip_address_of("cp1.lab", inventory, dynamic) == "cp1.lab"  # nothing better known
    key = " ".join(make_keypair(tmp_path).with_suffix(".pub").read_text().split()[:2])
    record_host_keys(inventory, "cp1", "10.0.0.7", "boot-1", [key])
    assert ip_address_of("cp1.lab", inventory, dynamic) == "10.0.0.7"  # the reported one


def test_a_luks_key_missing_from_the_secrets_is_refused_before_any_connection(
    tmp_path: Path,
) -> None:
    layout = Path("layouts/lvm-luks.toml")
    secrets = tmp_path / "secrets"
    argv = ["cp1", "--layout", str(layout), "--secrets", str(secrets), "--insecure-first-use"]
    code, output = invoke(tmp_path, *argv)
    assert code == 2 and "Traceback" not in output
    assert (
        "layouts/lvm-luks.toml: disks[0].partitions[3].luks.key: "
        f"{secrets}/cp1/etc/plasmaboot/luks/root.key is not in the machine's secrets"
    ) in " ".join(output.split())
    key = secrets / "cp1/etc/plasmaboot/luks/root.key"
    key.parent.mkdir(parents=True)
    key.write_text("hunter2\n")  # a passphrase, not a key file
    code, output = invoke(tmp_path, *argv)
    assert code == 2 and "holds 8 bytes; a LUKS key file holds 32 to 8192 random bytes" in " ".join(
        output.split()
    )
    assert "hunter2" not in output


def test_the_sets_installed_initrd_comes_with_its_kernels_version(tmp_path: Path) -> None:
    from plasmaboot.artifacts.layout import INSTALLED_INITRD, MANIFEST
    from plasmaboot.artifacts.manifest import Manifest, file_records, write_manifest
    from plasmaboot.cli.install import set_installed_initrd
    from plasmaboot.profiles.store import ProfileStore

    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    assert set_installed_initrd(kernel) == (None, "")  # a Nix set, an older set
    (tmp_path / INSTALLED_INITRD).write_bytes(b"initramfs")
    assert set_installed_initrd(kernel) == (None, "")  # no manifest: no version to match
    (tmp_path / MANIFEST).write_text("{not json")
    assert set_installed_initrd(kernel) == (None, "")
    manifest = Manifest(
        profile="base", label="base", content_hash="x", cache_key="k", backend="debian",
        distro="debian bookworm", kernel_version="6.12.95+deb12-amd64", kernel_params=[],
        files={}, packages={}, services={}, steps={},
        built_at="2026-01-01T00:00:00+00:00", plasmaboot_version="0.1.0",
        resolved_profile=ProfileStore().resolve("base"),
    )  # fmt: skip
    write_manifest(tmp_path, manifest)
    assert set_installed_initrd(kernel) == (None, "")  # not recorded: not the build's
    records = file_records(tmp_path, (INSTALLED_INITRD,))
    write_manifest(tmp_path, manifest.model_copy(update={"files": records}))
    assert set_installed_initrd(kernel) == (tmp_path / INSTALLED_INITRD, "6.12.95+deb12-amd64")


def test_a_damaged_installed_initrd_is_refused(tmp_path: Path) -> None:
    """Pushed as it is, a truncated or altered one would install a system that cannot boot."""
    from plasmaboot.artifacts.layout import INSTALLED_INITRD
    from plasmaboot.artifacts.manifest import Manifest, file_records, write_manifest
    from plasmaboot.cli.install import set_installed_initrd
    from plasmaboot.errors import UserError

    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    (tmp_path / INSTALLED_INITRD).write_bytes(b"initramfs")
    manifest = Manifest(
        profile="base", label="base", content_hash="x", cache_key="k", backend="debian",
        distro="debian bookworm", kernel_version="6.12.95+deb12-amd64", kernel_params=[],
        files=file_records(tmp_path, (INSTALLED_INITRD,)), packages={}, services={}, steps={},
        built_at="2026-01-01T00:00:00+00:00", plasmaboot_version="0.1.0",
        resolved_profile=ProfileStore().resolve("base"),
    )  # fmt: skip
    write_manifest(tmp_path, manifest)
    (tmp_path / INSTALLED_INITRD).write_bytes(b"initramfX")  # same size, other bytes
    with pytest.raises(UserError, match="installed-initrd does not match its record in manifest"):
        set_installed_initrd(kernel)
    (tmp_path / INSTALLED_INITRD).write_bytes(b"initram")
    with pytest.raises(UserError, match="damaged set"):
        set_installed_initrd(kernel)
