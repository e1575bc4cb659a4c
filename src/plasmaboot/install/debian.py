"""Installing a netbooted Debian node to its disk, over SSH, as a list of steps:

    inspect   find the layout's disks, read what is on them, refuse a disk in use or not
              empty (without --wipe) and one too small, before anything is written
    disks     wipe (--wipe), partition, LVM, mkfs, mount under /mnt/plasmaboot
    system    copy the image the node booted: its read-only layers but the per-node one, not
              its tmpfs changes
    configure fstab by UUID, host name, network (DHCP or the inventory's address), a fresh
              machine-id, the installed system's own SSH host keys (made on the node)
    boot      the set's kernel, GRUB (BIOS and UEFI, from .debs uploaded from the operator's
              deb cache), the initramfs
    services  every catalog service disabled but the machine's `services`
    secrets   the machine's secrets tree, as it is, 0600, root's or the service user's
    finish    unmount; the caller reboots and waits for the installed system

Every step is a small function over an `Install` (what was decided) and a `Remote` (the
node). Re-running after a failure starts again from the top (the disk is re-partitioned:
pass --wipe, the disk then holds the failed run's partitions).
"""

from __future__ import annotations

import io
import shlex
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from plasmaboot.catalog import load_catalog
from plasmaboot.errors import UserError, WorkError
from plasmaboot.install.layout import Layout
from plasmaboot.install.packages import Deb
from plasmaboot.install.plan import (
    TARGET,
    Disk,
    Plan,
    check_disk_free,
    make_plan,
    match_disk,
    read_disk_state,
    wipe_commands,
)
from plasmaboot.install.remote import Remote
from plasmaboot.install.secrets import Secret, secrets_tar
from plasmaboot.serve import nodelayer

WORK = "/run/plasmaboot-install"  # on the node's tmpfs: gone at reboot
LOWER = f"{WORK}/lower"
HOST_KEY_TYPES = ("ed25519", "ecdsa")
STATIC_NETWORK = "etc/systemd/network/05-plasmaboot-static.network"
RESTORE_UPDATE_INITRAMFS = """\
if [ -e /usr/sbin/update-initramfs.distrib ]; then
    rm -f /usr/sbin/update-initramfs
    dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
fi
"""
# The initramfs for this machine's hardware (the install runs on it): MODULES=most copies
# every module, thousands of forks that took over ten minutes under TCG; gzip at level 1.
# Should `dep` not find the root device, `most` is the fallback.
INITRAMFS_CONF = "etc/initramfs-tools/conf.d/plasmaboot.conf"
FAST_INITRAMFS = "# written by plasmaboot install\nMODULES=dep\nCOMPRESSLEVEL=1\n"
MAKE_INITRAMFS = f"""\
update-initramfs -c -k "$1" && exit 0
echo "plasmaboot: MODULES=dep failed; building the initramfs with MODULES=most"
sed -i 's/^MODULES=dep$/MODULES=most/' /{INITRAMFS_CONF}
rm -f "/boot/initrd.img-$1"
update-initramfs -c -k "$1"
"""
GRUB_DEFAULTS = """\
# written by plasmaboot install
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="{cmdline}"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"""


@dataclass
class Install:
    """What one install decided (inputs) and found (filled in by the steps)."""

    machine: str
    hostname: str
    layout: Layout
    kernel: Path  # the set's bzImage: the kernel the node booted
    debs: list[Deb]  # what GRUB needs beyond the node's packages (packages.closure)
    services: tuple[str, ...]
    secrets: list[tuple[Path, Secret]]
    node_debs: list[Deb] = field(default_factory=list)  # disk tools the node lacks
    kernel_config: bytes = b""  # /boot/config-<version>, from the kernel's .deb
    ipv4: str | None = None  # "10.20.0.11/24": a static address, else DHCP
    macs: tuple[str, ...] = ()
    wipe: bool = False
    kernel_cmdline: str = "console=ttyS0,115200 console=tty0"
    # found on the node
    plan: Plan | None = None
    kernel_version: str = ""
    host_keys: list[str] = field(default_factory=list)


def q(*argv: str) -> str:
    return shlex.join(argv)


def in_target(*argv: str) -> str:
    return q("chroot", TARGET, *argv)


# A run whose SSH connection was lost leaves its command running on the node (sshd does not
# notice a vanished client): every process rooted in, working in or holding a file under
# our target or our view of the layers is one of ours, and is ended before the umounts.
def kill_previous(target: str = TARGET, lower: str = LOWER) -> str:
    """The script that ends every process holding `target` or `lower` (see above): one
    `find` over /proc's links (a fork per link took most of a minute under TCG)."""
    return f"""\
pids=$(find /proc/[0-9]*/root /proc/[0-9]*/cwd /proc/[0-9]*/fd -maxdepth 1 \\
    \\( -lname {target} -o -lname '{target}/*' -o -lname '{lower}/*' \\) 2>/dev/null \\
    | cut -d/ -f3 | sort -u | grep -vx "$$" || true)
if [ -n "$pids" ]; then
    echo "ended what a previous run left running:" $pids
    kill -9 $pids 2>/dev/null || true
    sleep 1
fi
"""


