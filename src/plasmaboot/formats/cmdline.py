"""The kernel command line as plasmaboot writes it into an iPXE `kernel` line: the one rule
for what a parameter may contain.

A parameter ends up inside an iPXE script, where whitespace separates words, `||`, `&&` and
`;`-like words chain commands, `${...}` expands variables and a newline starts a new command.
So a parameter is one word of a small, safe alphabet: enough for `console=ttyS0,115200n8`,
`ip=10.0.0.2::10.0.0.1:255.255.255.0:node1::none`, `init=/nix/store/<hash>-x/init` or
`plasmaboot.overlay_size=50%`, and nothing an iPXE script (or a shell) treats specially.
"""

from __future__ import annotations

import re

from plasmaboot.formats import FormatError

PARAM_CHARS = r"A-Za-z0-9._,:=/@+%~-"
PARAM = re.compile(rf"[{PARAM_CHARS}]+")
MAX_PARAM_LENGTH = 1024
# The kernel's own limit for the whole line on x86 (COMMAND_LINE_SIZE).
MAX_CMDLINE_LENGTH = 2048
PARAM_EXPECTATION = (
    "a kernel parameter of letters, digits and . _ , : = / @ + % ~ - "
    "(no spaces, quotes, $, ;, |, & or newlines)"
)


def check_param(param: str) -> None:
    """FormatError unless `param` is one safe word (see the module's docstring)."""
    if not param:
        raise FormatError("an empty kernel parameter")
    if len(param) > MAX_PARAM_LENGTH:
        raise FormatError(
            f"a kernel parameter of {len(param)} characters (at most {MAX_PARAM_LENGTH})"
        )
    if not PARAM.fullmatch(param):
        bad = next(char for char in param if not PARAM.fullmatch(char))
        raise FormatError(f"{bad!r} is not allowed in {PARAM_EXPECTATION}")


def check_cmdline(params: list[str]) -> None:
    """Every parameter is safe, and the line fits the kernel's limit."""
    for param in params:
        check_param(param)
    length = len(" ".join(params))
    if length > MAX_CMDLINE_LENGTH:
        raise FormatError(
            f"the command line is {length} characters (the kernel takes {MAX_CMDLINE_LENGTH})"
        )
