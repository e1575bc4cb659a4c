"""install.debian + install.flow against a scripted node: the steps in order, refusals
before any write, secrets only on stdin, the report on success and failure."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import signal
import stat
import subprocess
import tarfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from plasmaboot.errors import PlasmabootError, UserError, WorkError
from plasmaboot.install import debian
from plasmaboot.install.debian import SEPARATOR, Install, prebuilt_fits
from plasmaboot.install.flow import Report, check_services, install_to_disk
from plasmaboot.install.layout import Layout, load_layout
from plasmaboot.install.packages import Deb
from plasmaboot.install.secrets import list_secrets
from plasmaboot.log import Log

GIB = 1 << 30
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHGx6xYXuF9m3bV0zLxWcB0l5pYxR3ZkqQ2m1K5sH2pQ"


@dataclass
class FakeNode:
    """A node that answers the install's scripts from a table of substrings."""

    host: str = "10.0.0.5"
    disk_children: list[dict[str, object]] = field(default_factory=list)
    size: int = 4 * GIB
    calls: list[tuple[str, bytes | None]] = field(default_factory=list)
    secrets_owner: str = "iam"

    def sh(self, script: str, input: bytes | None = None, timeout: float = 0) -> str:
        self.calls.append((script, input))
        if "readlink -f" in script:
            disks = json.dumps({"blockdevices": [{"path": "/dev/vda", "type": "disk"}]})
            return f"/dev/vda\n{SEPARATOR}\n{disks}"
        if "lsblk --json --bytes" in script:
            disk = {"path": "/dev/vda", "size": self.size, "type": "disk", "mountpoint": None}
            tree = json.dumps({"blockdevices": [{**disk, "children": self.disk_children}]})
            return f"{tree}\n{SEPARATOR}\n"
        if script == "uname -r":
            return "6.1.0-28-amd64\n"
        if "blkid" in script:  # `for d in DEV...; do echo "$d $(blkid ...)"`
            devices = script.removeprefix("for d in ").split(";", 1)[0].split()
            known = {"/dev/vda2": "AB12-CD34", "/dev/vda3": "1111-2222"}
            return "".join(f"{d} {known.get(d, f'{i:04X}-UUID')}\n" for i, d in enumerate(devices))
        if "ssh-keygen" in script:
            return f"{KEY} \n{KEY} \n"
        if script.startswith("for u in"):
            return "chainfire.service\niam.service\nflaredb.service\n"
        if script.startswith("stat -c"):
            paths = shlex.split(script)[3:]
            return "".join(
                f"{self.secrets_owner if '/etc/iam/' in p else 'root'} 600 {p}\n" for p in paths
            )
        if script.startswith("systemctl is-active"):
            return "active\n"
        return ""

    def scripts(self) -> str:
        return "\n".join(script for script, _ in self.calls)


def job(tmp_path: Path, **changes: object) -> Install:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    secrets = tmp_path / "secrets" / "cp1"
    (secrets / "etc/iam").mkdir(parents=True)
    (secrets / "etc/iam/token").write_text("TOPSECRET-iam-token")
    values: dict[str, object] = {
        "machine": "cp1",
        "hostname": "cp1",
        "layout": load_layout(Path("layouts/default.toml")),
        "kernel": kernel,
        "debs": [],
        "services": ("iam",),
        "secrets": list_secrets(secrets),
        "ipv4": "10.0.0.5/24",
        "macs": ("52:54:00:12:34:01",),
        **changes,
    }
    return Install(**values)  # type: ignore[arg-type]


def prebuilt_job(
    tmp_path: Path, data: bytes = b"prebuilt", version: str = "6.1.0-28-amd64", **changes: object
) -> Install:
    """A job whose set has an installed-initrd holding `data`, made for kernel `version`."""
    initrd = tmp_path / "installed-initrd"
    initrd.write_bytes(data)
    return job(tmp_path, prebuilt_initrd=initrd, prebuilt_initrd_version=version, **changes)


def run_install(tmp_path: Path, node: FakeNode, install: Install) -> Report:
    report = Report("cp1", node.host)
    with Log(tmp_path / "install.log") as log, contextlib.suppress(PlasmabootError):
        install_to_disk(install, node, report, log)
    return report