def release_previous(install: Install, remote: Remote) -> None:
    """Undo what a failed run left mounted or open (our own mounts and names only), so a
    re-run can inspect and wipe the disk."""
    script = [
        # only when a previous run left something mounted (a fresh node has nothing to end)
        f"if mountpoint -q {TARGET} || mountpoint -q {LOWER}/root; then\n{kill_previous()}fi",
        f"if mountpoint -q {TARGET}; then umount -R {TARGET}; fi",
        f"if mountpoint -q {LOWER}/root; then umount -R {LOWER}/root; fi",
    ]
    for group in install.layout.volume_groups:
        script.append(f"vgchange -an {shlex.quote(group.name)} >/dev/null 2>&1 || true")
    for disk in install.layout.disks:
        for part in disk.partitions:
            if part.luks:
                script.append(f"cryptsetup close {shlex.quote(part.luks.name)} 2>/dev/null || true")
    remote.sh("\n".join(script))


SEPARATOR = "@@plasmaboot@@"


def inspect(install: Install, remote: Remote) -> None:
    """The layout's disks on the node, their state and size: refusals come here, before any
    write. The kernel the node runs is the one installed. Two SSH round trips per disk."""
    disks: list[Disk] = []
    for index, spec in enumerate(install.layout.disks):
        # the match is a path or a glob of safe characters (the layout model's pattern): the
        # shell expands it, readlink names the disk behind each link
        found, listing = remote.sh(
            f'for f in {spec.match}; do [ -e "$f" ] && readlink -f "$f"; done; echo {SEPARATOR}\n'
            "lsblk --json --nodeps -o PATH,TYPE"
        ).split(SEPARATOR)
        device = match_disk(spec.match, found, listing, f"layout: disks[{index}]")
        lsblk, wipefs = remote.sh(
            q("lsblk", "--json", "--bytes", "-o", "PATH,SIZE,TYPE,MOUNTPOINT", device)
            + f"\necho {SEPARATOR}\n"
            + q("wipefs", "--no-act", "--json", device)
        ).split(SEPARATOR)
        state = read_disk_state(lsblk, wipefs)
        check_disk_free(state, install.wipe)
        if install.wipe and (state.partitions or state.signatures):
            remote.sh("\n".join(q(*argv) for argv in wipe_commands(state)))
        disks.append(Disk(device, state.size))
    install.plan = make_plan(install.layout, disks)
    install.kernel_version = remote.sh("uname -r").strip()


def make_disks(install: Install, remote: Remote) -> None:
    assert install.plan is not None
    if install.layout.luks_keys():
        raise UserError(
            "the Debian installer does not encrypt yet (its initramfs has no cryptsetup)",
            hint="use a layout without luks, or the Nix backend (nixos-anywhere + disko)",
        )
    if install.node_debs:  # into the node's RAM overlay: gone at reboot
        remote.sh(f"mkdir -p {WORK}/debs\ntar -x -C {WORK}/debs", input=debs_tar(install.node_debs))
        names = [f"{WORK}/debs/{deb.path.name}" for deb in install.node_debs]
        remote.sh("DEBIAN_FRONTEND=noninteractive " + q("dpkg", "-i", *names), timeout=600)
    remote.sh(install.plan.script(f"{WORK}/secrets", TARGET))


# The node's root is an overlay of its read-only layers under a tmpfs. stage-1 leaves each
# layer mounted at /run/rootfs/layers/<name> and moves /run into the running system
# (stage1/init). The installed system is those layers, merged, without what changed in RAM
# since boot and without the per-node layer (host name, network, keys: install writes its
# own; the boot's host-key reporter and its token must never reach the disk): stacked top
# first in reverse name order (the stage-1 rule), overlaid read-only when there are several.
LAYERS = "/run/rootfs/layers"
NODE_LAYER = PurePosixPath(nodelayer.LAYER).name


def lower_view(layers: str = LAYERS, lower: str = LOWER) -> str:
    """The script that mounts the image's merged layers read-only at `lower`/root."""
    return f"""\
[ -d {layers} ] || {{ echo "no {layers}: the node runs an image whose stage-1 does not keep \
its layers under /run (rebuild the image)"; exit 1; }}
lowers=""
for layer in $(LC_ALL=C ls -1r {layers}); do
    [ "$layer" != {NODE_LAYER} ] || continue
    lowers="${{lowers:+$lowers:}}{layers}/$layer"
done
[ -n "$lowers" ] || {{ echo "no layer under {layers}"; exit 1; }}
mkdir -p {lower}/root
case "$lowers" in
    *:*) mount -t overlay -o "ro,lowerdir=$lowers" plasmaboot-lower {lower}/root ;;
    *) mount --bind -o ro "$lowers" {lower}/root ;;
esac
[ -e {lower}/root/usr/lib/os-release ] || {{ echo "the layers hold no system"; exit 1; }}
"""


