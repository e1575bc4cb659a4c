"""Inheritance: lists append, tables merge, scalars override, "!item" and `unset` remove,
several `extends` in order, variants last, file references per directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.paths import builtin_profiles_dir
from plasmaboot.profiles.store import ProfileStore
from profile_files import KEY, resolve, write_tree


def test_lists_append_without_duplicates(tmp_path: Path) -> None:
    profile = resolve(
        tmp_path,
        {
            "p-parent.toml": 'packages = ["curl", "vim"]\n[kernel]\nparams = ["quiet"]\n',
            "p-child.toml": 'extends = "p-parent"\npackages = ["vim", "jq", "jq"]\n'
            '[kernel]\nparams = ["quiet", "nomodeset"]\n',
        },
        "p-child",
    )
    assert profile.packages == ["curl", "vim", "jq"]
    assert profile.kernel.params == ["quiet", "nomodeset"]


def test_tables_merge_and_scalars_override(tmp_path: Path) -> None:
    profile = resolve(
        tmp_path,
        {
            "p-parent.toml": 'description = "parent"\n'
            "[network]\ndhcp = true\npredictable_names = false\n"
            '[console]\nserial = "ttyS1"\nbaud = 9600\n'
            '[sysctl]\n"vm.swappiness" = 10\n"fs.file-max" = 100\n'
            '[services.iam]\nenable = true\nport = 9000\nsettings = { region = "a", debug = 1 }\n',
            "p-child.toml": 'extends = "p-parent"\ndescription = "child"\n'
            "[network]\ndhcp = false\n[console]\nbaud = 115200\n"
            '[sysctl]\n"fs.file-max" = 200\n'
            '[services.iam]\nsettings = { region = "b" }\n',
        },
        "p-child",
    )
    assert profile.description == "child"
    assert (profile.network.dhcp, profile.network.predictable_names) == (False, False)
    assert (profile.console.serial, profile.console.baud) == ("ttyS1", 115200)
    assert profile.sysctl == {"vm.swappiness": 10, "fs.file-max": 200}
    iam = profile.services["iam"]
    assert (iam.enable, iam.ports) == (True, {"port": 9000})
    assert iam.settings == {"region": "b", "debug": 1}


def test_bang_item_removes_an_inherited_list_item(tmp_path: Path) -> None:
    profile = resolve(
        tmp_path,
        {"p-small.toml": 'extends = "base"\npackages = ["!vim", "!tcpdump", "nano"]\n'},
        "p-small",
    )
    base = ProfileStore().resolve("base")
    assert "vim" in base.packages and "tcpdump" in base.packages
    assert profile.packages == [p for p in base.packages if p not in {"vim", "tcpdump"}] + ["nano"]
    assert not any(p.startswith("!") for p in profile.packages)


def test_unset_drops_inherited_services_and_single_keys(tmp_path: Path) -> None:
    files = {
        "p-noservices.toml": 'extends = "worker"\nunset = ["services"]\n',
        "p-nofilemax.toml": 'extends = "worker"\nunset = ["sysctl.fs.file-max"]\n',
        "p-portreset.toml": 'extends = "p-port"\nunset = ["services.iam.port", "console.baud"]\n',
        "p-port.toml": "[services.iam]\nport = 9000\n[console]\nbaud = 9600\n",
    }
    write_tree(tmp_path, files)
    store = ProfileStore([tmp_path])
    worker = store.resolve("worker")

    no_services = store.resolve("p-noservices")
    assert worker.services and no_services.services == {}
    assert no_services.sysctl == worker.sysctl

    no_file_max = store.resolve("p-nofilemax")
    assert "fs.file-max" in worker.sysctl
    assert no_file_max.sysctl == {k: v for k, v in worker.sysctl.items() if k != "fs.file-max"}
    assert no_file_max.services == worker.services

    reset = store.resolve("p-portreset")
    assert store.resolve("p-port").services["iam"].ports == {"port": 9000}
    assert reset.services["iam"].ports == {"port": 8080}
    assert reset.console.baud == 115200


def test_unset_applies_before_the_declaring_file_adds_its_own(tmp_path: Path) -> None:
    profile = resolve(
        tmp_path,
        {"p-own.toml": 'extends = "worker"\nunset = ["packages"]\npackages = ["busybox"]\n'},
        "p-own",
    )
    assert profile.packages == ["busybox"]


def test_multiple_extends_merge_in_order(tmp_path: Path) -> None:
    store = ProfileStore()
    all_in_one = store.resolve("all-in-one")
    assert all_in_one.extends == ["base", "control-plane", "worker"]
    assert [Path(s).name for s in all_in_one.sources] == [
        "base.toml",
        "control-plane.toml",
        "worker.toml",
        "all-in-one.toml",
    ]
    worker = store.resolve("worker")
    assert all_in_one.packages == worker.packages  # base once, then worker's additions
    assert all_in_one.sysctl == worker.sysctl
    assert all_in_one.kernel.modules == worker.kernel.modules

    later_wins = resolve(
        tmp_path,
        {
            "p-one.toml": 'description = "one"\n[console]\nbaud = 9600\n',
            "p-two.toml": 'description = "two"\n[console]\nbaud = 57600\n',
            "p-both.toml": 'extends = ["p-one", "p-two"]\n',
            "p-swapped.toml": 'extends = ["p-two", "p-one"]\n',
        },
        "p-both",
    )
    assert (later_wins.description, later_wins.console.baud) == ("two", 57600)
    swapped = ProfileStore([tmp_path]).resolve("p-swapped")
    assert (swapped.description, swapped.console.baud) == ("one", 9600)


def test_variants_apply_last() -> None:
    store = ProfileStore()
    control = store.resolve("control-plane")

    minimal = store.resolve("control-plane", "minimal")
    assert control.services and minimal.services == {}
    assert minimal.label == "control-plane-minimal"
    assert Path(minimal.sources[-1]).name == "minimal.toml"
    assert minimal.packages == control.packages

    debug = store.resolve("control-plane", "debug")
    debug_file = tomllib.loads((builtin_profiles_dir() / "variants" / "debug.toml").read_text())
    assert debug.packages == control.packages + debug_file["packages"]
    assert debug.services == control.services
    assert debug.label == "control-plane-debug"
    assert debug.content_hash() != control.content_hash()


def test_variant_overrides_the_profile_it_is_applied_to(tmp_path: Path) -> None:
    files = {
        "p-quiet.toml": "[services.iam]\nenable = true\n[console]\nbaud = 9600\n",
        "variants/fast.toml": "[console]\nbaud = 115200\n[services.iam]\nenable = false\n",
    }
    profile = resolve(tmp_path, files, "p-quiet", "fast")
    assert profile.console.baud == 115200
    assert profile.services["iam"].enable is False
    assert profile.variant == "fast"


def test_file_refs_resolve_relative_to_the_declaring_profile_dir(tmp_path: Path) -> None:
    shared, site = tmp_path / "shared", tmp_path / "site"
    write_tree(
        shared,
        {
            "p-rack.toml": '[ssh]\nauthorized_keys = ["keys/ops.pub"]\n',
            "keys/ops.pub": KEY,
        },
    )
    write_tree(
        site,
        {
            "p-node.toml": 'extends = "p-rack"\n[ssh]\nauthorized_keys = ["keys/site.pub"]\n'
            '[services.iam]\npackage = "debs/iam.deb"\n',
            "keys/site.pub": KEY,
            "debs/iam.deb": "not really a deb",
        },
    )
    profile = ProfileStore([site, shared]).resolve("p-node")
    assert profile.ssh.authorized_keys == [
        str((shared / "keys/ops.pub").resolve()),
        str((site / "keys/site.pub").resolve()),
    ]
    assert profile.services["iam"].package_file == str((site / "debs/iam.deb").resolve())

    # keys/ops.pub exists only beside p-rack: naming it from site/ is an error about site/
    (site / "p-other.toml").write_text(
        'extends = "p-rack"\n[ssh]\nauthorized_keys = ["keys/ops.pub"]\n'
    )
    with pytest.raises(
        UserError, match=r"p-other\.toml: ssh\.authorized_keys\[0\]: expected an existing file"
    ):
        ProfileStore([site, shared]).resolve("p-other")


def test_user_dirs_shadow_builtin_profiles(tmp_path: Path) -> None:
    profile = resolve(
        tmp_path, {"base.toml": 'description = "site base"\npackages = ["vim"]\n'}, "worker"
    )
    assert profile.packages == ["vim", "openvswitch", "qemu", "libvirt"]
    assert Path(profile.sources[0]) == tmp_path / "base.toml"


def test_mtu_is_inherited_overridden_and_unset(tmp_path: Path) -> None:
    files = {
        "p-jumbo.toml": 'extends = "worker"\n[network]\nmtu = 9000\n',
        "p-rack.toml": 'extends = "p-jumbo"\n[network]\ndhcp = true\n',
        "p-small.toml": 'extends = "p-rack"\n[network]\nmtu = 1500\n',
        "p-plain.toml": 'extends = "p-rack"\nunset = ["network.mtu"]\n',
    }
    write_tree(tmp_path, files)
    store = ProfileStore([tmp_path])
    assert store.resolve("worker").network.mtu is None  # unset: the NIC's default
    assert store.resolve("p-jumbo").network.mtu == 9000
    assert store.resolve("p-rack").network.mtu == 9000
    assert store.resolve("p-small").network.mtu == 1500
    assert store.resolve("p-plain").network.mtu is None
    assert store.resolve("p-jumbo").content_hash() != store.resolve("worker").content_hash()
