"""The iPXE boot script of an artifact set (the seed's netboot.ipxe, made correct)."""

from __future__ import annotations

# The base URL the PXE server (or `plasmaboot serve`) provides to scripts.
BOOT_SERVER = "${boot-server}"
# The script a PXE loader asks for first (over TFTP, or HTTP from `serve`).
BOOT_SCRIPT = "boot.ipxe"


def render_netboot_script(label: str, kernel_params: list[str]) -> str:
    """`${boot-server}` is the base URL the PXE server (or `plasmaboot serve`) provides;
    `initrd=initrd` names the initrd for the kernel's EFI stub, which UEFI boots need."""
    params = " ".join(["initrd=initrd", *kernel_params])
    return (
        "#!ipxe\n"
        f"# plasmaboot: {label}\n"
        f"kernel {BOOT_SERVER}/{label}/bzImage {params}\n"
        f"initrd --name initrd {BOOT_SERVER}/{label}/initrd\n"
        "boot\n"
    )
