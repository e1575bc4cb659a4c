"""Installing a netbooted Debian node to its disk, over SSH, as a list of steps:

    inspect   find the layout's disks, read what is on them, refuse a disk in use or not
              empty (without --wipe) and one too small, before anything is written
    disks     wipe (--wipe), partition, LUKS (the keys on stdin), LVM, mkfs, mount under
              /mnt/plasmaboot
    system    copy the image the node booted: its read-only layers but the per-node one, not
              its tmpfs changes
    configure fstab and crypttab by UUID, host name, network (DHCP or the inventory's
              address), a fresh machine-id, the installed system's own SSH host keys (made
              on the node); the keys of the mappings the initramfs opens
    boot      the set's kernel, GRUB's files (BIOS and UEFI, unpacked from the operator's
              deb cache), the set's prebuilt initramfs pushed (or, when it does not fit,
              update-initramfs started in the background), grub-install, grub.cfg
    services  every catalog service disabled but the machine's `services`
    secrets   the machine's secrets tree, as it is, 0600, root's or the service user's
    initramfs wait for the initramfs made on the node (update-initramfs, started in
              `boot`), when there is one to wait for
    finish    unmount; the caller reboots and waits for the installed system

Every step is a small function over an `Install` (what was decided) and a `Remote` (the
node). Re-running after a failure starts again from the top (the disk is re-partitioned:
pass --wipe, the disk then holds the failed run's partitions).
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from plasmaboot.catalog import load_catalog
from plasmaboot.errors import WorkError
from plasmaboot.image.backends.debian.contract import KERNEL_VERSION_PATTERN
from plasmaboot.install import luks
from plasmaboot.install.layout import Filesystem, Layout
from plasmaboot.install.packages import Deb, unpacked_debs
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
KEYS = f"{WORK}/keys"  # the LUKS keys while the disks step runs
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
GRUB_CFG = """\
# written by plasmaboot install for the installed kernel (`update-grub` writes one from
# /etc/default/grub)
set default=0
set timeout=1
serial --speed=115200
terminal_input console serial
terminal_output console serial
{modules}search --no-floppy --fs-uuid --set=root {boot_uuid}
menuentry 'Debian GNU/Linux' {{
\tlinux {prefix}/vmlinuz-{version} root=UUID={root_uuid} ro {cmdline}
\tinitrd {prefix}/initrd.img-{version}
}}
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
    luks_keys: list[tuple[Path, Secret]] = field(default_factory=list)  # luks.key_files
    kernel_config: bytes = b""  # /boot/config-<version>, from the kernel's .deb
    ipv4: str | None = None  # "10.20.0.11/24": a static address, else DHCP
    macs: tuple[str, ...] = ()
    wipe: bool = False
    kernel_cmdline: str = "console=ttyS0,115200 console=tty0"
    # the set's installed-initrd (made at build time for its kernel) and that kernel's
    # version: pushed as the installed system's initramfs when it fits (`prebuilt_fits`)
    prebuilt_initrd: Path | None = None
    prebuilt_initrd_version: str = ""
    # found on the node
    plan: Plan | None = None
    kernel_version: str = ""
    uuids: dict[str, str] = field(default_factory=dict)  # device -> filesystem UUID
    host_keys: list[str] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)  # the slow steps' parts, seconds
    initramfs_on_node: bool = False  # update-initramfs was started on the node (`boot`)


@contextmanager
def part(install: Install, name: str) -> Iterator[None]:
    """Time one part of a step (the report's `parts`: where a slow step spends its time)."""
    started = time.monotonic()
    try:
        yield
    finally:
        install.parts[name] = round(time.monotonic() - started, 2)


def q(*argv: str) -> str:
    return shlex.join(argv)


# The node's /dev, /proc, /sys and /run for a command in the installed root, bound in a
# mount namespace of that command's own: gone when it ends, never seen by the node's. Bound
# in the node's namespace, they were copied into the namespaces of its sandboxed services
# (udevd, logind, networkd, resolved: ProtectSystem=) as mounts of their own, which the
# node's `umount -R` does not reach; those held the installed root, /dev/vda3 stayed
# "in use by the system", and a second install with --wipe failed at `disks`.
CHROOT = """\
for m in dev proc sys run; do mkdir -p "$0/$m"; mount --rbind "/$m" "$0/$m"; done
exec chroot "$0" "$@"
"""