def test_an_install_runs_every_step_in_order(tmp_path: Path) -> None:
    node = FakeNode()
    install = job(tmp_path)
    report = run_install(tmp_path, node, install)
    assert report.ok is False and report.failed_step is None  # ok is the caller's, after boot
    assert list(report.steps) == [
        "release", "inspect", "disks", "system", "configure", "boot", "services", "secrets",
        "initramfs", "finish",
    ]  # fmt: skip
    scripts = node.scripts()
    assert scripts.index("sgdisk --zap-all /dev/vda") < scripts.index("mkfs.ext4")
    assert scripts.index("cp -a /run/plasmaboot-install/lower/root/.") < scripts.index(
        "grub-install"
    )
    assert "grub-install --target=i386-pc /dev/vda" in scripts
    restore = scripts.index(
        "dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs"
    )
    assert restore < scripts.index("update-initramfs -c -k")
    assert "MODULES=most" in scripts  # the fallback
    assert (
        "--target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram /dev/vda" in scripts
    )
    assert (
        "systemctl --root=/mnt/plasmaboot disable --quiet chainfire.service flaredb.service"
        in scripts
    )
    assert "systemctl --root=/mnt/plasmaboot enable --quiet iam.service" in scripts
    assert install.host_keys == [KEY, KEY]
    assert report.data["plan"]["partitions"][2]["device"] == "/dev/vda3"
    assert report.data["secrets"] == [{"path": "/etc/iam/token", "owner": "iam", "mode": "0600"}]


def test_files_go_over_stdin_and_secrets_never_on_a_command_line(tmp_path: Path) -> None:
    node = FakeNode()
    run_install(tmp_path, node, job(tmp_path))
    assert "TOPSECRET" not in node.scripts()
    assert "TOPSECRET" not in (tmp_path / "install.log").read_text()
    landed = files_sent(node)
    assert landed["etc/iam/token"] == (b"TOPSECRET-iam-token", 0o600, "iam")
    assert b"UUID=1111-2222\t/\text4" in landed["etc/fstab"][0]
    network = landed["etc/systemd/network/05-plasmaboot-static.network"][0]
    assert b"MACAddress=52:54:00:12:34:01" in network and b"Address=10.0.0.5/24" in network
    assert landed["etc/hostname"] == (b"cp1\n", 0o644, "root")
    assert landed["etc/machine-id"][1] == 0o444


def files_sent(node: FakeNode) -> dict[str, tuple[bytes, int, str]]:
    """Every file unpacked on the target from a tar stream: path -> (bytes, mode, owner)."""
    found: dict[str, tuple[bytes, int, str]] = {}
    for script, data in node.calls:
        if data is None or not script.startswith("tar -x") or "/mnt/plasmaboot" not in script:
            continue
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                extracted = archive.extractfile(member)
                assert extracted is not None
                found[member.name] = (extracted.read(), member.mode, member.uname)
    return found


def test_a_disk_that_is_not_empty_is_refused_before_any_write(tmp_path: Path) -> None:
    part = {"path": "/dev/vda1", "size": GIB, "type": "part", "mountpoint": None}
    node = FakeNode(disk_children=[part])
    report = run_install(tmp_path, node, job(tmp_path))
    assert report.failed_step == "inspect" and report.error is not None
    assert "/dev/vda is not empty" in report.error and "--wipe" in str(report.hint)
    assert "sgdisk" not in node.scripts() and "wipefs --all" not in node.scripts()


def test_with_wipe_the_old_partitions_are_erased_first(tmp_path: Path) -> None:
    part = {"path": "/dev/vda1", "size": GIB, "type": "part", "mountpoint": None}
    node = FakeNode(disk_children=[part])
    report = run_install(tmp_path, node, job(tmp_path, wipe=True))
    assert report.failed_step is None
    scripts = node.scripts()
    assert scripts.index("wipefs --all --force /dev/vda1") < scripts.index("sgdisk --zap-all")


def test_a_disk_too_small_fails_at_inspect_with_the_sizes(tmp_path: Path) -> None:
    node = FakeNode(size=256 << 20)
    report = run_install(tmp_path, node, job(tmp_path))
    assert report.failed_step == "inspect"
    assert report.error == (
        "disks[0]: /dev/vda is too small for the layout: it has 256MiB, "
        "the layout needs at least 579MiB"
    )
    assert "sgdisk" not in node.scripts()


def test_a_secret_that_landed_with_the_wrong_owner_fails_the_install(tmp_path: Path) -> None:
    node = FakeNode(secrets_owner="root")
    report = run_install(tmp_path, node, job(tmp_path))
    assert report.failed_step == "secrets"
    assert "landed as root 600, expected iam 600" in str(report.error)


ROOT_KEY = b"K" * 16 + b"-luks-root-key-bytes-0123456789"  # 47 bytes


