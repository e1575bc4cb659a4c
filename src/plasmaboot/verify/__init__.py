"""Reads an artifact set back without trusting the build that made it: every size and hash
in manifest.json (manifest), the kernel's boot header (kernel), the initrd's segments and
root squashfs (initrd), the layers manifest.json names (layers), what the image holds with
its layers stacked: keys, passwords, sshd, services (image), and the iPXE script (ipxe).

Each check has a name and passes, fails or is skipped (when a check it depends on failed,
or, with the reason, when it does not apply: a NixOS system's accounts made without a
users-groups.json). A NixOS image holds a Nix store, not a root filesystem: the image
checks read the system it boots (verify.store). Damaged input is a failed check with a
reason, never an exception.
"""

from __future__ import annotations

from pathlib import Path

from plasmaboot.artifacts.layout import MANIFEST
from plasmaboot.checks import Report
from plasmaboot.errors import UserError
from plasmaboot.verify.image import check_image
from plasmaboot.verify.initrd import check_initrd
from plasmaboot.verify.ipxe import check_ipxe
from plasmaboot.verify.kernel import check_kernel
from plasmaboot.verify.layers import check_layers
from plasmaboot.verify.manifest import check_manifest


def verify_set(directory: Path) -> Report:
    """Run every check on the artifact set in `directory`."""
    if not directory.exists():
        raise UserError(f"{directory}: no such directory", hint="give an artifact set directory")
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory", hint="give an artifact set directory")
    if not (directory / MANIFEST).is_file():
        raise UserError(
            f"{directory}: no {MANIFEST}, so this is not an artifact set",
            hint="give the directory a build wrote, e.g. artifacts/<profile>",
        )
    checks, manifest = check_manifest(directory)
    checks += check_kernel(directory, manifest)
    initrd_checks, root = check_initrd(directory, manifest.kernel_version if manifest else None)
    checks += initrd_checks
    checks.append(check_layers(directory, manifest))
    checks += check_image(root, manifest)
    checks += check_ipxe(directory, manifest)
    return Report(checks=tuple(checks))