def copy_system(install: Install, remote: Remote) -> None:
    remote.sh(lower_view())
    remote.sh(
        f"cp -a {LOWER}/root/. {TARGET}/\n"
        # the node's own keys for root, where the per-node layer puts them
        "if [ -f /etc/plasmaboot/node/authorized_keys ]; then\n"
        f"  mkdir -p {TARGET}/etc/plasmaboot/node\n"
        f"  cp /etc/plasmaboot/node/authorized_keys {TARGET}/etc/plasmaboot/node/\n"
        "fi\n"
        f"umount {LOWER}/root",
        timeout=1800,
    )


def write_files(remote: Remote, files: dict[str, tuple[str, int]]) -> None:
    """Files of the installed root (path -> text, mode), in one tar stream on stdin: one SSH
    round trip, and never a content on a command line. Only file entries: an existing
    directory keeps its owner and mode."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, (text, mode) in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.uname, info.gname = len(data), mode, "root", "root"
            archive.addfile(info, io.BytesIO(data))
    remote.sh(f"tar -x --no-overwrite-dir --same-owner --same-permissions -C {TARGET}",
              input=buffer.getvalue())  # fmt: skip


def configure(install: Install, remote: Remote) -> None:
    assert install.plan is not None
    devices = [fs.device for fs in install.plan.filesystems]
    out = remote.sh(
        "for d in "
        + " ".join(map(shlex.quote, devices))
        + '; do echo "$d $(blkid -s UUID -o value "$d")"; done'
    )
    uuids = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    missing = [d for d in devices if not uuids.get(d)]
    if missing:
        raise WorkError(f"blkid found no UUID on {', '.join(missing)}")
    short = install.hostname.split(".", 1)[0]
    names = install.hostname if short == install.hostname else f"{install.hostname} {short}"
    files = {
        "etc/fstab": (install.plan.fstab(uuids), 0o644),
        "etc/hostname": (f"{install.hostname}\n", 0o644),
        "etc/hosts": (
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n::1\tlocalhost ip6-localhost\n",
            0o644,
        ),
        "etc/machine-id": (f"{uuid.uuid4().hex}\n", 0o444),
    }
    crypttab = install.plan.crypttab(uuids)
    if crypttab:
        files["etc/crypttab"] = (crypttab, 0o600)
    if install.ipv4:
        files[STATIC_NETWORK] = (static_network(install.ipv4, install.macs), 0o644)
    write_files(remote, files)
    make_keys = [
        f"rm -f {key} {key}.pub\nssh-keygen -q -t {kind} -N '' -C '' -f {key}\ncat {key}.pub"
        for kind in HOST_KEY_TYPES
        for key in [f"{TARGET}/etc/ssh/ssh_host_{kind}_key"]
    ]
    out = remote.sh("\n".join(make_keys))
    install.host_keys = [" ".join(line.split()[:2]) for line in out.splitlines() if line.strip()]


def static_network(ipv4: str, macs: tuple[str, ...]) -> str:
    """systemd-networkd: the inventory's address on the machine's NIC (by MAC), ahead of the
    image's DHCP file by name order."""
    match = f"MACAddress={' '.join(macs)}" if macs else "Type=ether"
    return f"# written by plasmaboot install\n[Match]\n{match}\n\n[Network]\nAddress={ipv4}\n"


