"""OpenSSH public keys, as authorized_keys holds them: one rule for what a key line is,
used by the build (before any work), by `verify` (in the image) and by anything else that
takes a key file. A line is a key only when its base64 blob really encodes its key type, so
`ssh-ed25519 AAAAnotakey` is not one."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from plasmaboot.formats import FormatError
from plasmaboot.paths import NotASmallFile, read_small_file

PRIVATE_KEY_MARKER = "PRIVATE KEY-----"
MAX_KEY_FILE_SIZE = 1 << 20  # an authorized_keys file of a few thousand keys

AUTHORIZED_KEY = re.compile(
    r"(?:^|\s)(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp(?:256|384|521)"
    r"|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)\s+([A-Za-z0-9+/]+=*)"
)


def public_key_type(line: str) -> str | None:
    """The key type of an authorized_keys line whose base64 blob really is that key type."""
    match = AUTHORIZED_KEY.search(line)
    if match is None:
        return None
    try:
        blob = base64.b64decode(match[2], validate=True)
    except ValueError:
        return None
    key_type = match[1].encode()
    if blob[:4] != len(key_type).to_bytes(4, "big") or blob[4 : 4 + len(key_type)] != key_type:
        return None
    return match[1]


def key_lines(text: str) -> list[str]:
    """The non-empty, non-comment lines of a key file, stripped."""
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def read_public_keys(path: Path) -> list[str]:
    """The key lines of a public key file. FormatError when it is not a regular file (a FIFO
    would block forever, a device never end), holds a private key, no key, or a line that
    is not a valid public key (the line number is given); OSError when it cannot be read."""
    try:
        raw = read_small_file(path, MAX_KEY_FILE_SIZE)
    except NotASmallFile as exc:
        raise FormatError(f"{exc}: not a public key file") from exc
    text = raw.decode("utf-8", "replace")
    if PRIVATE_KEY_MARKER in text:
        raise FormatError("this is a private key")
    lines = key_lines(text)
    if not lines:
        raise FormatError("holds no public key")
    numbered = [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#") and public_key_type(line) is None
    ]
    if numbered:
        raise FormatError(f"line {numbered[0]} is not a valid OpenSSH public key")
    return lines