def luks_job(tmp_path: Path, layout_name: str) -> Install:
    install = job(tmp_path, layout=load_layout(Path(f"layouts/{layout_name}.toml")))
    key = tmp_path / "secrets/cp1/etc/plasmaboot/luks/root.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(ROOT_KEY)
    install.secrets = list_secrets(tmp_path / "secrets/cp1")
    install.luks_keys = [(p, s) for p, s in install.secrets if p == key]
    return install


def stdin_files(data: bytes) -> dict[str, tuple[bytes, int]]:
    """The files of a tar stream on stdin ({} for other data: the kernel, the .debs)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            return {
                m.name: (archive.extractfile(m).read(), m.mode)  # type: ignore[union-attr]
                for m in archive.getmembers()
                if m.isfile()
            }
    except tarfile.ReadError:
        return {}


def test_an_encrypted_root_is_opened_by_the_initramfs_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = FakeNode(size=64 * GIB)
    install = luks_job(tmp_path, "lvm-luks")
    # the packages' files (cryptsetup-initramfs among them), unpacked as one tar stream
    install.debs = [Deb(tmp_path / "c.deb", "cryptsetup-initramfs", (), ())]
    monkeypatch.setattr(debian, "unpacked_debs", lambda debs: b"debs")
    report = run_install(tmp_path, node, install)
    assert report.failed_step is None, report.error
    scripts = node.scripts()
    assert ROOT_KEY.decode() not in scripts  # keys travel on stdin only
    disks = next(script for script, _ in node.calls if "luksFormat" in script)
    keys = "/run/plasmaboot-install/keys"
    assert f"trap 'rm -rf {keys}' EXIT" in disks  # gone from the node's RAM however it ends
    assert f"--key-file={keys}/etc/plasmaboot/luks/root.key /dev/vda4" in disks
    assert "--pbkdf pbkdf2 --pbkdf-force-iterations 1000" in disks
    assert disks.index("tar -x") < disks.index("luksFormat") < disks.index("pvcreate")
    uploads = [stdin_files(data) for script, data in node.calls if data and "tar -x" in script]
    assert uploads[0] == {"etc/plasmaboot/luks/root.key": (ROOT_KEY, 0o600)}  # the disks step
    written = {k: v for files in uploads for k, v in files.items()}
    crypttab = written["etc/crypttab"][0].decode()
    assert crypttab.split("\t")[0] == "cryptlvm" and crypttab.rstrip().endswith(
        "/etc/plasmaboot/luks/root.key\tluks,initramfs"
    )
    assert written["etc/crypttab"][1] == 0o600
    assert b"KEYFILE_PATTERN='/*'" in written["etc/cryptsetup-initramfs/conf-hook"][0]
    assert b"UMASK=0077" in written["etc/initramfs-tools/conf.d/plasmaboot.conf"][0]
    # the hook's configuration is written after the packages' files (cryptsetup-initramfs
    # ships its own conf-hook, which would win), and the key is on the installed root,
    # both before the initramfs that copies the key is made
    unpacked = next(
        i for i, (script, _) in enumerate(node.calls) if "--keep-directory-symlink" in script
    )
    conf_hook = next(
        i
        for i, (script, data) in enumerate(node.calls)
        if data and "etc/cryptsetup-initramfs/conf-hook" in stdin_files(data)
    )
    assert unpacked < conf_hook
    key_on_root = next(
        i
        for i, (script, data) in enumerate(node.calls)
        if data
        and script.startswith("tar -x --no-overwrite-dir")
        and "etc/plasmaboot/luks/root.key" in stdin_files(data)
    )
    initramfs = next(
        i for i, (script, _) in enumerate(node.calls) if "update-initramfs -c" in script
    )
    assert key_on_root < initramfs and conf_hook < initramfs


@pytest.mark.parametrize("signal_name", ["HUP", "PIPE", "TERM"])
def test_the_keys_are_removed_when_the_disks_script_is_killed(
    tmp_path: Path, signal_name: str
) -> None:
    """A lost SSH connection ends the script by a signal, which skips a bare EXIT trap."""
    keys = tmp_path / "keys"
    script = debian.with_keys(str(keys), f"touch {tmp_path}/ran\nkill -{signal_name} $$\nsleep 5")
    proc = subprocess.run(
        ["sh", "-euc", script], input=keys_tar(), timeout=10, preexec_fn=default_signals
    )
    assert (tmp_path / "ran").exists() and proc.returncode != 0
    assert not keys.exists()
    node = FakeNode()  # a re-run removes what a killed one left (SIGKILL skips every trap)
    debian.release_previous(job(tmp_path), node)
    assert "rm -rf /run/plasmaboot-install/keys" in node.scripts()


def default_signals() -> None:
    """A shell cannot trap a signal ignored when it starts: under `nohup` (HUP) or as a
    background job (INT) the test would fail for its runner's sake, not the script's. On
    a node, sshd starts the script with every signal at its default."""
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def keys_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("root.key")
        info.size, info.mode = len(ROOT_KEY), 0o600
        archive.addfile(info, io.BytesIO(ROOT_KEY))
    return buffer.getvalue()


def test_the_keys_are_private_but_the_mount_points_are_not(tmp_path: Path) -> None:
    """umask 077 guards the keys only: a mount point's parent the image lacks (/data of
    /data/db) stays on the installed root, and must not be 0700 there."""
    keys, mounts = tmp_path / "keys", tmp_path / "target/data/db"
    script = debian.with_keys(
        str(keys), f"stat -c '%a' {keys} {keys}/root.key > {tmp_path}/modes\nmkdir -p {mounts}"
    )
    subprocess.run(["sh", "-euc", script], input=keys_tar(), timeout=10, check=True)
    assert (tmp_path / "modes").read_text().split() == ["700", "600"]
    assert stat.S_IMODE((tmp_path / "target/data").stat().st_mode) == 0o755
    assert not keys.exists()


def data_on_luks(tmp_path: Path) -> Layout:
    """The default layout with a LUKS2 data partition at /var/lib/data after its root."""
    layout = tmp_path / "data.toml"
    layout.write_text(
        Path("layouts/default.toml").read_text().replace('size = "rest"', 'size = "2G"')
        + '\n[[disks.partitions]]\ntype = "linux"\nsize = "rest"\nfilesystem = "ext4"\n'
        'mount = "/var/lib/data"\nluks = { name = "data", key = "etc/plasmaboot/luks/root.key" }\n'
    )
    return load_layout(layout)


def test_an_encrypted_data_partition_is_opened_by_systemd_not_the_initramfs(tmp_path: Path) -> None:
    install = luks_job(tmp_path, "default")
    install.layout = data_on_luks(tmp_path)
    node = FakeNode()
    report = run_install(tmp_path, node, install)
    assert report.failed_step is None, report.error
    written = {
        k: v
        for script, data in node.calls
        if data and "tar -x" in script
        for k, v in stdin_files(data).items()
    }
    assert written["etc/crypttab"][0].decode().rstrip().endswith("root.key\tluks")
    assert "etc/cryptsetup-initramfs/conf-hook" not in written
    assert b"UMASK" not in written["etc/initramfs-tools/conf.d/plasmaboot.conf"][0]
    fstab = written["etc/fstab"][0].decode()
    assert "/var/lib/data\text4" in fstab


def test_services_are_checked_active(tmp_path: Path) -> None:
    assert check_services(FakeNode(), ("iam",)) == {"iam": "active"}

    class Failed(FakeNode):
        def sh(self, script: str, input: bytes | None = None, timeout: float = 0) -> str:
            return "failed\n"

    with pytest.raises(WorkError, match="not active on the installed system: iam: failed"):
        check_services(Failed(), ("iam",), timeout=0)


def test_the_report_is_json_with_the_failure(tmp_path: Path) -> None:
    report = Report("cp1", "10.0.0.5", failed_step="inspect", error="x", hint="y")
    report.write(tmp_path / "r" / "install-cp1.json")
    data = json.loads((tmp_path / "r" / "install-cp1.json").read_text())
    assert data["failed_step"] == "inspect" and data["ok"] is False and data["hint"] == "y"
    assert UserError  # the refusals above are UserErrors (exit 2)


def test_disk_tools_the_node_lacks_are_installed_in_its_ram_first(tmp_path: Path) -> None:
    deb = tmp_path / "dosfstools_4.2-1_amd64.deb"
    deb.write_bytes(b"deb")
    node = FakeNode()
    tools = [Deb(deb, "dosfstools", (), ())]
    run_install(tmp_path, node, job(tmp_path, node_debs=tools))
    scripts = node.scripts()
    install_line = "dpkg -i /run/plasmaboot-install/debs/dosfstools_4.2-1_amd64.deb"
    assert scripts.index(install_line) < scripts.index("sgdisk --zap-all")
    assert "chroot" not in scripts[: scripts.index(install_line)]


def test_grub_cfg_is_written_from_what_the_install_knows(tmp_path: Path) -> None:
    """No grub-mkconfig (its probing took minutes under TCG): the entry names the kernel the
    node runs, the root by the UUID blkid read, the console line; GRUB's files come as one
    tar stream unpacked on the operator's side, no dpkg run on the node."""
    node = FakeNode()
    grub = Deb(tmp_path / "grub-common_2.06_amd64.deb", "grub-common", (), ())
    install = job(tmp_path, debs=[grub])
    unpacked = io.BytesIO()
    with tarfile.open(fileobj=unpacked, mode="w") as archive:
        info = tarfile.TarInfo("./usr/sbin/grub-install")
        archive.addfile(info, io.BytesIO(b""))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("plasmaboot.install.debian.unpacked_debs", lambda debs: unpacked.getvalue())
        report = run_install(tmp_path, node, install)
    assert report.failed_step is None, report.error
    scripts = node.scripts()
    assert "grub-mkconfig" not in scripts and "dpkg -i" not in scripts
    # uploaded to the node's RAM beside the copy, unpacked over the copied system after it
    uploaded = [script for script, data in node.calls if data == unpacked.getvalue()]
    assert uploaded == ["cat > /run/plasmaboot-install/grub-files.tar"]
    unpack = scripts.index(
        "tar -x -i --keep-directory-symlink --no-overwrite-dir --same-owner --same-permissions"
        " -C /mnt/plasmaboot -f /run/plasmaboot-install/grub-files.tar"
    )
    assert scripts.index("cp -a /run/plasmaboot-install/lower/root/.") < unpack
    assert unpack < scripts.index('exec chroot "$0" "$@"\n\' /mnt/plasmaboot sh -euc \'ldconfig')
    cfg, mode, _ = files_sent(node)["boot/grub/grub.cfg"]
    assert mode == 0o444
    text = cfg.decode()
    assert "insmod part_gpt\ninsmod ext2\nsearch --no-floppy --fs-uuid --set=root 1111-2222\n" in (
        text
    )
    assert (
        "\tlinux /boot/vmlinuz-6.1.0-28-amd64 root=UUID=1111-2222 ro "
        "console=ttyS0,115200 console=tty0\n\tinitrd /boot/initrd.img-6.1.0-28-amd64\n"
    ) in text
    assert set(report.data["parts"]) == {
        "partitions and filesystems", "copy", "kernel upload", "grub files upload",
        "boot files", "grub-install",
    }  # fmt: skip
    # the initramfs runs in the background from `boot` and is waited for before unmounting
    started = scripts.index("setsid sh -c")
    waited = scripts.index("while [ ! -e /run/plasmaboot-install/initramfs.rc ]")
    assert started < scripts.index("grub-install") < waited < scripts.index("sync\numount -R")


