"""Pure readers and writers of the formats a netboot set is made of: newc cpio (initrd
segments), the bzImage boot header, the squashfs superblock, the iPXE script, the kernel
parameters it carries and SSH public keys. No policy lives here: each module says what a
well-formed value is, and the build's input check, its output check and `verify` all ask
the same module."""

from __future__ import annotations


class FormatError(ValueError):
    """The bytes are not what the format says they must be."""
