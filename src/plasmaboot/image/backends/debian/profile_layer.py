"""Make the profile layer: the small part of an image a profile's settings decide (units,
service configs and users, sysctls, modules to load, root's authorized keys, network,
console, sshd), written as plain files into a directory with no chroot and no mmdebstrap,
so a change to a setting rebuilds this layer in well under a second and reuses the package
layer (`hook`, cached by `package_layer`). Stage-1 stacks it above the package layer
(C1: `/layers/50-profile/`).

What it needs from the package layer comes with that layer's cache entry
(`contract.HookResult`): the unit files' [Install] sections, so `enable()` writes the
links `systemctl enable` would, and the account files, to which the services' users are
added here, at build time (deterministic: the same profile gives the same uids), so
systemd-sysusers need not run at boot. Each step is a small function; the order is `STEPS`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmaboot.artifacts.layout import PROFILE_LAYER
from plasmaboot.errors import WorkError
from plasmaboot.formats.cpio import Entry
from plasmaboot.image.backends.debian.contract import ACCOUNT_FILES, UnitInstall, parse_install
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile, ResolvedService

# Directories whose mode is not 0755 (the layer's directories hide the package layer's).
DIR_MODES = {"root": 0o700, "root/.ssh": 0o700}
# The node's own keys, from the per-node layer (contracts C2), add to the image's.
NODE_AUTHORIZED_KEYS = "/etc/plasmaboot/node/authorized_keys"
SSHD_DROP_IN = """\
# plasmaboot: root logs in with a key, never with a password.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
# the image's keys, then the machine's own (from its per-node layer, when it has one)
AuthorizedKeysFile .ssh/authorized_keys /etc/plasmaboot/node/authorized_keys
# host keys are made at each boot (plasmaboot-ssh-hostkeys.service)
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
"""
HOST_KEYGEN_UNIT = """\
# plasmaboot: one image boots many machines, so SSH host keys are made at each boot
# (on the tmpfs overlay) and never stored in the image.
[Unit]
Description=Generate per-boot SSH host keys
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=ssh.service shutdown.target
Conflicts=shutdown.target
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
# ed25519 and ECDSA only: an RSA key takes seconds to make on a slow CPU, at every boot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=multi-user.target
RequiredBy=ssh.service
"""
WAIT_ONLINE_DROP_IN = """\
# plasmaboot: a node is online when any NIC is configured, not all of them.
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60
"""


@dataclass(frozen=True)
class ProfilePlan:
    """What the profile layer is made from."""

    profile: Profile
    authorized_keys: str  # root's authorized_keys, ready to write


@dataclass(frozen=True)
class PackageBase:
    """What the profile layer reads from the package layer below it."""

    units: Mapping[str, UnitInstall]  # unit file name -> where it is and its [Install]
    accounts: Mapping[str, str]  # ACCOUNT_FILES by name -> their text


@dataclass
class Context:
    root: Path  # the layer's directory
    plan: ProfilePlan
    base: PackageBase
    log: Log

    @property
    def profile(self) -> Profile:
        return self.plan.profile

    def write(self, relpath: str, text: str, mode: int = 0o644) -> Path:
        path = self.root / relpath.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        os.chmod(path, mode)
        return path

    def link(self, relpath: str, target: str) -> None:
        link = self.root / relpath.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    def mask(self, relpath: str) -> None:
        """Point a unit or generator at /dev/null: systemd then never runs it."""
        self.link(relpath, "/dev/null")

    def enable(self, *units: str) -> None:
        """Write the links `systemctl enable UNIT...` would: WantedBy=, RequiredBy=,
        Alias= and Also= of each unit's [Install] section (this layer's own units first,
        then the package layer's); a template is enabled with the instance asked for."""
        for unit in units:
            self.enable_one(unit, seen=set())

    def enable_one(self, unit: str, seen: set[str]) -> None:
        if unit in seen:
            return
        seen.add(unit)
        prefix, at, rest = unit.partition("@")
        instance, _, suffix = rest.rpartition(".")
        template = f"{prefix}@.{suffix}" if at else unit
        install = self.find_unit(template, unit)
        name = unit
        if at and not instance:
            if install.default_instance is None:
                raise WorkError(f"cannot enable {unit}: a template with no DefaultInstance")
            name = f"{prefix}@{install.default_instance}.{suffix}"
        for target in install.wanted_by:
            self.link(f"etc/systemd/system/{target}.wants/{name}", install.path)
        for target in install.required_by:
            self.link(f"etc/systemd/system/{target}.requires/{name}", install.path)
        for alias in install.alias:
            self.link(f"etc/systemd/system/{alias}", install.path)
        for also in install.also:
            self.enable_one(also, seen)

    def find_unit(self, filename: str, unit: str) -> UnitInstall:
        own = self.root / "etc/systemd/system" / filename
        if own.is_file():
            return parse_install(f"/etc/systemd/system/{filename}", own.read_text())
        found = self.base.units.get(filename)
        if found is None:
            raise WorkError(
                f"cannot enable {unit}: no unit {filename} in the image",
                hint="add the package that ships it to the profile's packages",
            )
        return found


