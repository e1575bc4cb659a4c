"""The iPXE boot script of an artifact set (the seed's netboot.ipxe, made correct): written
by `render_netboot_script`, read back by `parse_netboot_script`, which accepts exactly the
shape the renderer writes and names the first line that differs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from plasmaboot.artifacts.layout import INITRD, KERNEL
from plasmaboot.formats import FormatError

# The base URL the PXE server (or `plasmaboot serve`) provides to scripts.
BOOT_SERVER = "${boot-server}"
# The script a PXE loader asks for first (over TFTP, or HTTP from `serve`).
BOOT_SCRIPT = "boot.ipxe"
HEADER = "#!ipxe"
# A set's label, as a profile (and variant) name makes it: one path segment of a URL.
LABEL = r"[a-z0-9][a-z0-9-]*"
# Words iPXE reads as the end of a command (exec.c: command_terminator) or a comment.
TERMINATORS = ("||", "&&", ";")
SETTING_EXPANSION = "${"  # iPXE expands ${name} anywhere in a line before it runs it


@dataclass(frozen=True)
class NetbootScript:
    """What a set's script says: the set it boots and the kernel's command line (after the
    `initrd=initrd` the script itself adds)."""

    label: str
    kernel_params: tuple[str, ...]


def render_netboot_script(label: str, kernel_params: Sequence[str]) -> str:
    """`${boot-server}` is the base URL the PXE server (or `plasmaboot serve`) provides;
    `initrd=initrd` names the initrd for the kernel's EFI stub, which UEFI boots need.
    A FormatError for a label or parameter the script cannot carry as it is."""
    if re.fullmatch(LABEL, label) is None:
        raise FormatError(f"label {label!r} is not a name ({LABEL})")
    for param in kernel_params:
        problem = param_problem(param)
        if problem is not None:
            raise FormatError(f"kernel parameter {param!r} {problem}")
    return "".join(f"{line}\n" for line in script_lines(label, ["initrd=initrd", *kernel_params]))


def script_lines(label: str, words: list[str]) -> list[str]:
    return [
        HEADER,
        f"# plasmaboot: {label}",
        " ".join(["kernel", f"{BOOT_SERVER}/{label}/{KERNEL}", *words]),
        f"initrd --name initrd {BOOT_SERVER}/{label}/{INITRD}",
        "boot",
    ]


def param_problem(param: str) -> str | None:
    """Why iPXE would not pass `param` to the kernel as it is written, or None."""
    if not param or any(char.isspace() or not char.isprintable() for char in param):
        return "is empty or holds whitespace or control characters"
    if param in TERMINATORS or param.startswith("#"):
        return "ends the command in iPXE (a terminator or comment)"
    if SETTING_EXPANSION in param:
        return f"holds {SETTING_EXPANSION}, which iPXE expands"
    return None


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


def parse_netboot_script(text: str) -> NetbootScript:
    """The label and kernel parameters of a script of exactly the shape
    `render_netboot_script` writes: `#!ipxe` at byte 0, every line ending in a newline,
    nothing before, between or after its five lines. A FormatError names the first line
    that differs and what was expected there."""
    lines = text.split("\n")
    if lines[-1] != "":
        number = len(lines)
        raise FormatError(f"line {number}: {lines[-1][:60]!r} does not end with a newline")
    lines.pop()
    for number, line in enumerate(lines, start=1):
        column = next((i for i, char in enumerate(line, start=1) if not char.isprintable()), 0)
        if column:
            char = line[column - 1]
            raise FormatError(f"line {number}: unprintable character {char!r} at column {column}")
    if not lines or lines[0] != HEADER:
        first = lines[0] if lines else ""
        raise FormatError(f"line 1: {first[:60]!r}, expected {HEADER!r} at byte 0")
    comment = COMMENT_LINE.fullmatch(lines[1]) if len(lines) > 1 else None
    if comment is None:
        raise unexpected(lines, 2)
    label = comment["label"]
    expected = script_lines(label, ["initrd=initrd"])
    kernel_line = lines[2] if len(lines) > 2 else ""
    if not (kernel_line == expected[2] or kernel_line.startswith(expected[2] + " ")):
        raise unexpected(lines, 3, label)
    params = tuple(kernel_line[len(expected[2]) :].split(" ")[1:])
    for param in params:
        problem = param_problem(param)
        if problem is not None:
            raise FormatError(f"line 3: kernel parameter {param!r} {problem}")
    for number in (4, 5):
        if len(lines) < number or lines[number - 1] != expected[number - 1]:
            raise unexpected(lines, number, label)
    if len(lines) > len(expected):
        raise FormatError(
            f"line {len(expected) + 1}: {lines[len(expected)][:60]!r} after `boot`, "
            "expected the end of the script"
        )
    return NetbootScript(label, params)


def unexpected(lines: list[str], number: int, label: str = "<label>") -> FormatError:
    """Line `number` (1-based) is not the one the shape has there (for `label`)."""
    want = EXPECTED[number - 1].replace("<label>", label)
    if len(lines) < number:
        return FormatError(f"line {number}: missing, expected `{want}`")
    return FormatError(f"line {number}: {lines[number - 1][:60]!r}, expected `{want}`")
