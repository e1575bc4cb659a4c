"""The mmdebstrap hook's steps, each on a small fake root filesystem in tmp_path (as
mmdebstrap leaves it before the hook runs), with a stand-in `chroot` first on PATH that
records each call and answers the two whose output the hook reads (kmod static-nodes,
dpkg-query). The real thing runs in every image build
(tests/integration/test_debian_build.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from plasmaboot.image.backends.debian import hook
from plasmaboot.image.backends.debian.contract import INSIDE_OUT, INSIDE_PLAN, HookOutputs, HookPlan
from plasmaboot.image.backends.debian.hook import (
    STATIC_NODES,
    Context,
    configure_kernel_modules,
    configure_network,
    configure_services,
    configure_ssh,
    configure_sysctl,
    export_kernel,
    list_static_nodes,
    mask_unneeded_units,
    render_dhcp_network,
    render_toml,
    render_unit,
    resolved_config,
    restore_build_replacements,
    stage1_module_order,
    trim_documentation,
    trim_kernel_modules,
)
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

from conftest import KERNEL_RELEASE, make_kernel

AUTHORIZED_KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake op\n"
)
# The modules of the fake kernel, by path under kernel/, and what each needs (modules.dep).
MODULES = {
    "drivers/block/loop.ko": [],
    "fs/squashfs/squashfs.ko": ["lib/zstd/zstd_decompress.ko"],
    "lib/zstd/zstd_decompress.ko": [],
    "fs/overlayfs/overlay.ko": [],
    "drivers/net/e1000/e1000.ko.xz": [],
    "drivers/net/wireless/ath/ath.ko": [],
    "sound/core/snd.ko": [],
}
FAKE_CHROOT = """\
#!/bin/sh
root="$1"; shift
printf '%s\\n' "$*" >> "{record}"
case "$1" in
  kmod)
    for arg in "$@"; do
      case "$arg" in
        --output=*) printf 'c! /dev/fuse 0600 - - - 10:229\\n' > "$root${{arg#--output=}}";;
      esac
    done;;
  dpkg-query) printf 'openssh-server\\t1:9.2p1-2\\nsystemd\\t252.30-1\\n';;
esac
"""

ChrootCalls = Callable[[], list[str]]


@pytest.fixture
def chroot_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ChrootCalls:
    """Put the stand-in chroot first on PATH; the result lists its calls so far, one string
    each (the arguments after the root)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    record = tmp_path / "chroot-calls"
    script = bin_dir / "chroot"
    script.write_text(FAKE_CHROOT.format(record=record))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return lambda: record.read_text().splitlines() if record.exists() else []


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root filesystem with what the hook's steps look at: a kernel and its modules, host
    keys, documentation, apt lists, the build's replacements."""
    root = tmp_path / "root"
    modules = root / "usr/lib/modules" / KERNEL_RELEASE
    for relpath in MODULES:
        write(modules / "kernel" / relpath, f"module {relpath}")
    write(
        modules / "modules.dep",
        "".join(
            f"kernel/{path}: {' '.join(f'kernel/{dep}' for dep in deps)}\n"
            for path, deps in MODULES.items()
        ),
    )
    (root / "boot").mkdir()
    make_kernel(root / "boot" / f"vmlinuz-{KERNEL_RELEASE}")
    write(root / "boot" / f"config-{KERNEL_RELEASE}")
    write(root / "etc/ssh/ssh_host_ed25519_key", "host private key")
    write(root / "etc/ssh/ssh_host_ed25519_key.pub", "host public key")
    write(root / "usr/share/man/man1/ls.1.gz")
    write(root / "usr/share/info/coreutils.info.gz")
    write(root / "usr/share/doc-base/coreutils")
    write(root / "usr/share/locale/de/LC_MESSAGES/coreutils.mo")
    write(root / "usr/share/locale/en_GB/LC_MESSAGES/coreutils.mo")
    write(root / "usr/share/locale/locale.alias")
    write(root / "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease")
    write(root / "var/cache/apt/archives/bash_5.2_amd64.deb")
    write(root / "usr/lib/systemd/system/systemd-resolved.service")
    write(root / "etc/resolv.conf", "nameserver 192.0.2.1\n")
    write(root / "usr/sbin/start-stop-daemon", "#!/bin/sh\n# mmdebstrap's stand-in\n")
    write(root / "usr/sbin/start-stop-daemon.REAL", "\x7fELF the real one")
    write(root / "usr/lib/binfmt.d/python3.11.conf")
    return root