def test_the_sets_prebuilt_initramfs_is_pushed_and_none_is_made_on_the_node(
    tmp_path: Path,
) -> None:
    """The set's installed-initrd, made at build time for the kernel the node runs, lands as
    /boot/initrd.img-<version> on stdin; no update-initramfs starts and nothing is waited
    for. The real update-initramfs still comes back for the installed system's updates."""
    node = FakeNode()
    install = prebuilt_job(tmp_path, b"\x1f\x8bprebuilt")
    report = run_install(tmp_path, node, install)
    assert report.failed_step is None, report.error
    pushed = [
        (script, data) for script, data in node.calls if "boot/initrd.img-6.1.0-28-amd64" in script
    ]
    # to the node's RAM beside the copy, then moved to the disk's /boot with the kernel
    staged = "/run/plasmaboot-install/boot"
    assert pushed == [(f"cat > {staged}/initrd.img-6.1.0-28-amd64", b"\x1f\x8bprebuilt")]
    scripts = node.scripts()
    assert f"mv {staged}/* /mnt/plasmaboot/boot/" in scripts
    assert "update-initramfs -c" not in scripts and "initramfs.rc" not in scripts
    assert "dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs" in scripts
    assert install.initramfs_on_node is False
    assert "initramfs upload" in report.data["parts"]
    assert "initramfs" in report.steps  # the step stays in the report, with nothing to wait for


