"""What serve answers an installed machine: boot from its local disk (the contract's
script). BIOS: `sanboot --no-describe --drive 0x80` boots the first disk; UEFI: `exit 1`
hands back to the firmware, which tries its next boot entry (a bare `exit` drops many
firmwares into their menu). No BootOrder is rewritten."""

from __future__ import annotations

from pathlib import Path

from plasmaboot.inventory.installed import is_installed
from plasmaboot.inventory.model import Machine

LOCAL_BOOT_SCRIPT = (
    "#!ipxe\n"
    "echo plasmaboot: installed, booting from the local disk\n"
    "iseq ${platform} efi && exit 1 || sanboot --no-describe --drive 0x80\n"
)


def local_boot_script(inventory_path: Path, machine: Machine) -> str | None:
    """The local-boot script when `machine` is recorded as installed, else None."""
    return LOCAL_BOOT_SCRIPT if is_installed(inventory_path, machine.name) else None