def install_boot(install: Install, remote: Remote) -> None:
    """The kernel the node booted, GRUB from the operator's .debs, the initramfs."""
    assert install.plan is not None
    version = install.kernel_version
    remote.sh(
        f"mkdir -p {TARGET}/boot\ncat > {TARGET}/boot/vmlinuz-{shlex.quote(version)}",
        input=install.kernel.read_bytes(),
    )
    if install.kernel_config:
        remote.sh(f"cat > {TARGET}/boot/config-{shlex.quote(version)}", input=install.kernel_config)
    # rslave: unmounting the copies later must never unmount the node's own
    remote.sh("\n".join(
        f"mkdir -p {TARGET}/{m}\nmount --rbind /{m} {TARGET}/{m}\nmount --make-rslave {TARGET}/{m}"
        for m in ("dev", "proc", "sys", "run")
    ))  # fmt: skip
    if install.debs:
        remote.sh(
            f"mkdir -p {TARGET}/var/cache/plasmaboot-debs\n"
            f"tar -x -C {TARGET}/var/cache/plasmaboot-debs",
            input=debs_tar(install.debs),
        )
        names = [f"/var/cache/plasmaboot-debs/{deb.path.name}" for deb in install.debs]
        remote.sh(
            "DEBIAN_FRONTEND=noninteractive " + in_target("dpkg", "-i", "--force-confold", *names),
            timeout=900,
        )
        remote.sh(f"rm -rf {TARGET}/var/cache/plasmaboot-debs")
    grub = GRUB_DEFAULTS.format(cmdline=install.kernel_cmdline)
    write_files(
        remote, {"etc/default/grub": (grub, 0o644), INITRAMFS_CONF: (FAST_INITRAMFS, 0o644)}
    )
    # the image builder diverts update-initramfs to a no-op (a netboot image needs none);
    # the installed system boots through one, so the real tool comes back
    remote.sh(in_target("sh", "-euc", RESTORE_UPDATE_INITRAMFS))
    remote.sh(in_target("sh", "-euc", MAKE_INITRAMFS, "-", version), timeout=1200)
    boot_disk = install.plan.disks[0].device
    if install.layout.has_bios_grub():
        remote.sh(in_target("grub-install", "--target=i386-pc", boot_disk), timeout=600)
    esp = install.layout.esp_mount()
    if esp:
        # --removable: \EFI\BOOT\BOOTX64.EFI, found by any firmware with no NVRAM entry;
        # --no-nvram: the firmware's boot order is never rewritten
        remote.sh(
            in_target(
                "grub-install",
                "--target=x86_64-efi",
                f"--efi-directory={esp}",
                "--removable",
                "--no-nvram",
                boot_disk,
            ),
            timeout=600,
        )
    remote.sh(in_target("grub-mkconfig", "-o", "/boot/grub/grub.cfg"), timeout=600)


def debs_tar(debs: list[Deb]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for deb in debs:
            archive.add(deb.path, arcname=deb.path.name)
    return buffer.getvalue()


def configure_services(install: Install, remote: Remote) -> None:
    """The machine's services enabled; every other catalog service disabled."""
    units = {name: f"{name}.service" for name in load_catalog()}
    present = remote.sh(
        "for u in "
        + " ".join(units.values())
        + f"; do [ -e {TARGET}/etc/systemd/system/$u ] && echo $u; done; true"
    ).split()
    unknown = [s for s in install.services if units[s] not in present]
    if unknown:
        raise WorkError(
            f"the image has no unit for {', '.join(unknown)} (services the inventory enables)",
            hint="boot the machine with a profile that has those services",
        )
    off = [u for u in present if u not in {units[s] for s in install.services}]
    if off:
        remote.sh(q("systemctl", f"--root={TARGET}", "disable", "--quiet", *off))
    if install.services:
        on = [units[s] for s in install.services]
        remote.sh(q("systemctl", f"--root={TARGET}", "enable", "--quiet", *on))


def copy_secrets(install: Install, remote: Remote) -> None:
    """The secrets tree, streamed over stdin and unpacked on the installed root; then every
    file's owner and mode read back (the report shows them, never the contents)."""
    if not install.secrets:
        return
    remote.sh(
        f"tar -x --no-overwrite-dir --same-owner --same-permissions -C {TARGET}",
        input=secrets_tar(install.secrets),
    )
    paths = " ".join(shlex.quote(f"{TARGET}{secret.path}") for _, secret in install.secrets)
    out = remote.sh(f"stat -c '%U %a %n' {paths}")
    for line, (_, secret) in zip(out.splitlines(), install.secrets, strict=True):
        owner, mode, _ = line.split(" ", 2)
        if owner != secret.owner or int(mode, 8) != secret.mode:
            raise WorkError(
                f"{secret.path} landed as {owner} {mode}, expected {secret.owner} "
                f"{secret.mode:o} (is the user {secret.owner} in the image?)"
            )


def finish(install: Install, remote: Remote) -> None:
    # lazily if something still holds it (after sync, nothing is lost: the reboot follows)
    remote.sh(f"sync\numount -R {TARGET} || umount -R -l {TARGET}")


STEPS = (
    ("inspect", inspect),
    ("disks", make_disks),
    ("system", copy_system),
    ("configure", configure),
    ("boot", install_boot),
    ("services", configure_services),
    ("secrets", copy_secrets),
    ("finish", finish),
)


def plan_json(install: Install) -> dict[str, Any]:
    if install.plan is None:
        return {}
    return {
        "disks": [{"device": d.device, "size": d.size} for d in install.plan.disks],
        "partitions": [
            {
                "device": p.device,
                "type": p.type.value,
                "start": p.start,
                "size": p.size,
                "name": p.name,
            }
            for p in install.plan.partitions
        ],
        "filesystems": [
            {"device": f.device, "filesystem": f.filesystem.value, "mount": f.mount}
            for f in install.plan.filesystems
        ],
    }
