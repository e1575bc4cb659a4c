"""Units changed for a boot from RAM only (issue #16: PXE -> SSH).

A netboot node needs less of systemd's early boot than a system on a disk: its root is a
RAM overlay stage-1 mounted, its journal lives in /run, nothing on it survives a reboot.
Each unit systemd starts before udevd costs a fork and exec of PID 1 and seconds of CPU
under TCG (docs/benchmarks.md, "#16: PXE -> SSH"). The changes are in stage-1's segment
(`RUNTIME_UNITS`) and stage-1 copies them to /run/systemd/system, where `systemctl
--runtime` puts its own: they hold for the boot from RAM only. `plasmaboot install` copies
the layers, never stage-1 or /run, so an installed system keeps Debian's units (its root
remounted from its fstab, its random seed and pstore kept on disk).
"""

from __future__ import annotations

import stat

from plasmaboot.formats.cpio import Entry

# Where stage-1's segment holds them; stage1/init copies this directory to
# /run/systemd/system before switch_root.
RUNTIME_UNITS = "etc/runtime-units"

# Masked for the boot from RAM, each with why it is not needed there.
MASKED_AT_NETBOOT: dict[str, str] = {
    # skipped by its condition, but it pulls modprobe@loop and modprobe@dm_mod (dm_mod
    # loaded, ~2 s of CPU under TCG); lvm and cryptsetup load dm_mod on demand
    # (/dev/mapper/control is a static node)
    "systemd-repart.service": "a RAM root has no partitions to grow",
    # it pulls modprobe@efi_pstore
    "systemd-pstore.service": (
        "it would move crash records out of the firmware's storage into RAM, where the "
        "next boot loses them"
    ),
    "modprobe@drm.service": "logind asks for it; the image keeps no DRM driver (drivers/gpu)",
    "systemd-journal-flush.service": "the journal is volatile: nothing to flush",
    "systemd-random-seed.service": "a seed file in RAM is gone at the next boot",
    "systemd-remount-fs.service": "stage-1 mounted the root; the image's fstab is empty",
    "systemd-update-utmp.service": "boot records in a wtmp that lives in RAM",
    "systemd-update-utmp-runlevel.service": "requires systemd-update-utmp.service",
}

# udev's coldplug queues ~170 events; a NIC driver is a module, so the NIC's own event
# ("net", renamed, then configured by networkd) is queued behind all of them when its
# driver loads. Triggering the network controllers first (PCI class 0x02, and the virtio
# bus of a VM), and waiting for those few events, loads the NIC drivers before the full
# coldplug: the net devices then exist and are handled first (Debian's trigger already
# puts the "net" subsystem first). "-": a failure here never fails the coldplug.
UDEV_NET_FIRST = """\
# plasmaboot (netboot): network controllers first, so the NIC is up before the coldplug
[Service]
ExecStartPre=-udevadm trigger --action=add --settle --subsystem-match=pci --attr-match=class=0x02*
ExecStartPre=-udevadm trigger --action=add --settle --subsystem-match=virtio
"""

DROP_INS: dict[str, str] = {
    "systemd-udev-trigger.service.d/50-plasmaboot-net-first.conf": UDEV_NET_FIRST,
}


def runtime_unit_entries() -> list[Entry]:
    """stage-1's cpio entries: the masks (links to /dev/null) and drop-ins above."""
    entries = [Entry(RUNTIME_UNITS, stat.S_IFDIR | 0o755)]
    for unit in sorted(MASKED_AT_NETBOOT):
        entries.append(
            Entry(f"{RUNTIME_UNITS}/{unit}", stat.S_IFLNK | 0o777, link_target="/dev/null")
        )
    for directory in sorted({path.rsplit("/", 1)[0] for path in DROP_INS}):
        entries.append(Entry(f"{RUNTIME_UNITS}/{directory}", stat.S_IFDIR | 0o755))
    for path, text in sorted(DROP_INS.items()):
        entries.append(
            Entry(f"{RUNTIME_UNITS}/{path}", stat.S_IFREG | 0o644, data=text.encode("utf-8"))
        )
    return entries
