"""The profile layer (profile_layer): the profile's files written into a directory with no
chroot, the links `systemctl enable` would make, the services' users added to the package
layer's account files, and the layer as cpio entries (what stage-1 gets)."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from plasmaboot.errors import WorkError
from plasmaboot.formats.cpio import Entry
from plasmaboot.image.backends.debian.contract import UnitInstall
from plasmaboot.image.backends.debian.profile_layer import (
    Context,
    PackageBase,
    ProfilePlan,
    add_service_users,
    configure_console,
    configure_dns_service,
    configure_kernel_modules,
    configure_network,
    configure_services,
    configure_ssh,
    configure_sysctl,
    layer_entries,
    make_profile_layer,
    render_dhcp_network,
    render_toml,
    render_unit,
)
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

AUTHORIZED_KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake op\n"
)
LIB = "/usr/lib/systemd/system"
# The package layer's units the profile layer enables, as Debian ships them.
UNITS = {
    "systemd-networkd.service": UnitInstall(
        path=f"{LIB}/systemd-networkd.service",
        wanted_by=("multi-user.target",),
        alias=("dbus-org.freedesktop.network1.service",),
        also=("systemd-networkd.socket",),
    ),
    "systemd-networkd.socket": UnitInstall(
        path=f"{LIB}/systemd-networkd.socket", wanted_by=("sockets.target",)
    ),
    "systemd-resolved.service": UnitInstall(
        path=f"{LIB}/systemd-resolved.service", wanted_by=("multi-user.target",)
    ),
    "serial-getty@.service": UnitInstall(
        path=f"{LIB}/serial-getty@.service", wanted_by=("getty.target",)
    ),
}
ACCOUNTS = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
    "systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin\n",
    "group": "root:x:0:\nsystemd-network:x:998:\nsystemd-journal:x:999:\n",
    "shadow": "root:!*:19000:0:99999:7:::\nsshd:!:19000::::::\n",
    "gshadow": "root:*::\n",
}


def worker(**changes: dict[str, object]) -> Profile:
    """The built-in worker profile, with changes to its resolved settings, by section."""
    profile = ProfileStore().resolve("worker")
    return profile.model_copy(
        update={
            section: getattr(profile, section).model_copy(update=values)
            if section != "sysctl"
            else values
            for section, values in changes.items()
        }
    )


def make_context(root: Path, profile: Profile | None = None) -> Context:
    plan = ProfilePlan(profile=profile or worker(), authorized_keys=AUTHORIZED_KEYS)
    return Context(root=root, plan=plan, base=PackageBase(UNITS, ACCOUNTS), log=Log())


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    root = tmp_path / "layer"
    root.mkdir()
    return root


def links(root: Path) -> dict[str, str]:
    """The symlinks under etc/systemd/system, by path under it, with their targets."""
    units = root / "etc/systemd/system"
    return (
        {
            p.relative_to(units).as_posix(): str(p.readlink())
            for p in sorted(units.rglob("*"))
            if p.is_symlink()
        }
        if units.is_dir()
        else {}
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------
# configure_*


def test_configure_ssh(layer: Path) -> None:
    configure_ssh(make_context(layer))
    sshd = (layer / "etc/ssh/sshd_config.d/10-plasmaboot.conf").read_text()
    for line in (
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
    ):
        assert line in sshd.splitlines()
    keys = layer / "root/.ssh/authorized_keys"
    assert keys.read_text() == AUTHORIZED_KEYS
    assert (mode(keys), mode(keys.parent)) == (0o600, 0o700)
    units = layer / "etc/systemd/system"
    assert "ssh-keygen -q -t ed25519" in (units / "plasmaboot-ssh-hostkeys.service").read_text()
    assert "Requires=plasmaboot-ssh-hostkeys.service" in (units / "ssh.service").read_text()
    assert "AuthorizedKeysFile .ssh/authorized_keys /etc/plasmaboot/node/authorized_keys" in (
        sshd.splitlines()
    )  # contracts C2: the machine's own keys add to the image's
    assert links(layer) == {
        "multi-user.target.wants/plasmaboot-ssh-hostkeys.service": (
            "/etc/systemd/system/plasmaboot-ssh-hostkeys.service"
        ),
        "ssh.service.requires/plasmaboot-ssh-hostkeys.service": (
            "/etc/systemd/system/plasmaboot-ssh-hostkeys.service"
        ),
        "multi-user.target.wants/ssh.service": "/etc/systemd/system/ssh.service",
        "sshd.service": "/etc/systemd/system/ssh.service",
    }


def test_configure_network_with_dhcp(layer: Path) -> None:
    configure_network(make_context(layer, worker(network={"dhcp": True})))
    network = (layer / "etc/systemd/network/80-plasmaboot-dhcp.network").read_text()
    assert "[Match]\nType=ether\nKind=!*\n" in network and "DHCP=yes" in network
    wait_online = "etc/systemd/system/systemd-networkd-wait-online.service.d/plasmaboot.conf"
    assert "--any" in (layer / wait_online).read_text()
    networkd = "/usr/lib/systemd/system/systemd-networkd.service"
    assert links(layer) == {
        "multi-user.target.wants/systemd-networkd.service": networkd,
        "dbus-org.freedesktop.network1.service": networkd,
        "sockets.target.wants/systemd-networkd.socket": (
            "/usr/lib/systemd/system/systemd-networkd.socket"
        ),
        "multi-user.target.wants/systemd-resolved.service": (
            "/usr/lib/systemd/system/systemd-resolved.service"
        ),
    }


def test_dhcp_network_file_without_an_mtu_leaves_the_link_alone() -> None:
    assert render_dhcp_network(None) == (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        "[Match]\nType=ether\nKind=!*\n\n"
        "[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )


def test_dhcp_network_file_sets_the_profiles_mtu(layer: Path) -> None:
    expected = (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        "[Match]\nType=ether\nKind=!*\n\n"
        "[Link]\nMTUBytes=9000\n\n"
        "[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )
    assert render_dhcp_network(9000) == expected
    configure_network(make_context(layer, worker(network={"dhcp": True, "mtu": 9000})))
    assert (layer / "etc/systemd/network/80-plasmaboot-dhcp.network").read_text() == expected


def test_configure_network_without_dhcp_does_nothing(layer: Path) -> None:
    configure_network(make_context(layer, worker(network={"dhcp": False})))
    assert not (layer / "etc/systemd/network").exists()
    assert links(layer) == {}


def test_configure_sysctl(layer: Path) -> None:
    configure_sysctl(make_context(layer, worker(sysctl={"vm.swappiness": 10, "a.b": "1 2"})))
    text = (layer / "etc/sysctl.d/90-plasmaboot.conf").read_text()
    assert text.splitlines() == ["# plasmaboot", "vm.swappiness = 10", "a.b = 1 2"]
    configure_sysctl(make_context(layer.parent / "other", worker(sysctl={})))
    assert not (layer.parent / "other/etc/sysctl.d").exists()


def test_configure_kernel_modules(layer: Path) -> None:
    configure_kernel_modules(make_context(layer, worker(kernel={"modules": ["kvm", "tun"]})))
    text = (layer / "etc/modules-load.d/plasmaboot.conf").read_text()
    assert text.splitlines() == ["# plasmaboot", "kvm", "tun"]
    configure_kernel_modules(make_context(layer.parent / "other", worker(kernel={"modules": []})))
    assert not (layer.parent / "other/etc/modules-load.d").exists()


def with_enabled(profile: Profile, name: str, **changes: Any) -> Profile:
    services = dict(profile.services)
    services[name] = services[name].model_copy(update={"enable": True, **changes})
    return profile.model_copy(update={"services": services})


def test_configure_services(layer: Path) -> None:
    profile = with_enabled(worker(), "novanet", settings={"log": {"level": "debug"}})
    configure_services(make_context(layer, profile))
    for service in profile.services.values():
        sysusers = layer / f"etc/sysusers.d/plasmaboot-{service.name}.conf"
        assert sysusers.read_text().startswith(f"u {service.user} - ")
        config = tomllib.loads((layer / service.config.lstrip("/")).read_text())
        assert config == {**service.ports, **service.settings}
        unit = layer / f"etc/systemd/system/{service.name}.service"
        assert unit.read_text() == render_unit(service)
    assert tomllib.loads((layer / "etc/novanet/config.toml").read_text())["log"] == {
        "level": "debug"
    }
    # only the enabled service is enabled; the others stay installed and off
    assert links(layer) == {
        "multi-user.target.wants/novanet.service": "/etc/systemd/system/novanet.service"
    }
    assert not (layer / "usr").exists()  # the layer leaves /usr alone (update stamps)


def test_configure_services_enables_nothing_by_default(layer: Path) -> None:
    configure_services(make_context(layer))
    assert (layer / "etc/systemd/system/plasmavmc.service").is_file()
    assert links(layer) == {}


def test_render_unit() -> None:
    service = (
        worker().services["plasmavmc"].model_copy(update={"memory_max": "1G", "cpu_quota": "80%"})
    )
    lines = render_unit(service).splitlines()
    binary = f"/usr/bin/{service.binary}"
    for expected in (
        f"ConditionPathExists={binary}",  # skipped at boot when no package gave the binary
        f"ExecStart={binary} --config {service.config}",
        f"User={service.user}",
        f"Group={service.user}",
        "StateDirectory=plasmavmc",
        "MemoryMax=1G",
        "CPUQuota=80%",
        "WantedBy=multi-user.target",
    ):
        assert expected in lines
    unlimited = service.model_copy(update={"memory_max": None, "cpu_quota": None})
    assert not [line for line in render_unit(unlimited).splitlines() if "Max=" in line]


@pytest.mark.parametrize(
    "settings",
    [
        {"port": 2379, "debug": False, "peers": ["a", "b"], "tls": {"cert": "/x y"}},
        {"members": [{"name": "a", "port": 1}, {"name": "b", "port": 2}], "after": 1},
        {"motd": 'caf\u00e9 \U0001f680 "quoted" \\ tab\t', "a.b": {"c.d": 1}},
        {"nested": {"deeper": {"x": [1.5, 2.5]}, "y": "z"}, "inline": [[1, 2], ["a"]]},
    ],
)
def test_render_toml_round_trips(settings: dict[str, object]) -> None:
    assert tomllib.loads(render_toml(settings)) == settings


# --------------------------------------------------------------------------------------
# enable, users, the whole layer


def test_a_template_is_enabled_with_its_instance(layer: Path) -> None:
    configure_console(make_context(layer, worker(console={"serial": "ttyS1"})))
    assert links(layer) == {
        "getty.target.wants/serial-getty@ttyS1.service": f"{LIB}/serial-getty@.service"
    }


def test_enabling_a_unit_the_image_lacks_names_it(layer: Path) -> None:
    with pytest.raises(WorkError) as caught:
        make_context(layer).enable("nosuch.service")
    assert "cannot enable nosuch.service: no unit nosuch.service" in caught.value.message


def test_service_users_get_the_highest_free_system_ids_in_name_order(layer: Path) -> None:
    profile = worker()
    add_service_users(make_context(layer, profile))
    passwd = (layer / "etc/passwd").read_text()
    assert passwd.startswith(ACCOUNTS["passwd"])  # the package layer's users stay as they are
    users = sorted({s.user for s in profile.services.values()})
    added = [line.split(":") for line in passwd.splitlines()[3:]]
    assert [fields[0] for fields in added] == users
    # 999 and 998 are taken (groups systemd-journal, systemd-network): 997 down
    assert [int(fields[2]) for fields in added] == list(range(997, 997 - len(users), -1))
    assert all(fields[2] == fields[3] and fields[6] == "/usr/sbin/nologin" for fields in added)
    group = (layer / "etc/group").read_text().splitlines()
    assert f"{users[0]}:x:997:" in group
    shadow = (layer / "etc/shadow").read_text().splitlines()
    assert shadow[0] == "root:!*:19000:0:99999:7:::"  # root stays locked
    assert f"{users[0]}:!*:::::::" in shadow
    assert (mode(layer / "etc/shadow"), mode(layer / "etc/passwd")) == (0o640, 0o644)
    # the same profile gives the same ids
    again = layer.parent / "again"
    add_service_users(make_context(again, profile))
    assert (again / "etc/passwd").read_text() == passwd


def test_no_services_leave_the_accounts_to_the_package_layer(layer: Path) -> None:
    add_service_users(make_context(layer, worker().model_copy(update={"services": {}})))
    assert not (layer / "etc/passwd").exists()


def test_the_layer_is_the_same_for_the_same_profile(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for root in (first, second):
        root.mkdir()
        make_profile_layer(root, make_context(root).plan, PackageBase(UNITS, ACCOUNTS), Log())
    assert entries_summary(first) == entries_summary(second)


def entries_summary(root: Path) -> list[tuple[str, int, str | None, bytes | None]]:
    return [
        (e.name, e.mode, e.link_target, e.source.read_bytes() if e.source else None)
        for e in layer_entries(root)
    ]


def test_layer_entries_keep_modes_and_links_under_the_layers_name(layer: Path) -> None:
    make_profile_layer(layer, make_context(layer).plan, PackageBase(UNITS, ACCOUNTS), Log())
    entries: dict[str, Entry] = {e.name: e for e in layer_entries(layer)}
    prefix = "layers/50-profile"
    assert all(name == prefix or name.startswith(f"{prefix}/") for name in entries)
    assert entries[f"{prefix}/root"].mode == stat.S_IFDIR | 0o700
    assert entries[f"{prefix}/root/.ssh"].mode == stat.S_IFDIR | 0o700
    assert entries[f"{prefix}/root/.ssh/authorized_keys"].mode == stat.S_IFREG | 0o600
    assert entries[f"{prefix}/etc"].mode == stat.S_IFDIR | 0o755
    link = entries[f"{prefix}/etc/systemd/system/multi-user.target.wants/ssh.service"]
    assert (link.mode, link.link_target) == (
        stat.S_IFLNK | 0o777,
        "/etc/systemd/system/ssh.service",
    )
    assert f"{prefix}/etc/ssh/sshd_config.d/10-plasmaboot.conf" in entries


def test_what_the_layer_leaves_to_others(layer: Path) -> None:
    """The package layer's settings and the per-node layer's files are not written here."""
    make_profile_layer(layer, make_context(layer).plan, PackageBase(UNITS, ACCOUNTS), Log())
    written = {p.relative_to(layer).as_posix() for p in layer.rglob("*")}
    assert "etc/hostname" not in written  # the package layer's default, the node's own name
    assert not [p for p in written if p.startswith(("usr/", "etc/plasmaboot/node"))]


_ = Any


def control_plane(**enabled: dict[str, int]) -> Profile:
    """The built-in control-plane profile with these services enabled on these ports."""
    profile = ProfileStore().resolve("control-plane")
    services = dict(profile.services)
    for name, ports in enabled.items():
        merged = {**services[name].ports, **ports}
        services[name] = services[name].model_copy(update={"enable": True, "ports": merged})
    return profile.model_copy(update={"services": services})


CAPABILITY_LINES = {
    "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
}


@pytest.mark.parametrize(
    ("name", "ports", "privileged"),
    [
        ("flashdns", {}, True),  # the catalog's port 53
        ("flashdns", {"port": 5353}, False),
        ("iam", {"port": 1023}, True),
        ("iam", {"port": 1024}, False),
        ("iam", {"port": 1}, True),
        ("iam", {}, False),  # the catalog's 8080
        ("chainfire", {"gossipPort": 443}, True),  # any one of its ports
        ("chainfire", {}, False),
        ("flaredb", {"raftPort": 80, "port": 2479}, True),
    ],
)
def test_only_a_service_with_a_port_below_1024_may_bind_it(
    name: str, ports: dict[str, int], privileged: bool
) -> None:
    service = control_plane(**{name: ports}).services[name]
    lines = set(render_unit(service).splitlines())
    assert (lines >= CAPABILITY_LINES) is privileged
    assert not {line for line in lines if "Capabilit" in line} - CAPABILITY_LINES


@pytest.mark.parametrize(
    ("profile", "stub_off"),
    [
        (worker(), False),
        (control_plane(), False),  # flashdns present but disabled
        (control_plane(iam={}), False),
        (control_plane(flashdns={}), True),
        (control_plane(flashdns={"port": 5353}), False),  # not on the DNS port
        (control_plane(iam={"port": 53}), True),  # whatever listens on 53
    ],
)
def test_an_enabled_dns_service_gets_port_53_from_resolveds_stub(
    layer: Path, profile: Profile, stub_off: bool
) -> None:
    configure_dns_service(make_context(layer, profile))
    dropin = layer / "etc/systemd/resolved.conf.d/20-plasmaboot-dns-service.conf"
    assert dropin.is_file() is stub_off
    if stub_off:
        settings = [line for line in dropin.read_text().splitlines() if "=" in line]
        assert settings == ["DNSStubListener=no"]
        # names resolve through the DHCP servers resolved lists, not the stub
        assert os.readlink(layer / "etc/resolv.conf") == "../run/systemd/resolve/resolv.conf"
    else:
        assert not (layer / "etc/resolv.conf").is_symlink()