def worker(**changes: dict[str, object]) -> Profile:
    """The built-in worker profile, with changes to its resolved settings, by section:
    worker(network={"dhcp": False})."""
    profile = ProfileStore().resolve("worker")
    return profile.model_copy(
        update={
            section: getattr(profile, section).model_copy(update=values)
            if section != "sysctl"
            else values
            for section, values in changes.items()
        }
    )


def make_context(root: Path, profile: Profile | None = None, level: int = 1) -> Context:
    plan = HookPlan(
        profile=profile or worker(), authorized_keys=AUTHORIZED_KEYS, squashfs_level=level
    )
    outputs = HookOutputs(root / "tmp/plasmaboot-out")
    outputs.directory.mkdir(parents=True, exist_ok=True)
    return Context(root=root, plan=plan, log=Log(), outputs=outputs)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------
# configure_*


def test_configure_ssh(fake_root: Path, chroot_calls: ChrootCalls) -> None:
    configure_ssh(make_context(fake_root))
    sshd = (fake_root / "etc/ssh/sshd_config.d/10-plasmaboot.conf").read_text()
    for line in (
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
    ):
        assert line in sshd.splitlines()
    keys = fake_root / "root/.ssh/authorized_keys"
    assert keys.read_text() == AUTHORIZED_KEYS
    assert (mode(keys), mode(keys.parent)) == (0o600, 0o700)
    assert not list((fake_root / "etc/ssh").glob("ssh_host_*"))  # made at each boot instead
    units = fake_root / "etc/systemd/system"
    assert "ssh-keygen -q -t ed25519" in (units / "plasmaboot-ssh-hostkeys.service").read_text()
    assert "Requires=plasmaboot-ssh-hostkeys.service" in (units / "ssh.service").read_text()
    assert chroot_calls() == ["systemctl enable plasmaboot-ssh-hostkeys.service ssh.service"]


def test_configure_network_with_dhcp(fake_root: Path, chroot_calls: ChrootCalls) -> None:
    configure_network(make_context(fake_root, worker(network={"dhcp": True})))
    network = (fake_root / "etc/systemd/network/80-plasmaboot-dhcp.network").read_text()
    assert "[Match]\nType=ether\nKind=!*\n" in network and "DHCP=yes" in network
    wait_online = "etc/systemd/system/systemd-networkd-wait-online.service.d/plasmaboot.conf"
    assert "--any" in (fake_root / wait_online).read_text()
    assert chroot_calls() == ["systemctl enable systemd-networkd.service systemd-resolved.service"]