@pytest.mark.parametrize(
    ("version", "layout"),
    [
        ("6.1.0-27-amd64", "layouts/default.toml"),  # the node booted another kernel
        ("", "layouts/default.toml"),  # the set's manifest named none
    ],
)
def test_a_prebuilt_initramfs_for_another_kernel_is_not_used(
    tmp_path: Path, version: str, layout: str
) -> None:
    node = FakeNode()
    install = prebuilt_job(tmp_path, version=version, layout=load_layout(Path(layout)))
    report = run_install(tmp_path, node, install)
    assert report.failed_step is None, report.error
    assert all(data != b"prebuilt" for _, data in node.calls)
    assert "update-initramfs -c -k" in node.scripts() and install.initramfs_on_node


def test_an_encrypted_root_never_takes_the_prebuilt_initramfs(tmp_path: Path) -> None:
    """A LUKS root needs cryptsetup, a crypttab and its key in its initramfs: the node
    makes it. A LUKS data partition is systemd's: the prebuilt one boots it."""
    plain = prebuilt_job(tmp_path)
    plain.kernel_version = "6.1.0-28-amd64"
    assert prebuilt_fits(plain)
    assert not prebuilt_fits(replace(plain, layout=load_layout(Path("layouts/lvm-luks.toml"))))
    assert prebuilt_fits(replace(plain, layout=data_on_luks(tmp_path)))
    plain.prebuilt_initrd = None
    assert not prebuilt_fits(plain)