# --------------------------------------------------------------------------------------
# Steps

# Debian's ssh.service waits for network.target, which waits for systemd-resolved: on a slow
# or emulated CPU that is many seconds in which the node is up but cannot be reached. sshd
# needs neither network nor DNS to listen, so our copy of the unit (same service, same
# options) starts as soon as the filesystems and the per-boot host keys are there.
SSH_UNIT = """\
[Unit]
Description=OpenBSD Secure Shell server (plasmaboot: started early)
Documentation=man:sshd(8) man:sshd_config(5)
DefaultDependencies=no
After=local-fs.target plasmaboot-ssh-hostkeys.service
Requires=plasmaboot-ssh-hostkeys.service
Before=shutdown.target
Conflicts=shutdown.target
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/usr/sbin/sshd -t
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartPreventExitStatus=255
Type=notify
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""


def configure_ssh(ctx: Context) -> None:
    ctx.write("etc/ssh/sshd_config.d/10-plasmaboot.conf", SSHD_DROP_IN)
    ssh_dir = ctx.root / "root/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    ctx.write("root/.ssh/authorized_keys", ctx.plan.authorized_keys, mode=0o600)
    ctx.write("etc/systemd/system/plasmaboot-ssh-hostkeys.service", HOST_KEYGEN_UNIT)
    ctx.write("etc/systemd/system/ssh.service", SSH_UNIT)
    ctx.enable("plasmaboot-ssh-hostkeys.service", "ssh.service")


def configure_network(ctx: Context) -> None:
    network = ctx.profile.network
    if not network.dhcp:
        return
    ctx.write("etc/systemd/network/80-plasmaboot-dhcp.network", render_dhcp_network(network.mtu))
    ctx.write(
        "etc/systemd/system/systemd-networkd-wait-online.service.d/plasmaboot.conf",
        WAIT_ONLINE_DROP_IN,
    )
    ctx.enable("systemd-networkd.service", "systemd-resolved.service")


def render_dhcp_network(mtu: int | None) -> str:
    """systemd-networkd's .network file for DHCP on every Ethernet NIC, with the profile's
    network.mtu when it sets one (networkd ignores a DHCP server's MTU option by default, so
    this one holds)."""
    link = f"[Link]\nMTUBytes={mtu}\n\n" if mtu is not None else ""
    return (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        f"[Match]\nType=ether\nKind=!*\n\n{link}[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )


def configure_console(ctx: Context) -> None:
    ctx.enable(f"serial-getty@{ctx.profile.console.serial}.service")


def configure_sysctl(ctx: Context) -> None:
    if not ctx.profile.sysctl:
        return
    lines = [f"{key} = {value}" for key, value in ctx.profile.sysctl.items()]
    ctx.write("etc/sysctl.d/90-plasmaboot.conf", "\n".join(["# plasmaboot", *lines]) + "\n")


def configure_kernel_modules(ctx: Context) -> None:
    if not ctx.profile.kernel.modules:
        return
    ctx.write(
        "etc/modules-load.d/plasmaboot.conf",
        "\n".join(["# plasmaboot", *ctx.profile.kernel.modules]) + "\n",
    )


def configure_services(ctx: Context) -> None:
    for service in ctx.profile.services.values():
        # the user is added to the image's accounts by add_service_users; the sysusers.d
        # line says so to systemd-sysusers too (in /etc: the layer leaves /usr alone,
        # see hook.mark_image_updated)
        ctx.write(
            f"etc/sysusers.d/plasmaboot-{service.name}.conf",
            f'u {service.user} - "PlasmaCloud {service.name}" /var/lib/{service.name}\n',
        )
        settings = {**service.ports, **service.settings}
        ctx.write(service.config, render_toml(settings))
        ctx.write(f"etc/systemd/system/{service.name}.service", render_unit(service))
    enabled = [f"{s.name}.service" for s in ctx.profile.services.values() if s.enable]
    if enabled:
        ctx.enable(*enabled)


# Ports below this one need CAP_NET_BIND_SERVICE; services run as their own user.
PRIVILEGED_PORTS_BELOW = 1024
DNS_PORT = 53
# An enabled DNS service binds port 53, which resolved's stub listener (127.0.0.53:53)
# would hold; /etc/resolv.conf then names the DHCP servers directly.
RESOLVED_NO_STUB = """\
# plasmaboot: an enabled DNS service listens on port 53; resolved's stub listener is off.
[Resolve]
DNSStubListener=no
"""


def binds_privileged_port(service: ResolvedService) -> bool:
    return any(port < PRIVILEGED_PORTS_BELOW for port in service.ports.values())


def serves_dns(profile: Profile) -> bool:
    """An enabled service listens on the DNS port."""
    return any(s.enable and DNS_PORT in s.ports.values() for s in profile.services.values())


def configure_dns_service(ctx: Context) -> None:
    """Free port 53 for an enabled DNS service: resolved's stub listener off, and
    /etc/resolv.conf naming the DHCP servers resolved lists (not the stub)."""
    if not serves_dns(ctx.profile) or "systemd-resolved.service" not in ctx.base.units:
        return
    ctx.write("etc/systemd/resolved.conf.d/20-plasmaboot-dns-service.conf", RESOLVED_NO_STUB)
    ctx.link("etc/resolv.conf", "../run/systemd/resolve/resolv.conf")


def render_unit(service: ResolvedService) -> str:
    name = service.name
    binary = f"/usr/bin/{service.binary}"
    # the capability to bind a port below 1024, and no other, only for a service that has one
    capabilities = (
        ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
        if binds_privileged_port(service)
        else []
    )
    limits = []
    if service.memory_max:
        limits.append(f"MemoryMax={service.memory_max}")
    if service.cpu_quota:
        limits.append(f"CPUQuota={service.cpu_quota}")
    return "\n".join(
        [
            "# plasmaboot: disabled unless the profile enables it",
            "[Unit]",
            f"Description=PlasmaCloud {name}: {service.description}",
            "Wants=network-online.target",
            "After=network-online.target",
            # a service whose package was not given is skipped, and says why in its status
            f"ConditionPathExists={binary}",
            "",
            "[Service]",
            f"User={service.user}",
            f"Group={service.user}",
            f"ExecStart={binary} --config {service.config}",
            f"StateDirectory={name}",
            "Restart=on-failure",
            *capabilities,
            *limits,
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def render_toml(table: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """A small TOML writer for service settings: scalars, arrays, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    table_arrays: list[tuple[tuple[str, ...], list[dict[str, Any]]]] = []
    for key, value in table.items():
        if isinstance(value, dict):
            tables.append(((*path, key), value))
        elif is_table_array(value):
            table_arrays.append(((*path, key), value))
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for sub_path, sub in tables:
        lines.append(f"\n[{'.'.join(toml_key(p) for p in sub_path)}]")
        lines.append(render_toml(sub, sub_path).rstrip("\n"))
    for sub_path, items in table_arrays:
        for item in items:
            lines.append(f"\n[[{'.'.join(toml_key(p) for p in sub_path)}]]")
            lines.append(render_toml(item, sub_path).rstrip("\n"))
    return "\n".join(line for line in lines if line) + "\n"


