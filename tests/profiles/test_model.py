"""The profile model: the built-in profiles as resolved, the JSON Schema of a file, the
defaults and the content hash."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from plasmaboot.paths import builtin_profiles_dir
from plasmaboot.profiles.model import profile_json_schema
from plasmaboot.profiles.store import ProfileStore
from profile_files import KEY, invoke, resolve, write_tree

CATALOG_PORTS = {
    "chainfire": {"port": 2379, "raftPort": 2380, "gossipPort": 2381},
    "flaredb": {"port": 2479, "raftPort": 2480},
    "iam": {"port": 8080},
    "plasmavmc": {"port": 8081},
    "novanet": {"port": 8082},
    "flashdns": {"port": 53},
    "fiberlb": {"port": 8083},
    "lightningstor": {"port": 8084},
    "k8shost": {"port": 8085},
}


def show_json(*args: str) -> dict[str, Any]:
    result = invoke("profiles", "show", *args, "--json")
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_all_in_one_has_the_nine_services_disabled_and_limited() -> None:
    services = show_json("all-in-one")["services"]
    assert list(services) == list(CATALOG_PORTS)
    for name, ports in CATALOG_PORTS.items():
        service = services[name]
        assert service["ports"] == ports
        assert service["enable"] is False
        assert (service["memory_max"], service["cpu_quota"]) == ("512M", "50%")
        assert service["user"] == name
        assert service["binary"] == f"{name}-server"


def test_worker_has_vm_and_sdn_services_sysctls_and_modules() -> None:
    body = show_json("worker")
    assert list(body["services"]) == ["plasmavmc", "novanet"]
    assert body["sysctl"] == {
        "fs.file-max": 1000000,
        "net.ipv4.ip_forward": 1,
        "net.core.netdev_max_backlog": 5000,
    }
    assert {"kvm", "openvswitch", "vhost_net", "tun"} <= set(body["kernel"]["modules"])
    assert "kvm_intel" not in body["kernel"]["modules"]  # udev loads it by CPU feature
    assert {"openvswitch", "qemu", "libvirt"} <= set(body["packages"])


def test_base_has_no_services_and_a_serial_console() -> None:
    body = show_json("base")
    assert body["services"] == {}
    assert body["extends"] == []
    assert "console=ttyS0,115200" in body["kernel"]["params"]
    assert "openssh-server" in body["packages"]


def test_builtin_files_match_the_json_schema() -> None:
    schema = profile_json_schema()
    paths = sorted(builtin_profiles_dir().glob("*.toml"))
    paths += sorted((builtin_profiles_dir() / "variants").glob("*.toml"))
    assert len(paths) == 7
    for path in paths:
        jsonschema.validate(tomllib.loads(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"packages": "vim"}, schema)


def test_content_hash_follows_the_referenced_key_file(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "p-keyed.toml": 'extends = "worker"\n[ssh]\nauthorized_keys = ["ops.pub"]\n',
            "ops.pub": KEY,
        },
    )
    first = ProfileStore([tmp_path]).resolve("p-keyed").content_hash()
    again = ProfileStore([tmp_path]).resolve("p-keyed").content_hash()
    assert first == again
    assert len(first) == 64

    (tmp_path / "ops.pub").write_text(KEY.replace("test", "rotated"))
    rotated = ProfileStore([tmp_path]).resolve("p-keyed").content_hash()
    assert rotated != first

    (tmp_path / "ops.pub").write_text(KEY)
    assert ProfileStore([tmp_path]).resolve("p-keyed").content_hash() == first


def test_content_hash_ignores_where_the_files_were_found(tmp_path: Path) -> None:
    """`sources` (paths) are not part of the image; settings are."""
    builtin = ProfileStore().resolve("worker").content_hash()
    write_tree(tmp_path, {"unrelated.toml": 'description = "x"\n'})
    assert ProfileStore([tmp_path]).resolve("worker").content_hash() == builtin
    base = (builtin_profiles_dir() / "base.toml").read_text()
    assert "dhcp = true" in base
    changed = resolve(
        tmp_path, {"base.toml": base.replace("dhcp = true", "dhcp = false")}, "worker"
    )
    assert changed.network.dhcp is False
    assert changed.content_hash() != builtin


def test_content_hash_is_the_same_for_a_copy_in_another_directory(tmp_path: Path) -> None:
    """File references count by content: the same profile in another checkout (another
    absolute path) hits the same cache entry."""
    files = {
        "p-keyed.toml": 'extends = "worker"\n[ssh]\nauthorized_keys = ["keys/ops.pub"]\n'
        '[services.iam]\npackage = "debs/iam.deb"\n',
        "keys/ops.pub": KEY,
        "debs/iam.deb": "a package",
    }
    one = resolve(tmp_path / "one", files, "p-keyed")
    two = resolve(tmp_path / "checkouts" / "two", files, "p-keyed")
    assert one.ssh.authorized_keys != two.ssh.authorized_keys  # absolute paths differ
    first = one.content_hash()
    assert two.content_hash() == first

    (tmp_path / "checkouts" / "two" / "keys" / "ops.pub").write_text(KEY.replace("test", "new"))
    rotated = ProfileStore([tmp_path / "checkouts" / "two"]).resolve("p-keyed")
    assert rotated.content_hash() != first

    (tmp_path / "one" / "debs" / "iam.deb").write_text("another package")
    repackaged = ProfileStore([tmp_path / "one"]).resolve("p-keyed")
    assert repackaged.content_hash() not in {first, rotated.content_hash()}


def test_a_profile_without_parents_gets_every_default(tmp_path: Path) -> None:
    profile = resolve(tmp_path, {"p-bare.toml": ""}, "p-bare")
    assert profile.model_dump(exclude={"name", "sources"}) == {
        "variant": None,
        "description": "",
        "extends": [],
        "packages": [],
        "ssh": {"authorized_keys": []},
        "kernel": {
            "params": [],
            "modules": [],
            "include_modules": [],
            "exclude_modules": [],
            "firmware": [],
            "package": "linux-image-amd64",
            "suite": "release",
        },
        "network": {"dhcp": True, "predictable_names": True, "mtu": None},
        "console": {"serial": "ttyS0", "baud": 115200},
        "system": {"locales": ["en_US.UTF-8"], "documentation": False},
        "sysctl": {},
        "services": {},
    }


def test_show_json_has_the_sections_of_the_file() -> None:
    body = show_json("worker")
    assert list(body) == [
        "name",
        "variant",
        "description",
        "extends",
        "packages",
        "ssh",
        "kernel",
        "network",
        "console",
        "system",
        "sysctl",
        "services",
        "sources",
        "content_hash",
    ]
    assert body["network"] == {"dhcp": True, "predictable_names": True, "mtu": None}
    assert body["content_hash"] == ProfileStore().resolve("worker").content_hash()