def in_target(*argv: str) -> str:
    """The command that runs `argv` chrooted in the installed root, with the node's /dev,
    /proc, /sys and /run bound in a private mount namespace (see CHROOT)."""
    return q("unshare", "--mount", "--propagation", "private", "sh", "-euc", CHROOT, TARGET,
             *argv)  # fmt: skip


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


def release_other_namespaces(target: str = TARGET, proc: str = "/proc") -> str:
    """The script that unmounts `target` in every other mount namespace that still holds it
    (what a run before CHROOT's namespaces left in the node's sandboxed services): one grep
    over every process's mountinfo, then nsenter once per namespace."""
    return f"""\
self=$(readlink {proc}/self/ns/mnt)
seen=""
for f in $(grep -l ' {target} ' {proc}/[0-9]*/mountinfo 2>/dev/null || true); do
    pid=${{f#{proc}/}}; pid=${{pid%/mountinfo}}
    ns=$(readlink {proc}/$pid/ns/mnt 2>/dev/null) || continue
    [ "$ns" != "$self" ] || continue
    case " $seen " in *" $ns "*) continue ;; esac
    seen="$seen $ns"
    echo "unmounted {target} in the mount namespace of $(cat {proc}/$pid/comm 2>/dev/null)"
    nsenter -t "$pid" -m umount -R {target} 2>/dev/null \\
        || nsenter -t "$pid" -m umount -R -l {target} 2>/dev/null || true
done
"""