def is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; keep non-ASCII as UTF-8.
    # JSON leaves DEL raw, which a TOML string may not hold.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return toml_string(str(value))


# System users get the highest free id below 1000, as systemd-sysusers gives them.
SYSTEM_ID_MAX = 999
SYSTEM_ID_MIN = 100


def add_service_users(ctx: Context) -> None:
    """The services' users and groups, added to copies of the package layer's account
    files (one id for both, the highest free one, in name order: the same profile gives
    the same ids). A user the packages already made is left as it is."""
    users = sorted({service.user: service for service in ctx.profile.services.values()}.items())
    accounts = {name: ctx.base.accounts[name] for name in ACCOUNT_FILES}
    taken_names = {line.split(":", 1)[0] for line in accounts["passwd"].splitlines()}
    taken_ids = {
        int(fields[2])
        for name in ("passwd", "group")
        for fields in (line.split(":") for line in accounts[name].splitlines())
        if len(fields) > 2 and fields[2].isdigit()
    }
    added = []
    for user, service in users:
        if user in taken_names:
            continue
        uid = next(i for i in range(SYSTEM_ID_MAX, SYSTEM_ID_MIN, -1) if i not in taken_ids)
        taken_ids.add(uid)
        home = f"/var/lib/{service.name}"
        accounts["passwd"] += (
            f"{user}:x:{uid}:{uid}:PlasmaCloud {service.name}:{home}:/usr/sbin/nologin\n"
        )
        accounts["group"] += f"{user}:x:{uid}:\n"
        accounts["shadow"] += f"{user}:!*:::::::\n"
        accounts["gshadow"] += f"{user}:!*::\n"
        added.append(user)
    if not added:
        return
    for name, text in accounts.items():
        ctx.write(f"etc/{name}", text, mode=0o640 if name.endswith("shadow") else 0o644)
    ctx.log.info(f"added users {', '.join(added)}")