def test_chroot_commands_bind_the_nodes_trees_in_a_namespace_of_their_own(tmp_path: Path) -> None:
    """The second install with --wipe on a node failed at `disks` ("/dev/vda3 apparently in
    use by the system"): /dev, /proc, /sys and /run bound under the target in the node's
    mount namespace were copied into its sandboxed services' namespaces (udevd, logind,
    networkd, resolved), where the node's `umount -R` never reached them, and those held
    the root filesystem. Now nothing is bound under the target in the node's namespace:
    every command in the installed root binds them in a private namespace of its own."""
    node = FakeNode()
    install = prebuilt_job(tmp_path)
    report = run_install(tmp_path, node, install)
    assert report.failed_step is None, report.error
    prefix = shlex.join(
        ["unshare", "--mount", "--propagation", "private", "sh", "-euc", debian.CHROOT,
         "/mnt/plasmaboot"]
    )  # fmt: skip
    chrooted = 0
    for script, _ in node.calls:
        # every chroot is the one in CHROOT, in a namespace of its own
        assert script.count("chroot") == script.count(prefix)
        chrooted += script.count(prefix)
        assert "--make-rslave" not in script
        assert "mount --rbind" not in script.replace(debian.CHROOT, "")
    assert chrooted == 3  # update-initramfs's restore, grub-install BIOS and UEFI
    # update-initramfs on the node (no prebuilt one) runs in one too
    job_text = shlex.split(debian.start_initramfs("6.1.0-28-amd64").split("setsid sh -c ")[1])[0]
    assert prefix in job_text


def test_bios_and_uefi_grub_install_run_at_once_with_grubenv_made_first(tmp_path: Path) -> None:
    node = FakeNode()
    run_install(tmp_path, node, job(tmp_path))
    [together] = [script for script, _ in node.calls if "grub-install" in script]
    assert together.count(" & pids=") == 2
    assert together.index("--target=i386-pc") < together.index("--target=x86_64-efi")
    grubenv, mode, _ = files_sent(node)["boot/grub/grubenv"]
    assert len(grubenv) == 1024 and grubenv.startswith(b"# GRUB Environment Block\n#")
    assert mode == 0o644
    sent = [script for script, data in node.calls if data and b"grubenv" in data]
    assert node.scripts().index(sent[0]) < node.scripts().index(together)


def test_the_kernel_is_uploaded_beside_the_copy_on_another_channel(tmp_path: Path) -> None:
    """The uploads run while the copy does: the copy's command is still running when the
    kernel arrives (a node that blocks the copy until the kernel is uploaded would hang
    were they in sequence)."""
    node = BlockingCopyNode()
    install = job(tmp_path)
    report = run_install(tmp_path, node, install)
    assert report.failed_step is None, report.error
    assert node.kernel_during_copy
    assert {"copy", "kernel upload"} <= set(report.data["parts"])


@dataclass
class BlockingCopyNode(FakeNode):
    kernel_during_copy: bool = False

    def __post_init__(self) -> None:
        self.kernel = threading.Event()

    def sh(self, script: str, input: bytes | None = None, timeout: float = 0) -> str:
        if script.startswith("cat > /run/plasmaboot-install/boot/vmlinuz-"):
            self.kernel.set()
        if "cp -a --parents" in script:
            self.kernel_during_copy = self.kernel.wait(timeout=10)
        return super().sh(script, input, timeout)
