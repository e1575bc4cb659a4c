"""Adversarial probe of the profile input checks: kernel.params, kernel.modules and sysctl
values on their way into netboot.ipxe, modules-load.d and sysctl.d. A value that could add
an iPXE command, a second line or a terminal escape is refused where it enters (one located
line); a value that is let in renders as exactly one word or one line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.formats.ipxe import parse_netboot_script, render_netboot_script
from plasmaboot.image.backends.debian.profile_layer import (
    Context,
    PackageBase,
    ProfilePlan,
    configure_kernel_modules,
    configure_sysctl,
    render_toml,
)
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore


def resolve(directory: Path, body: str) -> Profile:
    (directory / "probe.toml").write_text('extends = "base"\n' + body)
    return ProfileStore([directory]).resolve("probe")


def refused(directory: Path, body: str) -> str:
    with pytest.raises(UserError) as caught:
        resolve(directory, body)
    message = caught.value.message
    assert "\n" not in message and "probe.toml: " in message, message
    return message


def rendered(root: Path, profile: Profile) -> Path:
    plan = ProfilePlan(profile=profile, authorized_keys="")
    context = Context(root=root, plan=plan, base=PackageBase(units={}, accounts={}), log=Log())
    configure_sysctl(context)
    configure_kernel_modules(context)
    return root


HOSTILE_PARAMS = [
    "${boot-server}", "a||shell", "a&&b", "a;b", "a b", "a\\tb", "a\\nshell", "a\\rb",
    "a\\u0000b", '\\"', "'", "#x", "a\u202eb", "\u00e9", "a\u2028b", "!", "!!a", "!a b",
    "x" * 1025, "", "a\\\\b", "a`b`", "$(id)", "a<b", "a>b", "a*b", "a?b", "a[b]", "a{b}",
]  # fmt: skip


@pytest.mark.parametrize("param", HOSTILE_PARAMS)
def test_a_hostile_kernel_parameter_is_refused(tmp_path: Path, param: str) -> None:
    message = refused(tmp_path, f'[kernel]\nparams = ["{param}"]\n')
    assert "kernel.params[0]: expected a kernel parameter" in message


@pytest.mark.parametrize(
    "module",
    ["kvm\\nx", "../x", "x/y", "!", "a b", "a.ko", "a;b", "k" * 56, "!" + "k" * 56, ""],
)
def test_a_hostile_module_name_is_refused(tmp_path: Path, module: str) -> None:
    assert "kernel.modules[0]: expected a kernel module name" in refused(
        tmp_path, f'[kernel]\nmodules = ["{module}"]\n'
    )


@pytest.mark.parametrize(
    "value",
    ["1\\nkernel.x = 2", "1\\rkernel.x=2", "a\\u0000", "\\u001b[2J", "a\\u007f", "a\\u0085b",
     "a\\u009bb", "a\u2028b", "a\u2029b", "a\u202eb", "a\u2066b", "x" * 4097],
)  # fmt: skip
def test_a_sysctl_value_that_is_not_one_plain_line_is_refused(tmp_path: Path, value: str) -> None:
    message = refused(tmp_path, f'[sysctl]\n"kernel.domainname" = "{value}"\n')
    assert 'sysctl."kernel.domainname": expected a sysctl value on one line' in message


@pytest.mark.parametrize(
    "name", ["kernel.x\\n", "-kernel.x", "kernel", "kernel..x", "kernel.x y", "kernel.x=1"]
)
def test_a_hostile_sysctl_name_is_refused(tmp_path: Path, name: str) -> None:
    assert "expected a sysctl name" in refused(tmp_path, f'[sysctl]\n"{name}" = 1\n')


def test_what_is_let_in_renders_as_one_word_or_one_line(tmp_path: Path) -> None:
    profile = resolve(
        tmp_path,
        '[kernel]\nparams = ["init=/nix/store/abc-x/init", "plasmaboot.overlay_size=50%", '
        '"console=ttyS0,115200n8", "a@b+c~d"]\nmodules = ["' + "k" * 55 + '", "vhost_net"]\n'
        '[sysctl]\n"kernel.domainname" = "Zürich lab #2 = yes"\n"net.ipv4.ip_forward" = 1\n',
    )
    script = render_netboot_script(profile.label, profile.kernel.params)
    assert len(script.splitlines()) == 5
    assert parse_netboot_script(script).kernel_params == tuple(profile.kernel.params)
    root = rendered(tmp_path / "root", profile)
    sysctl = (root / "etc/sysctl.d/90-plasmaboot.conf").read_bytes().split(b"\n")
    assert sysctl[-1] == b"" and len(sysctl) == 2 + len(profile.sysctl)
    assert "kernel.domainname = Zürich lab #2 = yes".encode() in sysctl
    modules = (root / "etc/modules-load.d/plasmaboot.conf").read_text().split("\n")
    assert modules[1:-1] == list(profile.kernel.modules)


def test_parameters_longer_than_the_kernel_command_line_are_refused(tmp_path: Path) -> None:
    params = ", ".join(f'"p{i}={"x" * 500}"' for i in range(5))  # about 2.5 KB
    message = refused(tmp_path, f"[kernel]\nparams = [{params}]\n")
    assert "kernel.params" in message and "2048" in message


# One table over every kind of hostile text, against each value of a profile that reaches a
# file: refused where it enters (one located line), or rendered so it stays one value.
HOSTILE_TEXT = [
    "a\nb", "a\rb", "a\x00b", "a && b", "a || b", "a;b", "${boot-server}", "x" * 5000,
    "Zürich\u202e", "a\x7fb", "a\u2028b", "\x1b[2J", "trail\n",
]  # fmt: skip
REFUSED_FIELDS = {
    "kernel.params": lambda v: f"[kernel]\nparams = [{json.dumps(v)}]\n",
    "kernel.modules": lambda v: f"[kernel]\nmodules = [{json.dumps(v)}]\n",
    "packages": lambda v: f"packages = [{json.dumps(v)}]\n",
    "console.serial": lambda v: f"[console]\nserial = {json.dumps(v)}\n",
    "service_defaults.memory_max": lambda v: f"[service_defaults]\nmemory_max = {json.dumps(v)}\n",
    "services.iam.cpu_quota": lambda v: f"[services.iam]\ncpu_quota = {json.dumps(v)}\n",
    "sysctl name": lambda v: f"[sysctl]\n{json.dumps('kernel.' + v)} = 1\n",
    # past the prefix the rule demands, so the rest of the name is what is tried
    "kernel.package": lambda v: f"[kernel]\npackage = {json.dumps('linux-image-' + v)}\n",
    "kernel.suite": lambda v: f"[kernel]\nsuite = {json.dumps(v)}\n",
}  # fmt: skip


@pytest.mark.parametrize("value", HOSTILE_TEXT)
@pytest.mark.parametrize("field", REFUSED_FIELDS)
def test_every_checked_field_refuses_hostile_text(tmp_path: Path, field: str, value: str) -> None:
    if value == "x" * 5000 and field in ("packages", "sysctl name", "kernel.package"):
        # no length bound of their own: taken, and still one word of a safe alphabet
        profile = resolve(tmp_path, REFUSED_FIELDS[field](value))
        assert (
            value in profile.packages
            or f"kernel.{value}" in profile.sysctl
            or profile.kernel.package == f"linux-image-{value}"
        )
        return
    message = refused(tmp_path, REFUSED_FIELDS[field](value))
    assert field.split()[0].split(".")[0] in message, message


@pytest.mark.parametrize("value", HOSTILE_TEXT)
def test_a_sysctl_value_is_refused_or_one_line(tmp_path: Path, value: str) -> None:
    body = f'[sysctl]\n"kernel.domainname" = {json.dumps(value)}\n'
    try:
        profile = resolve(tmp_path, body)
    except UserError as exc:
        assert "\n" not in exc.message and 'sysctl."kernel.domainname"' in exc.message
        return
    lines = (rendered(tmp_path / "root", profile) / "etc/sysctl.d/90-plasmaboot.conf").read_text()
    assert lines.count("\n") == 2 and f"kernel.domainname = {value}" in lines


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_service_settings_render_to_the_same_toml_values(text: str) -> None:
    """services.<name>.settings are free-form: every key and value comes back as it was,
    one key, never a second line or table of the config."""
    settings = {text: text, "nested": {text: [text, 1]}, "plain": text}
    assert tomllib.loads(render_toml(settings)) == settings
