"""Loading profile files: the corpus of malformed files and the exact one-line message each
gets (file, key path, expected, got), through `plasmaboot profiles show`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from plasmaboot.formats.cmdline import PARAM_EXPECTATION
from profile_files import KEY, invoke, snapshot, write_tree

PARAM = f"{PARAM_EXPECTATION} (optionally prefixed with '!')"


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
        hint="known keys here: params, modules, include_modules, exclude_modules, firmware,"
        " package, suite",
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
        "mtu-too-small",
        {"edge.toml": "[network]\nmtu = 100\n"},
        "profiles/edge.toml: network.mtu: expected a number at least 576, got 100",
    ),
    Case(
        "mtu-too-large",
        {"edge.toml": 'extends = "worker"\n[network]\nmtu = 9217\n'},
        "profiles/edge.toml: network.mtu: expected a number at most 9216, got 9217",
    ),
    Case(
        "mtu-string",
        {"edge.toml": '[network]\nmtu = "9000"\n'},
        'profiles/edge.toml: network.mtu: expected an integer, got "9000"',
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
        hint="keys of [kernel]: params, modules, include_modules, exclude_modules, firmware,"
        " package, suite",
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
    # anything that reaches a boot script, a unit or a config file is checked where it enters
    Case(
        "kernel-param-newline-chain",
        {"edge.toml": '[kernel]\nparams = ["quiet\\nchain http://elsewhere/x"]\n'},
        f"profiles/edge.toml: kernel.params[0]: expected {PARAM}, "
        'got "quiet\\nchain http://elsewhere/x"',
    ),
    Case(
        "kernel-param-or",
        {"edge.toml": '[kernel]\nparams = ["quiet", "||", "shell"]\n'},
        f'profiles/edge.toml: kernel.params[1]: expected {PARAM}, got "||"',
    ),
    Case(
        "kernel-param-variable",
        {"edge.toml": '[kernel]\nparams = ["x=${net0/mac}"]\n'},
        f'profiles/edge.toml: kernel.params[0]: expected {PARAM}, got "x=${{net0/mac}}"',
    ),
    Case(
        "kernel-param-semicolon",
        {"edge.toml": '[kernel]\nparams = ["a;b"]\n'},
        f'profiles/edge.toml: kernel.params[0]: expected {PARAM}, got "a;b"',
    ),
    Case(
        "kernel-module-path",
        {"edge.toml": '[kernel]\nmodules = ["../../etc/x"]\n'},
        "profiles/edge.toml: kernel.modules[0]: expected a kernel module name of at most 55 "
        "letters, digits, '_' and '-' (optionally prefixed with '!'), got \"../../etc/x\"",
    ),
    Case(
        "sysctl-value-newline",
        {"edge.toml": '[sysctl]\n"net.core.somaxconn" = "1\\nkernel.x = 1"\n'},
        'profiles/edge.toml: sysctl."net.core.somaxconn": expected a sysctl value on one '
        "line of at most 4096 characters (no control or bidirectional formatting characters), "
        'got "1\\nkernel.x = 1"',
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
