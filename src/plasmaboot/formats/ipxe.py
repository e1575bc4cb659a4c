"""The iPXE boot script of an artifact set (the seed's netboot.ipxe, made correct): written
by `render_netboot_script`, read back by `parse_netboot_script`, which accepts exactly the
shape the renderer writes and names the first line that differs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from plasmaboot.artifacts.layout import INITRD, KERNEL
from plasmaboot.formats import FormatError
from plasmaboot.formats.cmdline import check_cmdline, check_param

# The base URL the PXE server (or `plasmaboot serve`) provides to scripts.
BOOT_SERVER = "${boot-server}"
# The script a PXE loader asks for first (over TFTP, or HTTP from `serve`).
BOOT_SCRIPT = "boot.ipxe"
HEADER = "#!ipxe"
# A set's script is a few hundred bytes (the kernel line at most 2048 characters).
MAX_SCRIPT_SIZE = 64 << 10
# A set's label, as a profile (and variant) name makes it: one path segment of a URL.
LABEL = r"[a-z0-9][a-z0-9-]*"


@dataclass(frozen=True)
class NetbootScript:
    """What a set's script says: the set it boots and the kernel's command line (after the
    `initrd=initrd` the script itself adds)."""

    label: str
    kernel_params: tuple[str, ...]


def render_netboot_script(
    label: str, kernel_params: Sequence[str], set_url: str | None = None
) -> str:
    """`${boot-server}` is the base URL the PXE server (or `plasmaboot serve`) provides;
    `initrd=initrd` names the initrd for the kernel's EFI stub, which UEFI boots need.
    `set_url` replaces `${boot-server}/<label>` with the URL of one exact set (what `serve`
    hands a node). A FormatError for a label, URL or parameter the script cannot carry as
    it is (the one kernel-parameter rule, formats.cmdline)."""
    if re.fullmatch(LABEL, label) is None:
        raise FormatError(f"label {label!r} is not a name ({LABEL})")
    if set_url is not None and re.fullmatch(SET_URL, set_url) is None:
        raise FormatError(f"set URL {set_url!r} is not an http URL of plain path segments")
    for param in kernel_params:
        check_kernel_param(param)
    words = ["initrd=initrd", *kernel_params]
    check_cmdline(words)  # past the kernel's limit the last parameters would be cut
    return "".join(f"{line}\n" for line in script_lines(label, words, set_url))


# What `serve` writes for `${boot-server}/<label>`: http://host[:port][/path].../<set>
HTTP_BASE = r"https?://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
SET_URL = rf"{HTTP_BASE}(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*"  # no "." or ".." segments


# A published script (`plasmaboot publish`, `build --pxe-dir`) names its own set directory,
# `${boot-server}/.sets/<label>-<16 hex digits>`, so a static server of the PXE directory
# hands a node the kernel and initrd of the set whose script it fetched, even mid-publish.
PUBLISHED_SET = re.compile(
    r"\$\{boot-server\}/\.sets/(?P<name>(?P<label>" + LABEL + r")-[0-9a-f]{16})"
)


def published_base(set_name: str) -> str:
    return f"{BOOT_SERVER}/.sets/{set_name}"


def render_published_script(set_name: str, kernel_params: Sequence[str]) -> str:
    """The script of set `<label>-<id>` as `publish` writes it: like the build's, with its
    kernel and initrd URLs under `${boot-server}/.sets/<label>-<id>/`."""
    match = re.fullmatch(rf"(?P<label>{LABEL})-[0-9a-f]{{16}}", set_name)
    if match is None:
        raise FormatError(f"set name {set_name!r} is not <label>-<16 hex digits>")
    for param in kernel_params:
        check_kernel_param(param)
    words = ["initrd=initrd", *kernel_params]
    check_cmdline(words)
    lines = script_lines(match["label"], words, published_base(set_name))
    return "".join(f"{line}\n" for line in lines)


def script_lines(label: str, words: list[str], set_url: str | None = None) -> list[str]:
    base = set_url or f"{BOOT_SERVER}/{label}"
    return [
        HEADER,
        f"# plasmaboot: {label}",
        " ".join(["kernel", f"{base}/{KERNEL}", *words]),
        f"initrd --name initrd {base}/{INITRD}",
        "boot",
    ]


def check_kernel_param(param: str) -> None:
    """formats.cmdline's rule, naming the parameter: a word iPXE passes to the kernel as it
    is (no whitespace, terminator, comment or `${...}` expansion)."""
    try:
        check_param(param)
    except FormatError as exc:
        raise FormatError(f"kernel parameter {param!r}: {exc}") from exc


# The lines of the shape, with <label> and <params> where they vary; as error messages
# show them.
EXPECTED = (
    HEADER,
    "# plasmaboot: <label>",
    f"kernel {BOOT_SERVER}/<label>/{KERNEL} initrd=initrd <params>",
    f"initrd --name initrd {BOOT_SERVER}/<label>/{INITRD}",
    "boot",
)
COMMENT_LINE = re.compile(rf"# plasmaboot: (?P<label>{LABEL})")


def parse_netboot_script(text: str, *, published: bool = False) -> NetbootScript:
    """The label and kernel parameters of a script of exactly the shape
    `render_netboot_script` writes: `#!ipxe` at byte 0, every line ending in a newline,
    nothing before, between or after its five lines. A FormatError names the first line
    that differs and what was expected there. With `published`, the shape
    `render_published_script` writes is read too (its URLs name one `.sets/` directory of
    the same label)."""
    base = None
    if published:
        lines = text.split("\n")
        found = PUBLISHED_SET.search(lines[2]) if len(lines) > 2 else None
        if found is not None and lines[2].startswith(f"kernel {found[0]}/"):
            base = found[0]
    lines = text.split("\n")
    ended = lines[-1] == ""
    if ended:
        lines.pop()
    label = "<label>"
    params: tuple[str, ...] = ()
    for number, line in enumerate(lines, start=1):
        check_printable(number, line)
        if number == 1 and line != HEADER:
            raise FormatError(f"line 1: {line[:60]!r}, expected {HEADER!r} at byte 0")
        if number == 2:
            comment = COMMENT_LINE.fullmatch(line)
            if comment is None:
                raise unexpected(2, line, label)
            label = comment["label"]
            if base is not None and not base.endswith(f"/.sets/{label}-{base[-16:]}"):
                base = None  # another label's set: read as the plain shape, and refused
        if number == 3:
            params = read_kernel_line(line, label, base)
        if number in (4, 5) and line != script_lines(label, [], base)[number - 1]:
            raise unexpected(number, line, label)
        if number > len(EXPECTED):
            raise FormatError(
                f"line {number}: {line[:60]!r} after `boot`, expected the end of the script"
            )
    if len(lines) < len(EXPECTED):
        raise unexpected(len(lines) + 1, None, label)
    if not ended:
        raise FormatError(f"line {len(lines)}: {lines[-1][:60]!r} does not end with a newline")
    return NetbootScript(label, params)


def check_printable(number: int, line: str) -> None:
    """A control character (CR, NUL, tab, ...) is never part of the shape."""
    for column, char in enumerate(line, start=1):
        if not char.isprintable():
            raise FormatError(f"line {number}: unprintable character {char!r} at column {column}")


def read_kernel_line(line: str, label: str, base: str | None = None) -> tuple[str, ...]:
    """The parameters after `initrd=initrd` on the kernel line of `label`'s script."""
    start = script_lines(label, ["initrd=initrd"], base)[2]
    if line != start and not line.startswith(f"{start} "):
        raise unexpected(3, line, label)
    params = tuple(line[len(start) :].split(" ")[1:])
    for param in params:
        try:
            check_kernel_param(param)
        except FormatError as exc:
            raise FormatError(f"line 3: {exc}") from exc
    return params


def unexpected(number: int, line: str | None, label: str) -> FormatError:
    """Line `number` (1-based; None: missing) is not the one the shape has there."""
    want = EXPECTED[number - 1].replace("<label>", label)
    if line is None:
        return FormatError(f"line {number}: missing, expected `{want}`")
    return FormatError(f"line {number}: {line[:60]!r}, expected `{want}`")