def release_previous(install: Install, remote: Remote) -> None:
    """Undo what a failed run left mounted or open (our own mounts and names only), so a
    re-run can inspect and wipe the disk."""
    script = [
        # only when a previous run left something mounted (a fresh node has nothing to end)
        f"if mountpoint -q {TARGET} || mountpoint -q {LOWER}/root; then\n{kill_previous()}fi",
        f"if mountpoint -q {TARGET}; then umount -R {TARGET}; fi",
        f"if mountpoint -q {LOWER}/root; then umount -R {LOWER}/root; fi",
        release_other_namespaces(),
        f"rm -rf {KEYS}",  # a previous run's LUKS keys, had its disks step been killed
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
    install.kernel_version = node_kernel_version(remote.sh("uname -r"))


def node_kernel_version(text: str) -> str:
    """The kernel the node runs (`uname -r`), checked by the kernel-version rule of the
    build (it names the .deb to read, files under /boot and a line of grub.cfg)."""
    version = text.strip()
    if not KERNEL_VERSION_PATTERN.match(version):
        raise WorkError(f"the node's `uname -r` is {version[:80]!r}, not a kernel version")
    return version


def make_disks(install: Install, remote: Remote) -> None:
    assert install.plan is not None
    if install.node_debs:  # into the node's RAM overlay: gone at reboot
        with part(install, "node tools"):
            remote.sh(
                f"mkdir -p {WORK}/debs\ntar -x -C {WORK}/debs", input=debs_tar(install.node_debs)
            )
            names = [f"{WORK}/debs/{deb.path.name}" for deb in install.node_debs]
            remote.sh("DEBIAN_FRONTEND=noninteractive " + q("dpkg", "-i", *names), timeout=600)
    script = install.plan.script(KEYS, TARGET)
    if install.luks_keys:
        script = with_keys(KEYS, script)
    with part(install, "partitions and filesystems"):
        remote.sh(script, input=secrets_tar(install.luks_keys) if install.luks_keys else None)


def with_keys(keys: str, script: str) -> str:
    """`script` after the keys on stdin are unpacked into `keys` (0700, in the node's RAM,
    for cryptsetup); removed when it ends, however it ends: an error (`sh -e`), or a signal
    (a lost SSH connection: SIGPIPE, SIGHUP), which would otherwise skip the EXIT trap.
    The installed root gets them with the other secrets; the script itself runs with the
    usual umask."""
    return (
        f"umask 077\nrm -rf {keys}\nmkdir -p {keys}\ntrap 'rm -rf {keys}' EXIT\n"
        "trap 'exit 129' HUP\ntrap 'exit 130' INT\ntrap 'exit 141' PIPE\n"
        "trap 'exit 143' TERM\n"
        f"tar -x --no-same-owner -C {keys}\n"
        # the layout's mount points (and any parent the image lacks) are the installed
        # system's directories: 0755, as without keys
        f"umask 022\n{script}"
    )


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
    """The image's layers copied to the disk; beside it, on another channel of the same
    connection, the files of the `boot` step uploaded to the node's RAM (`stage_boot_files`):
    the copy is the guest's disk and decompression work, the uploads its network and SSH
    decryption, and the guest has a CPU for each."""
    remote.sh(lower_view())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plasmaboot-stage") as pool:
        staged = pool.submit(stage_boot_files, install, remote)
        with part(install, "copy"):
            remote.sh(
                copy_tree(f"{LOWER}/root", TARGET) +
                # the node's own keys for root, where the per-node layer puts them
                "if [ -f /etc/plasmaboot/node/authorized_keys ]; then\n"
                f"  mkdir -p {TARGET}/etc/plasmaboot/node\n"
                f"  cp /etc/plasmaboot/node/authorized_keys {TARGET}/etc/plasmaboot/node/\n"
                "fi\n"
                f"umount {LOWER}/root",
                timeout=1800,
            )
        staged.result()  # its failure, after the copy's (a failed copy is named first)


def copy_tree(source: str, target: str) -> str:
    """The script that copies `source`'s tree onto `target` (`cp -a`) in two streams: each
    entry of usr/lib, of usr and of the top directory is one `cp -a --parents`, two at a
    time (xargs -P 2), then the three directories above them get their owner, mode and
    times (tar). Squashfs decompresses in the reader and the kernel has a decompressor per
    CPU: one `cp -a` used one of the guest's two CPUs (25.5 s cold under TCG, 12.2 s in
    two streams; docs/benchmarks.md). A tree without usr/lib is one `cp -a`."""
    return f"""\
if [ ! -d {source}/usr/lib ] || [ -L {source}/usr ] || [ -L {source}/usr/lib ]; then
    cp -a {source}/. {target}/
else
    cd {source}
    mkdir -p {target}/usr/lib
    {{ find usr/lib -mindepth 1 -maxdepth 1 -print0
      find usr -mindepth 1 -maxdepth 1 ! -path usr/lib -print0
      find . -mindepth 1 -maxdepth 1 ! -path ./usr -print0
    }} | xargs -0 -r -P 2 -n 1 cp -a --parents -t {target}
    tar -cf - --no-recursion . usr usr/lib | tar -xpf - -C {target}
    cd /
fi
"""


def stage_boot_files(install: Install, remote: Remote) -> None:
    """The set's kernel (and its config), its prebuilt initramfs when it fits this install,
    and GRUB's files (one tar stream unpacked from the operator's .debs) into `STAGE` on the
    node's tmpfs; `install_boot` moves them onto the disk."""
    version = shlex.quote(install.kernel_version)
    remote.sh(f"rm -rf {STAGE} {GRUB_TAR}\nmkdir -p {STAGE}")
    with part(install, "kernel upload"):
        remote.sh(f"cat > {STAGE}/vmlinuz-{version}", input=install.kernel.read_bytes())
        if install.kernel_config:
            remote.sh(f"cat > {STAGE}/config-{version}", input=install.kernel_config)
    if prebuilt_fits(install):
        assert install.prebuilt_initrd is not None
        with part(install, "initramfs upload"):
            remote.sh(
                f"cat > {STAGE}/initrd.img-{version}", input=install.prebuilt_initrd.read_bytes()
            )
    if install.debs:
        with part(install, "grub files upload"):
            # the packages' files, unpacked on the operator's side into one tar stream: no
            # dpkg run, no maintainer scripts or triggers on the node (see docs/install.md)
            remote.sh(f"cat > {GRUB_TAR}", input=unpacked_debs(install.debs))


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
    # the filesystems by their UUIDs (fstab), the LUKS partitions by theirs (crypttab)
    devices = [fs.device for fs in install.plan.filesystems]
    devices += [device for device, _, _ in install.plan.luks]
    out = remote.sh(
        "for d in "
        + " ".join(map(shlex.quote, devices))
        + '; do echo "$d $(blkid -s UUID -o value "$d")"; done'
    )
    uuids = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    missing = [d for d in devices if not uuids.get(d)]
    if missing:
        raise WorkError(f"blkid found no UUID on {', '.join(missing)}")
    install.uuids = uuids
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
    if install.plan.early:
        # the initramfs opens these mappings with their keys: the keys are on the root
        # before the initramfs is made (in `boot`), and cryptsetup-initramfs copies them
        remote.sh(
            f"tar -x --no-overwrite-dir --same-owner --same-permissions -C {TARGET}",
            input=secrets_tar(install.luks_keys),
        )
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
    """The kernel the node booted, GRUB's files from the operator's .debs, the initramfs,
    GRUB on the disk and its grub.cfg written from what the install knows."""
    assert install.plan is not None
    version = install.kernel_version
    with part(install, "boot files"):
        # what `stage_boot_files` uploaded beside the copy: the kernel (and the prebuilt
        # initramfs) into /boot, GRUB's files unpacked over the copied system
        script = f"mkdir -p {TARGET}/boot\nmv {STAGE}/* {TARGET}/boot/\nrmdir {STAGE}"
        if install.debs:
            script += "\n" + q(
                "tar", *UNPACK_DEBS, "--same-owner", "--same-permissions", "-C", TARGET,
                "-f", GRUB_TAR,
            ) + f"\nrm -f {GRUB_TAR}"  # fmt: skip
        remote.sh(script)
    grub = GRUB_DEFAULTS.format(cmdline=install.kernel_cmdline)
    # an initramfs holding LUKS keys is written 0600 (initramfs-tools' UMASK)
    conf = FAST_INITRAMFS + ("UMASK=0077\n" if install.plan.early else "")
    files = {
        "etc/default/grub": (grub, 0o644),
        INITRAMFS_CONF: (conf, 0o644),
        # present, so that neither of the two grub-install below makes one (each would
        # write grubenv.new and rename it: one would fail)
        "boot/grub/grubenv": (GRUBENV, 0o644),
    }
    if install.plan.early:  # after the packages' files: theirs holds no KEYFILE_PATTERN
        files[luks.CONF_HOOK] = (luks.conf_hook(), 0o644)
    write_files(remote, files)
    # the image builder diverts update-initramfs to a no-op (a netboot image needs none);
    # the installed system updates its own, so the real tool comes back. The first one is
    # the set's, made at build time (`prebuilt_fits`, uploaded by `stage_boot_files`); else
    # update-initramfs on the node, the slowest part (a thousand forks, each slow under
    # TCG), in the background while GRUB, the services and the secrets are done; the
    # `initramfs` step waits for it
    remote.sh(
        in_target("sh", "-euc", ("ldconfig\n" if install.debs else "") + RESTORE_UPDATE_INITRAMFS)
    )
    if not prebuilt_fits(install):
        remote.sh(start_initramfs(version))
        install.initramfs_on_node = True
    boot_disk = install.plan.disks[0].device
    installs = []
    if install.layout.has_bios_grub():
        installs.append(in_target("grub-install", "--target=i386-pc", boot_disk))
    esp = install.layout.esp_mount()
    if esp:
        # --removable: \EFI\BOOT\BOOTX64.EFI, found by any firmware with no NVRAM entry;
        # --no-nvram: the firmware's boot order is never rewritten
        installs.append(
            in_target(
                "grub-install",
                "--target=x86_64-efi",
                f"--efi-directory={esp}",
                "--removable",
                "--no-nvram",
                boot_disk,
            )
        )
    with part(install, "grub-install"):
        # BIOS and UEFI at once: each is one CPU's work (probing, core.img), the guest has two
        remote.sh(together(installs), timeout=600)
    write_files(remote, {"boot/grub/grub.cfg": (grub_cfg(install), 0o444)})


def together(commands: list[str], logs: str = f"{WORK}/together") -> str:
    """The script that runs `commands` at once and waits for all of them: each one's output,
    then a failure naming the commands that failed (exit 1), or nothing."""
    if len(commands) <= 1:
        return "".join(commands)
    lines = [f"mkdir -p {WORK}", "pids="]
    for index, command in enumerate(commands):
        lines.append(f'( {command} ) >{logs}.{index}.log 2>&1 & pids="$pids $!"')
    lines += [
        "failed=",
        "index=0",
        "for pid in $pids; do",
        '    wait "$pid" || failed="$failed $index"',
        f"    cat {logs}.$index.log; rm -f {logs}.$index.log",
        "    index=$((index + 1))",
        "done",
        '[ -z "$failed" ] || { echo "failed:$failed (of 0-'
        + str(len(commands) - 1)
        + ', in order)"; exit 1; }',
    ]
    return "\n".join(lines) + "\n"


# GNU tar flags for the packages' files (`unpacked_debs`: one tar stream): a directory of a
# package (./bin/) never replaces the system's link to one (merged /usr: /bin -> usr/bin),
# and an existing directory keeps its owner and mode
UNPACK_DEBS = ("-x", "-i", "--keep-directory-symlink", "--no-overwrite-dir")
STAGE = f"{WORK}/boot"  # the installed /boot's files, uploaded beside the copy
GRUB_TAR = f"{WORK}/grub-files.tar"  # GRUB's files, unpacked on the operator's side
# /boot/grub/grubenv as `grub-editenv create` writes it (GRUB 2.06): the signature, then
# '#' to 1024 bytes
GRUBENV_SIGNATURE = "# GRUB Environment Block\n"
GRUBENV = GRUBENV_SIGNATURE + "#" * (1024 - len(GRUBENV_SIGNATURE))
INITRAMFS = f"{WORK}/initramfs"  # .rc: "<exit status> <seconds>" once done; .log: output


def start_background(command: str, state: str = INITRAMFS) -> str:
    """The script that starts `command` detached from the SSH session: its output goes to
    `state`.log, its exit status and seconds to `state`.rc once it ends."""
    job = (
        f"set +e; started=$(date +%s); ( {command} ); rc=$?; "
        f'echo "$rc $(($(date +%s) - started))" > {state}.rc.tmp; mv {state}.rc.tmp {state}.rc'
    )
    return (
        f"mkdir -p {WORK}\nrm -f {state}.rc {state}.rc.tmp\n"
        f"setsid sh -c {shlex.quote(job)} </dev/null >{state}.log 2>&1 &"
    )


def wait_background(state: str = INITRAMFS) -> str:
    """The script that waits for what `start_background` started: its output, then a last
    line `exit <status> after <seconds> s`; it exits with the command's status."""
    return f"""\
while [ ! -e {state}.rc ]; do sleep 1; done
read rc seconds < {state}.rc
cat {state}.log
echo "exit $rc after $seconds s"
exit "$rc"
"""


def prebuilt_fits(install: Install) -> bool:
    """Whether the set's prebuilt initramfs boots this install: one was built, for the
    kernel the node runs, and the layout needs nothing machine-specific in it (an
    encrypted / or /usr needs cryptsetup, a crypttab and its key: that initramfs is made on
    the node; a mapping opened after the root is systemd's, from the installed root)."""
    return (
        install.prebuilt_initrd is not None
        and install.prebuilt_initrd_version == install.kernel_version
        and not install.layout.early_mappings()
    )


def start_initramfs(version: str) -> str:
    return start_background(in_target("sh", "-euc", MAKE_INITRAMFS, "-", version))


def wait_initramfs(install: Install, remote: Remote) -> None:
    """Until the initramfs started in the `boot` step is written (nothing to wait for when
    the set's prebuilt one was pushed); its own time goes into the report's parts."""
    if not install.initramfs_on_node:
        return
    out = remote.sh(wait_background(), timeout=1200)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    seconds = last.rsplit(" after ", 1)[-1].removesuffix(" s")
    if seconds.isdigit():
        install.parts["initramfs (on the node)"] = float(seconds)


def grub_cfg(install: Install) -> str:
    """/boot/grub/grub.cfg for the installed kernel (what grub-mkconfig would write for one
    kernel, without its probing: the install knows the version, the filesystems and their
    UUIDs). `update-grub` on the installed system writes its own from /etc/default/grub."""
    assert install.plan is not None
    mounted = {fs.mount: fs for fs in install.plan.mounted()}
    root = mounted["/"]
    boot = mounted.get("/boot", root)
    prefix = "" if boot is not root else "/boot"
    modules = ["part_gpt", "ext2" if boot.filesystem is Filesystem.EXT4 else boot.filesystem.value]
    if install.plan.volume_groups:
        modules.append("lvm")
    version = install.kernel_version
    return GRUB_CFG.format(
        modules="".join(f"insmod {m}\n" for m in modules),
        boot_uuid=install.uuids[boot.device],
        root_uuid=install.uuids[root.device],
        prefix=prefix,
        version=version,
        cmdline=install.kernel_cmdline,
    )


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
    ("initramfs", wait_initramfs),
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
