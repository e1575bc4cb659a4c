"""Profiles: the corpus of malformed files and their exact messages, the merge rules, the
built-in profiles, custom profile directories and the profile commands of the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner, Result

from plasmaboot import __version__
from plasmaboot.cli import main
from plasmaboot.errors import UserError
from plasmaboot.paths import builtin_profiles_dir
from plasmaboot.profiles import Profile, ProfileStore, profile_json_schema

PLASMABOOT = Path(sys.executable).parent / "plasmaboot"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ0ZXN0a2V5Zm9ydGVzdHNvbmx5AAAAAAAAAAAAAAAAAA test\n"


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory with an empty `profiles/` beside it, as the current directory, so
    messages name files as an operator sees them: `profiles/edge.toml`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLASMABOOT_PROFILES_DIR", raising=False)
    (tmp_path / "profiles").mkdir()
    return tmp_path


def resolve(root: Path, files: dict[str, str], name: str, variant: str | None = None) -> Profile:
    write_tree(root, files)
    return ProfileStore([root]).resolve(name, variant)


# ---------------------------------------------------------------------------------------
# The corpus: one malformed profile per case, the exact first line of the error.


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str]
    message: str
    hint: str | None = None
    args: tuple[str, ...] = ("edge",)
    extra: dict[str, str] = field(default_factory=dict)


CORPUS = [
    Case(
        "port-in-settings",
        {"edge.toml": "[services.iam]\nsettings = { port = 2379 }\n"},
        "profiles/edge.toml: services.iam.settings.port: 'port' is a port option; "
        "set it as services.iam.port",
        hint="ports are checked for clashes only where the catalog declares them",
    ),
    Case(
        "toml-syntax",
        {"edge.toml": 'description = "edge"\npackages = = ["vim"]\n'},
        "profiles/edge.toml: line 2, column 12: invalid TOML: Invalid value",
        hint="fix the syntax there (TOML reference: https://toml.io)",
    ),
    Case(
        "toml-unclosed-array",
        {"edge.toml": 'description = "edge"\n\npackages = ["vim"\n'},
        "profiles/edge.toml: line 3: invalid TOML: Unclosed array at the end of the file",
    ),
    Case(
        "unknown-top-level-key",
        {"edge.toml": 'pakages = ["vim"]\n'},
        "profiles/edge.toml: pakages: unknown key (did you mean 'packages'?)",
        hint="known keys here: name, description, extends, unset, packages, ssh, kernel, "
        "network, console, system, sysctl, service_defaults, services",
    ),
    Case(
        "unknown-nested-key",
        {"edge.toml": '[kernel]\nparms = ["quiet"]\n'},
        "profiles/edge.toml: kernel.parms: unknown key (did you mean 'params'?)",
        hint="known keys here: params, modules, include_modules, exclude_modules, firmware",
    ),
    Case(
        "string-for-list",
        {"edge.toml": 'packages = "vim"\n'},
        'profiles/edge.toml: packages: expected a list, got "vim"',
    ),
    Case(
        "string-for-bool",
        {"edge.toml": '[network]\ndhcp = "yes"\n'},
        'profiles/edge.toml: network.dhcp: expected true or false, got "yes"',
    ),
    Case(
        "int-for-string",
        {"edge.toml": "description = 5\n"},
        "profiles/edge.toml: description: expected a string, got 5",
    ),
    Case(
        "int-in-string-list",
        {"edge.toml": '[kernel]\nparams = ["quiet", 3]\n'},
        "profiles/edge.toml: kernel.params[1]: expected a string, got 3",
    ),
    Case(
        "extends-wrong-type",
        {"edge.toml": "extends = 5\n"},
        "profiles/edge.toml: extends: expected a string or a list, got 5",
    ),
    Case(
        "extends-bad-name-in-list",
        {"edge.toml": 'extends = ["base", "Worker"]\n'},
        "profiles/edge.toml: extends[1]: expected a profile name of lowercase letters, "
        "digits and '-', got \"Worker\"",
    ),
    Case(
        "extends-cycle",
        {"a.toml": 'extends = "b"\n', "b.toml": 'extends = "a"\n'},
        'profiles/b.toml: extends: expected a profile that does not extend "b", got "a" '
        "(cycle a -> b -> a)",
        hint="remove one of the `extends` in the cycle",
        args=("a",),
    ),
    Case(
        "extends-self",
        {"edge.toml": 'extends = "edge"\n'},
        'profiles/edge.toml: extends: expected a profile that does not extend "edge", '
        'got "edge" (cycle edge -> edge)',
    ),
    Case(
        "missing-parent",
        {"edge.toml": 'extends = "wroker"\n'},
        "profiles/edge.toml: extends: unknown profile \"wroker\" (did you mean 'worker'?)",
    ),
    Case(
        "error-in-parent-names-parent",
        {"edge.toml": 'extends = "rack"\n', "rack.toml": '[console]\nbaud = "fast"\n'},
        'profiles/rack.toml: console.baud: expected an integer, got "fast"',
    ),
    Case(
        "unknown-service",
        {"edge.toml": "[services.chainfyre]\nenable = true\n"},
        "profiles/edge.toml: services.chainfyre: unknown service (did you mean 'chainfire'?)",
        hint="the catalog has: chainfire, flaredb, iam, plasmavmc, novanet, flashdns, "
        "fiberlb, lightningstor, k8shost",
    ),
    Case(
        "duplicate-port-enabled",
        {
            "edge.toml": "[services.iam]\nenable = true\n"
            "[services.plasmavmc]\nenable = true\nport = 8080\n"
        },
        "profiles/edge.toml: services.plasmavmc.port: expected a port no other enabled "
        "service uses, got 8080 (services.iam.port has it)",
        hint="change one of the ports, or disable one of the services",
    ),
    Case(
        "duplicate-port-within-service",
        {"edge.toml": "[services.chainfire]\nenable = true\nraftPort = 2379\n"},
        "profiles/edge.toml: services.chainfire.raftPort: expected a port no other enabled "
        "service uses, got 2379 (services.chainfire.port has it)",
    ),
    Case(
        "duplicate-port-set-by-child",
        {
            "edge.toml": 'extends = "control-plane"\n[services.iam]\nenable = true\n'
            "[services.fiberlb]\nenable = true\nport = 8080\n"
        },
        "profiles/edge.toml: services.fiberlb.port: expected a port no other enabled "
        "service uses, got 8080 (services.iam.port has it)",
    ),
    Case(
        "port-zero",
        {"edge.toml": "[services.iam]\nport = 0\n"},
        "profiles/edge.toml: services.iam.port: expected an integer 1-65535, got 0",
    ),
    Case(
        "port-too-large",
        {"edge.toml": "[services.flaredb]\nraftPort = 70000\n"},
        "profiles/edge.toml: services.flaredb.raftPort: expected an integer 1-65535, got 70000",
    ),
    Case(
        "port-not-integer",
        {"edge.toml": '[services.chainfire]\nport = "abc"\n'},
        'profiles/edge.toml: services.chainfire.port: expected an integer 1-65535, got "abc"',
    ),
    Case(
        "port-float",
        {"edge.toml": "[services.iam]\nport = 8080.5\n"},
        "profiles/edge.toml: services.iam.port: expected an integer 1-65535, got 8080.5",
    ),
    Case(
        "port-bool",
        {"edge.toml": "[services.iam]\nport = true\n"},
        "profiles/edge.toml: services.iam.port: expected an integer 1-65535, got true",
    ),
    Case(
        "unknown-port-option",
        {"edge.toml": "[services.chainfire]\nraftport = 2390\n"},
        "profiles/edge.toml: services.chainfire.raftport: unknown key (did you mean 'raftPort'?)",
        hint="known keys of services.chainfire: enable, package, settings, memory_max, "
        "cpu_quota, port, raftPort, gossipPort",
    ),
    Case(
        "service-enable-string",
        {"edge.toml": '[services.iam]\nenable = "true"\n'},
        'profiles/edge.toml: services.iam.enable: expected true or false, got "true"',
    ),
    Case(
        "invalid-sysctl-name",
        {"edge.toml": '[sysctl]\n"Net..ipv4" = 1\n'},
        'profiles/edge.toml: sysctl."Net..ipv4": expected a sysctl name like '
        'net.ipv4.ip_forward, got "Net..ipv4"',
    ),
    Case(
        "sysctl-value-bool",
        {"edge.toml": '[sysctl]\n"net.ipv4.ip_forward" = true\n'},
        'profiles/edge.toml: sysctl."net.ipv4.ip_forward": expected an integer or a string, '
        "got true",
    ),
    Case(
        "empty-name",
        {"edge.toml": 'name = ""\n'},
        "profiles/edge.toml: name: expected a profile name of lowercase letters, digits "
        "and '-', got \"\"",
    ),
    Case(
        "name-not-file-name",
        {"edge.toml": 'name = "core"\n'},
        'profiles/edge.toml: name: expected "edge" (the file name), got "core"',
        hint="rename the file or drop the `name` key",
    ),
    Case(
        "key-escapes-profile-dir",
        {"edge.toml": '[ssh]\nauthorized_keys = ["../x.pub"]\n'},
        "profiles/edge.toml: ssh.authorized_keys[0]: expected a path inside the profile "
        'directory "profiles", got "../x.pub"',
        hint="keep referenced files inside the profile directory",
        extra={"x.pub": KEY},
    ),
    Case(
        "key-absolute-path",
        {"edge.toml": '[ssh]\nauthorized_keys = ["/etc/ssh/x.pub"]\n'},
        "profiles/edge.toml: ssh.authorized_keys[0]: expected a path relative to the profile "
        'directory "profiles", got "/etc/ssh/x.pub"',
    ),
    Case(
        "key-missing",
        {"edge.toml": '[ssh]\nauthorized_keys = ["keys/ops.pub"]\n'},
        "profiles/edge.toml: ssh.authorized_keys[0]: expected an existing file (looked for "
        'profiles/keys/ops.pub), got "keys/ops.pub"',
    ),
    Case(
        "package-escapes-profile-dir",
        {"edge.toml": '[services.iam]\npackage = "../../iam.deb"\n'},
        "profiles/edge.toml: services.iam.package: expected a path inside the profile "
        'directory "profiles", got "../../iam.deb"',
    ),
    Case(
        "bad-memory-max",
        {"edge.toml": '[service_defaults]\nmemory_max = "lots"\n'},
        "profiles/edge.toml: service_defaults.memory_max: expected a size like 512M, 2G or "
        'infinity, got "lots"',
    ),
    Case(
        "bad-cpu-quota",
        {"edge.toml": '[services.iam]\ncpu_quota = "50"\n'},
        'profiles/edge.toml: services.iam.cpu_quota: expected a percentage like 50%, got "50"',
    ),
    Case(
        "baud-too-low",
        {"edge.toml": "[console]\nbaud = 10\n"},
        "profiles/edge.toml: console.baud: expected a number at least 1200, got 10",
    ),
    Case(
        "unknown-variant",
        {"edge.toml": 'extends = "worker"\n'},
        "--variant: unknown variant \"debgu\" (did you mean 'debug'?)",
        args=("edge", "--variant", "debgu"),
    ),
    Case(
        "variant-with-extends",
        {"edge.toml": "", "variants/lab.toml": 'extends = "worker"\n'},
        'profiles/variants/lab.toml: extends: expected no `extends` in a variant, got "worker"',
        hint="a variant applies on top of whatever profile it is used with",
        args=("edge", "--variant", "lab"),
    ),
    Case(
        "unknown-profile",
        {},
        "unknown profile \"contrl-plane\" (did you mean 'control-plane'?)",
        args=("contrl-plane",),
    ),
    Case(
        "unset-unknown-key",
        {"edge.toml": 'unset = ["service", "sysctl"]\n'},
        "profiles/edge.toml: unset[0]: expected a top-level key or <table>.<key> "
        "(did you mean 'services'?), got \"service\"",
    ),
    Case(
        "unset-unknown-table-key",
        {"edge.toml": 'unset = ["sysctl.fs.file-max", "kernel.parms"]\n'},
        "profiles/edge.toml: unset[1]: expected kernel.<key> (did you mean 'params'?), "
        'got "kernel.parms"',
        hint="keys of [kernel]: params, modules, include_modules, exclude_modules, firmware",
    ),
    Case(
        "unset-inside-list",
        {"edge.toml": 'unset = ["packages.vim"]\n'},
        "profiles/edge.toml: unset[0]: expected 'packages' alone (packages is not a table), "
        'got "packages.vim"',
        hint='to drop one inherited list item, write "!item" in the list',
    ),
    Case(
        "unset-unknown-service",
        {"edge.toml": 'unset = ["services.iamm"]\n'},
        "profiles/edge.toml: unset[0]: expected services.<service>[.<key>] "
        "(did you mean 'iam'?), got \"services.iamm\"",
    ),
    Case(
        "invalid-package-name",
        {"edge.toml": 'packages = ["Vim Tiny"]\n'},
        "profiles/edge.toml: packages[0]: expected a package name of lowercase letters, "
        "digits, '+', '.' and '-' (optionally prefixed with '!'), got \"Vim Tiny\"",
    ),
    Case(
        "invalid-firmware-name",
        {"edge.toml": '[kernel]\nfirmware = ["firmware_bnx2"]\n'},
        "profiles/edge.toml: kernel.firmware[0]: expected a package name of lowercase "
        "letters, digits, '+', '.' and '-' (optionally prefixed with '!'), "
        'got "firmware_bnx2"',
    ),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_malformed_profile_is_one_clear_line(workdir: Path, case: Case) -> None:
    write_tree(workdir / "profiles", case.files)
    write_tree(workdir, case.extra)
    before = snapshot(workdir)

    result = invoke("--profiles-dir", "profiles", "profiles", "show", *case.args)

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {case.message}"
    if case.hint is not None:
        assert lines[1] == f"hint: {case.hint}"
    assert len(lines) <= 2
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert snapshot(workdir) == before


def test_corpus_is_large_and_distinct() -> None:
    assert len(CORPUS) >= 22
    assert len({c.message for c in CORPUS}) == len(CORPUS)


def test_port_clash_with_a_disabled_service_is_fine(workdir: Path) -> None:
    write_tree(
        workdir / "profiles",
        {"edge.toml": "[services.iam]\nenable = true\n[services.plasmavmc]\nport = 8080\n"},
    )
    result = invoke("--profiles-dir", "profiles", "profiles", "show", "edge", "--json")
    assert result.exit_code == 0, result.output
    services = json.loads(result.stdout)["services"]
    assert services["iam"]["enable"] is True
    assert services["plasmavmc"] == services["plasmavmc"] | {
        "enable": False,
        "ports": {"port": 8080},
    }


def test_profiles_list_names_a_broken_custom_profile(workdir: Path) -> None:
    write_tree(workdir / "profiles", {"edge.toml": '[network]\ndhcp = "no"\n'})
    result = invoke("--profiles-dir", "profiles", "profiles", "list")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        'error: profiles/edge.toml: network.dhcp: expected true or false, got "no"'
    )


def test_missing_profiles_dir_is_a_usage_error(workdir: Path) -> None:
    result = invoke("--profiles-dir", "nowhere", "profiles", "list")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        'error: --profiles-dir: expected a directory, got "nowhere"'
    )


def test_long_messages_stay_one_line(workdir: Path) -> None:
    """Off a terminal rich assumes 80 columns; a longer message must not be wrapped."""
    write_tree(workdir / "profiles", {"edge.toml": "[services.chainfyre]\n"})
    result = invoke("--profiles-dir", "profiles", "profiles", "show", "edge")
    assert result.exit_code == 2
    first = result.stderr.splitlines()[0]
    assert len(first) > 80
    assert first == (
        "error: profiles/edge.toml: services.chainfyre: unknown service (did you mean 'chainfire'?)"
    )


# ---------------------------------------------------------------------------------------
# Merge rules.


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
    assert profile.kernel_params == ["quiet", "nomodeset"]


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
    assert (profile.dhcp, profile.predictable_names) == (False, False)
    assert (profile.serial, profile.baud) == ("ttyS1", 115200)
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
    assert reset.baud == 115200


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
    assert all_in_one.kernel_modules == worker.kernel_modules

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
    assert (later_wins.description, later_wins.baud) == ("two", 57600)
    swapped = ProfileStore([tmp_path]).resolve("p-swapped")
    assert (swapped.description, swapped.baud) == ("one", 9600)


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
    assert profile.baud == 115200
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
    assert profile.authorized_keys == [
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


# ---------------------------------------------------------------------------------------
# Built-in profiles.

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
    assert {"kvm", "openvswitch", "vhost_net", "tun"} <= set(body["kernel_modules"])
    assert "kvm_intel" not in body["kernel_modules"]  # udev loads it by CPU feature
    assert {"openvswitch", "qemu", "libvirt"} <= set(body["packages"])


def test_base_has_no_services_and_a_serial_console() -> None:
    body = show_json("base")
    assert body["services"] == {}
    assert body["extends"] == []
    assert "console=ttyS0,115200" in body["kernel_params"]
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
    assert changed.dhcp is False
    assert changed.content_hash() != builtin


# ---------------------------------------------------------------------------------------
# Custom profiles.

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