def test_dhcp_network_file_without_an_mtu_leaves_the_link_alone() -> None:
    assert render_dhcp_network(None) == (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        "[Match]\nType=ether\nKind=!*\n\n"
        "[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )


def test_dhcp_network_file_sets_the_profiles_mtu(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    expected = (
        "# plasmaboot: DHCP on every Ethernet NIC (not on bridges, bonds or veths)\n"
        "[Match]\nType=ether\nKind=!*\n\n"
        "[Link]\nMTUBytes=9000\n\n"
        "[Network]\nDHCP=yes\n\n"
        "[DHCPv4]\nClientIdentifier=mac\n"
    )
    assert render_dhcp_network(9000) == expected
    configure_network(make_context(fake_root, worker(network={"dhcp": True, "mtu": 9000})))
    assert (fake_root / "etc/systemd/network/80-plasmaboot-dhcp.network").read_text() == expected


def test_configure_network_without_dhcp_does_nothing(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    configure_network(make_context(fake_root, worker(network={"dhcp": False})))
    assert not (fake_root / "etc/systemd/network").exists()
    assert chroot_calls() == []


def test_configure_sysctl(fake_root: Path) -> None:
    configure_sysctl(make_context(fake_root, worker(sysctl={"vm.swappiness": 10, "a.b": "1 2"})))
    text = (fake_root / "etc/sysctl.d/90-plasmaboot.conf").read_text()
    assert text.splitlines() == ["# plasmaboot", "vm.swappiness = 10", "a.b = 1 2"]
    configure_sysctl(make_context(fake_root / "other", worker(sysctl={})))
    assert not (fake_root / "other/etc/sysctl.d").exists()


def test_configure_kernel_modules(fake_root: Path) -> None:
    configure_kernel_modules(make_context(fake_root, worker(kernel={"modules": ["kvm", "tun"]})))
    text = (fake_root / "etc/modules-load.d/plasmaboot.conf").read_text()
    assert text.splitlines() == ["# plasmaboot", "kvm", "tun"]
    configure_kernel_modules(make_context(fake_root / "other", worker(kernel={"modules": []})))
    assert not (fake_root / "other/etc/modules-load.d").exists()


def with_enabled(profile: Profile, name: str, **changes: Any) -> Profile:
    services = dict(profile.services)
    services[name] = services[name].model_copy(update={"enable": True, **changes})
    return profile.model_copy(update={"services": services})


def test_configure_services(fake_root: Path, chroot_calls: ChrootCalls) -> None:
    profile = with_enabled(worker(), "novanet", settings={"log": {"level": "debug"}})
    configure_services(make_context(fake_root, profile))
    for service in profile.services.values():
        sysusers = fake_root / f"usr/lib/sysusers.d/plasmaboot-{service.name}.conf"
        assert sysusers.read_text().startswith(f"u {service.user} - ")
        config = tomllib.loads((fake_root / service.config.lstrip("/")).read_text())
        assert config == {**service.ports, **service.settings}
        unit = fake_root / f"etc/systemd/system/{service.name}.service"
        assert unit.read_text() == render_unit(service)
    assert tomllib.loads((fake_root / "etc/novanet/config.toml").read_text())["log"] == {
        "level": "debug"
    }
    # only the enabled service is enabled; the others stay installed and off
    assert chroot_calls() == ["systemctl enable novanet.service"]


def test_configure_services_enables_nothing_by_default(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    configure_services(make_context(fake_root))
    assert (fake_root / "etc/systemd/system/plasmavmc.service").is_file()
    assert chroot_calls() == []


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
def test_resolved_listens_on_nothing_and_frees_port_53_for_a_dns_service(
    fake_root: Path, profile: Profile, stub_off: bool
) -> None:
    ctx = make_context(fake_root, profile)
    mask_unneeded_units(ctx)
    restore_build_replacements(ctx)
    dropins = fake_root / "etc/systemd/resolved.conf.d"
    text = "".join(p.read_text() for p in sorted(dropins.glob("*.conf")))
    settings = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    expected = ["LLMNR=no", "MulticastDNS=no", *(["DNSStubListener=no"] if stub_off else [])]
    assert settings == expected
    assert set(resolved_config(profile)) == {
        str(p.relative_to(fake_root)) for p in dropins.glob("*.conf")
    }
    # with the stub off, names resolve through the DHCP servers resolved lists
    listing = "resolv.conf" if stub_off else "stub-resolv.conf"
    assert os.readlink(fake_root / "etc/resolv.conf") == f"../run/systemd/resolve/{listing}"


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
# trim_*


def test_trim_documentation(fake_root: Path) -> None:
    trim_documentation(make_context(fake_root, worker(system={"documentation": False})))
    share = fake_root / "usr/share"
    assert not (share / "man").exists() and not (share / "info").exists()
    assert not (share / "doc-base").exists()
    assert sorted(p.name for p in (share / "locale").iterdir()) == ["en_GB", "locale.alias"]


def test_documentation_is_kept_when_the_profile_wants_it(fake_root: Path) -> None:
    trim_documentation(make_context(fake_root, worker(system={"documentation": True})))
    assert (fake_root / "usr/share/man/man1/ls.1.gz").is_file()
    assert (fake_root / "usr/share/locale/de/LC_MESSAGES/coreutils.mo").is_file()


def kept_modules(root: Path) -> list[str]:
    tree = root / "usr/lib/modules" / KERNEL_RELEASE / "kernel"
    return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())


def test_trim_kernel_modules(fake_root: Path, chroot_calls: ChrootCalls) -> None:
    profile = worker(
        kernel={
            "include_modules": ["drivers/*", "fs/*", "lib/*"],
            "exclude_modules": ["drivers/net/wireless/*"],
        }
    )
    trim_kernel_modules(make_context(fake_root, profile))
    assert kept_modules(fake_root) == [
        "drivers/block/loop.ko",
        "drivers/net/e1000/e1000.ko.xz",
        "fs/overlayfs/overlay.ko",
        "fs/squashfs/squashfs.ko",
        "lib/zstd/zstd_decompress.ko",
    ]
    tree = fake_root / "usr/lib/modules" / KERNEL_RELEASE / "kernel"
    assert not (tree / "sound").exists()  # emptied directories go too
    assert not (tree / "drivers/net/wireless").exists()
    assert chroot_calls() == [f"depmod -a {KERNEL_RELEASE}"]  # modules.dep made anew


def test_no_include_globs_keep_every_module_but_the_excluded(
    fake_root: Path, chroot_calls: ChrootCalls
) -> None:
    trim_kernel_modules(
        make_context(
            fake_root, worker(kernel={"include_modules": [], "exclude_modules": ["sound/*"]})
        )
    )
    assert len(kept_modules(fake_root)) == len(MODULES) - 1
    assert chroot_calls() == [f"depmod -a {KERNEL_RELEASE}"]


# --------------------------------------------------------------------------------------
# export_kernel and stage-1's modules


def test_stage1_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/overlayfs/overlay.ko:\n"
        "kernel/fs/squashfs/squashfs.ko: kernel/lib/zstd.ko\n"
        "kernel/lib/zstd.ko:\n"
        "kernel/drivers/net/e1000.ko:\n"
    )
    order = stage1_module_order(tmp_path)
    assert order == [
        "kernel/lib/zstd.ko",
        "kernel/fs/squashfs/squashfs.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ]


def test_export_kernel(fake_root: Path) -> None:
    ctx = make_context(fake_root)
    export_kernel(ctx)
    out = ctx.outputs.directory
    boot = fake_root / "boot"
    assert (out / "bzImage").read_bytes()[0x202:0x206] == b"HdrS"
    assert (out / "kernel_version").read_text().strip() == KERNEL_RELEASE
    assert (out / "stage1-modules.txt").read_text().split() == [
        "loop.ko",
        "zstd_decompress.ko",
        "squashfs.ko",
        "overlay.ko",
    ]
    assert sorted(p.name for p in (out / "stage1-modules").iterdir()) == [
        "loop.ko",
        "overlay.ko",
        "squashfs.ko",
        "zstd_decompress.ko",
    ]
    assert boot.is_dir() and not any(boot.iterdir())  # the kernel is not in the image twice


# --------------------------------------------------------------------------------------
# list_static_nodes: the chroot replaced by a stand-in for kmod that checks what it sees

IMAGE_KERNEL = "6.1.0-test-amd64"
KMOD_LIST = "c! /dev/fuse 0600 - - - 10:229\nd /dev/net 0755 - - -\n"


@dataclass
class FakeKmodContext(Context):
    """`kmod static-nodes` in the chroot: reads /lib/modules/$(uname -r), as kmod does."""

    writes: str | None = KMOD_LIST
    fails: bool = False
    seen_kernel_dir: Path | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def chroot(self, *argv: str) -> None:
        self.calls.append(argv)
        kernel_dir = self.root / "usr/lib/modules" / os.uname().release
        self.seen_kernel_dir = kernel_dir.resolve() if kernel_dir.exists() else None
        if self.fails:
            raise RuntimeError("kmod failed")
        if self.writes is not None:
            (self.root / STATIC_NODES).write_text(self.writes)


def kmod_context(root: Path, kernel: str = IMAGE_KERNEL, **kmod: Any) -> FakeKmodContext:
    (root / "usr/lib/modules" / kernel).mkdir(parents=True)
    base = make_context(root)
    return FakeKmodContext(root=root, plan=base.plan, log=Log(), outputs=base.outputs, **kmod)


def test_kmod_sees_the_image_kernel_under_the_host_name_then_the_name_is_given_back(
    tmp_path: Path,
) -> None:
    ctx = kmod_context(tmp_path)
    list_static_nodes(ctx)
    assert ctx.calls == [("kmod", "static-nodes", "--format=tmpfiles", f"--output=/{STATIC_NODES}")]
    assert ctx.seen_kernel_dir == (tmp_path / "usr/lib/modules" / IMAGE_KERNEL).resolve()
    assert sorted(p.name for p in (tmp_path / "usr/lib/modules").iterdir()) == [IMAGE_KERNEL]
    assert (tmp_path / STATIC_NODES).read_text() == KMOD_LIST
    unit = tmp_path / "etc/systemd/system/kmod-static-nodes.service"
    assert os.readlink(unit) == "/dev/null"


def test_an_image_kernel_named_like_the_host_is_used_as_it_is(tmp_path: Path) -> None:
    ctx = kmod_context(tmp_path, kernel=os.uname().release)
    list_static_nodes(ctx)
    kernel_dir = tmp_path / "usr/lib/modules" / os.uname().release
    assert ctx.seen_kernel_dir == kernel_dir.resolve()
    assert kernel_dir.is_dir() and not kernel_dir.is_symlink()  # not removed afterwards


def test_a_failing_kmod_leaves_no_borrowed_name_and_no_mask(tmp_path: Path) -> None:
    ctx = kmod_context(tmp_path, fails=True)
    with pytest.raises(RuntimeError, match="kmod failed"):
        list_static_nodes(ctx)
    assert sorted(p.name for p in (tmp_path / "usr/lib/modules").iterdir()) == [IMAGE_KERNEL]
    assert not (tmp_path / "etc/systemd/system/kmod-static-nodes.service").is_symlink()


@pytest.mark.parametrize("writes", [None, "# Device nodes to trigger on-demand loading\n"])
def test_an_empty_list_fails_the_build_and_keeps_the_unit(
    tmp_path: Path, writes: str | None
) -> None:
    """kmod only warns, and exits 0, when the kernel has no modules.devname."""
    ctx = kmod_context(tmp_path, writes=writes)
    with pytest.raises(RuntimeError, match=r"listed no device nodes .*modules\.devname"):
        list_static_nodes(ctx)
    assert not (tmp_path / "etc/systemd/system/kmod-static-nodes.service").is_symlink()


# --------------------------------------------------------------------------------------
# The whole hook, as mmdebstrap runs it, and its outputs read back by the backend's side


def test_the_hook_fills_the_contracts_outputs(fake_root: Path, chroot_calls: ChrootCalls) -> None:
    plan = HookPlan(profile=worker(), authorized_keys=AUTHORIZED_KEYS, squashfs_level=1)
    (fake_root / "tmp").mkdir()
    plan.write(fake_root / INSIDE_PLAN.lstrip("/"))
    assert hook.main([str(fake_root)]) == 0
    result = HookOutputs(fake_root / INSIDE_OUT.lstrip("/")).read()
    assert result.kernel_version == KERNEL_RELEASE
    assert result.packages == {"openssh-server": "1:9.2p1-2", "systemd": "252.30-1"}
    assert list(result.steps) == [step.__name__ for step in hook.STEPS]
    assert [p.name for p in result.stage1_modules][-1] == "overlay.ko"
    listing = subprocess.run(
        ["unsquashfs", "-l", str(result.root_squashfs)], check=True, capture_output=True, text=True
    ).stdout
    assert "squashfs-root/root/.ssh/authorized_keys" in listing
    assert "squashfs-root/tmp/" not in listing  # the plan and the outputs stay out
    assert "ssh_host_ed25519_key" not in listing
    assert f"depmod -a {KERNEL_RELEASE}" in chroot_calls()


def build_squashfs(root: Path, monkeypatch: pytest.MonkeyPatch, epoch: int) -> bytes:
    """Run the whole hook on `root` with this build date; the root squashfs it made."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
    plan = HookPlan(profile=worker(), authorized_keys=AUTHORIZED_KEYS, squashfs_level=1)
    (root / "tmp").mkdir(exist_ok=True)
    plan.write(root / INSIDE_PLAN.lstrip("/"))
    assert hook.main([str(root)]) == 0
    return HookOutputs(root / INSIDE_OUT.lstrip("/")).read().root_squashfs.read_bytes()


def test_the_same_tree_gives_the_same_squashfs_whenever_it_is_built(
    fake_root: Path, tmp_path: Path, chroot_calls: ChrootCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files made at different times (the build's clock) give the same bytes: every time
    in the image is the build's date, and so are the update stamps' contents."""
    epoch = 1_796_005_301
    other, later = tmp_path / "other-root", tmp_path / "later-root"
    shutil.copytree(fake_root, other, symlinks=True)
    shutil.copytree(fake_root, later, symlinks=True)
    for path in [other, *other.rglob("*")]:
        os.utime(path, (epoch + 12345, epoch + 12345), follow_symlinks=False)
    first = build_squashfs(fake_root, monkeypatch, epoch)
    assert build_squashfs(other, monkeypatch, epoch) == first
    assert build_squashfs(later, monkeypatch, epoch + 1) != first  # the date is in it
    image = tmp_path / "first.squashfs"
    image.write_bytes(first)
    listing = subprocess.run(
        ["unsquashfs", "-lls", "-UTC", str(image)], check=True, capture_output=True, text=True
    ).stdout
    dates = {" ".join(line.split()[3:5]) for line in listing.splitlines() if line.strip()}
    assert dates == {"2026-11-30 02:21"}
    superblock = subprocess.run(
        ["unsquashfs", "-s", "-UTC", str(image)], check=True, capture_output=True, text=True
    ).stdout
    assert "Mon Nov 30 02:21:41 2026" in superblock
    # the update stamps: at the build's date, /usr a second before, as the stamps say
    assert (fake_root / "usr").stat().st_mtime == epoch - 1
    for stamp in hook.UPDATE_STAMPS:
        assert (fake_root / stamp).stat().st_mtime == epoch
        assert f"TIMESTAMP_NSEC={(epoch - 1) * 10**9}" in (fake_root / stamp).read_text()
