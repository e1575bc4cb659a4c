"""LUKS on the Debian installer: the layout's key files, checked where they enter, and what
the installed system needs to unlock them at boot.

A key is a file of the machine's secrets (`luks = { name, key }`, relative to
`--secrets DIR/<machine>/`). It reaches the node on stdin, into a 0700 directory of its RAM
that the disks step removes when it ends, and the installed root with the other secrets
(0600, root's). At boot, systemd opens each mapping from /etc/crypttab with that file; a
mapping that holds / or /usr is opened by the initramfs instead, so its key is copied into
the initramfs (cryptsetup-initramfs' KEYFILE_PATTERN, the initramfs written 0600).

What that protects (docs/install.md): a disk taken away without the one holding /boot (an
RMA, a disposal, a data disk), and a whole disk made unreadable by destroying its key. A key
in the initramfs sits on the unencrypted /boot: a thief of the whole machine has it.
"""

from __future__ import annotations

from pathlib import Path

from plasmaboot.errors import UserError
from plasmaboot.install.layout import Layout
from plasmaboot.install.secrets import Secret
from plasmaboot.profiles.located_errors import display_path

MIN_KEY_BYTES = 32  # 256 bits: a random key, not a passphrase (plan.KEY_FILE_PBKDF)
MAX_KEY_BYTES = 8192  # cryptsetup's own limit for a key file (--keyfile-size default)
CONF_HOOK = "etc/cryptsetup-initramfs/conf-hook"


def key_files(
    layout: Layout, where: str, secrets: list[tuple[Path, Secret]], root: Path
) -> list[tuple[Path, Secret]]:
    """The secrets that are the layout's LUKS keys, in layout order; a UserError naming the
    layout's key when one is missing from the machine's secrets, is not a key file, or
    would land owned by a service's user (secrets.owner_of)."""
    by_path = {secret.path: (path, secret) for path, secret in secrets}
    found: list[tuple[Path, Secret]] = []
    for d, disk in enumerate(layout.disks):
        for p, part in enumerate(disk.partitions):
            if part.luks is None:
                continue
            at = f"{where}: disks[{d}].partitions[{p}].luks.key"
            entry = by_path.get(f"/{part.luks.key}")
            if entry is None:
                raise UserError(
                    f"{at}: {display_path(root / part.luks.key)} is not in the machine's secrets",
                    hint=f"write a random key there (head -c 64 /dev/urandom > FILE), or "
                    f"pass the --secrets directory that holds {root.name}/{part.luks.key}",
                )
            try:  # readable here, before any connection: not in the middle of the disks step
                with entry[0].open("rb") as handle:
                    handle.read(1)
                size = entry[0].stat().st_size
            except OSError as exc:
                raise UserError(
                    f"{at}: {display_path(entry[0])}: cannot read it ({exc.strerror})",
                    hint="the key must be readable by the user running plasmaboot",
                ) from None
            if not MIN_KEY_BYTES <= size <= MAX_KEY_BYTES:
                raise UserError(
                    f"{at}: {display_path(entry[0])} holds {size} bytes; a LUKS key file "
                    f"holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes",
                    hint="make one with: head -c 64 /dev/urandom > FILE",
                )
            if entry[1].owner != "root":
                raise UserError(
                    f"{at}: {display_path(entry[0])} lies under a service's configuration "
                    f"directory: it would land owned by {entry[1].owner}, who could read "
                    "the disk's key",
                    hint="put LUKS keys where they land root's, e.g. etc/plasmaboot/luks/",
                )
            if entry not in found:
                found.append(entry)
    return found


def conf_hook() -> str:
    """cryptsetup-initramfs' configuration. Its hook reads only the crypttab entries the
    initramfs opens (those holding / or /usr, a resume device, and the `initramfs` ones:
    plan.crypttab marks the early mappings so) and copies each one's key file when it
    matches the pattern: so every path may match, and no other key is copied."""
    return "# written by plasmaboot install\nKEYFILE_PATTERN='/*'\n"