STEPS: list[Callable[[Context], None]] = [
    configure_ssh,
    configure_network,
    configure_console,
    configure_sysctl,
    configure_kernel_modules,
    configure_services,
    configure_dns_service,
    add_service_users,
]


def make_profile_layer(root: Path, plan: ProfilePlan, base: PackageBase, log: Log) -> None:
    """Write the profile layer into the empty directory `root`."""
    ctx = Context(root=root, plan=plan, base=base, log=log)
    for step in STEPS:
        step(ctx)


def layer_entries(root: Path, prefix: str = PROFILE_LAYER) -> list[Entry]:
    """The layer's directory as cpio entries under `prefix`: files with their modes,
    directories 0755 (DIR_MODES), symlinks as symlinks; owned by root."""
    entries = [Entry(prefix, stat.S_IFDIR | 0o755)]
    for path in sorted(root.rglob("*")):
        relpath = path.relative_to(root).as_posix()
        name = f"{prefix}/{relpath}"
        if path.is_symlink():
            entries.append(Entry(name, stat.S_IFLNK | 0o777, link_target=os.readlink(path)))
        elif path.is_dir():
            entries.append(Entry(name, stat.S_IFDIR | DIR_MODES.get(relpath, 0o755)))
        else:
            entries.append(
                Entry(name, stat.S_IFREG | stat.S_IMODE(path.stat().st_mode), source=path)
            )
    return entries
