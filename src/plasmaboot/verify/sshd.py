"""What sshd in an image would use, worked out as sshd does: the first value of each
keyword, reading /etc/ssh/sshd_config and each file it `Include`s where the Include stands;
values inside `Match` blocks are kept apart (they apply to some connections only)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from plasmaboot.formats import FormatError
from plasmaboot.verify.tree import ImageTree

# The settings that decide whether login needs a key, with sshd's defaults.
SSHD_DEFAULTS = {
    "permitrootlogin": "prohibit-password",
    "passwordauthentication": "yes",
    "kbdinteractiveauthentication": "yes",
}
# Keywords that add a way in besides root's authorized_keys; their values are kept whole.
LOGIN_KEYWORDS = (
    "authorizedkeysfile",
    "authorizedkeyscommand",
    "authorizedprincipalsfile",
    "authorizedprincipalscommand",
)
SSHD_ALIASES = {"challengeresponseauthentication": "kbdinteractiveauthentication"}
SSHD_LINE = re.compile(r"^(\S+?)(?:\s*=\s*|\s+)(.*)$")
SSHD_MAX_DEPTH = 16


@dataclass
class SshdConfig:
    """What sshd would use: the first value of each keyword outside Match blocks, plus
    every value inside Match blocks (those apply to some connections)."""

    settings: dict[str, str]
    in_match: list[tuple[str, str, str]]  # (file, keyword, value)
    files: list[str]
    # AuthorizedKeysFile's first value outside Match blocks: all its arguments, as written
    authorized_keys_files: list[str] | None = None
    login: dict[str, str] = field(default_factory=dict)  # LOGIN_KEYWORDS, values whole


def sshd_arguments(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def read_sshd_config(tree: ImageTree) -> SshdConfig:
    config = SshdConfig({}, [], [])
    read_sshd_file(tree, "etc/ssh/sshd_config", config, in_match=False, depth=0)
    return config


def read_sshd_file(
    tree: ImageTree, path: str, config: SshdConfig, in_match: bool, depth: int
) -> None:
    if depth > SSHD_MAX_DEPTH:
        raise FormatError(f"sshd Include nesting deeper than {SSHD_MAX_DEPTH} at /{path}")
    text = tree.read_text(path)
    if text is None:
        raise FormatError(f"/{path} is missing")
    config.files.append(path)
    for raw in text.splitlines():
        line = raw.strip()
        match = SSHD_LINE.match(line)
        if not line or line.startswith("#") or match is None:
            continue
        keyword = match[1].lower()
        keyword = SSHD_ALIASES.get(keyword, keyword)
        arguments = sshd_arguments(match[2])
        if keyword == "match":
            in_match = True  # to the end of this file, as sshd scopes Match in an include
        elif keyword == "include":
            for pattern in arguments:
                absolute = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
                for included in tree.glob(absolute):
                    read_sshd_file(tree, included, config, in_match, depth + 1)
        elif keyword in LOGIN_KEYWORDS and arguments:
            if in_match:
                config.in_match.append((path, keyword, " ".join(arguments)))
            else:
                config.login.setdefault(keyword, " ".join(arguments))
                if keyword == "authorizedkeysfile" and config.authorized_keys_files is None:
                    config.authorized_keys_files = arguments
        elif keyword in SSHD_DEFAULTS and arguments:
            value = arguments[0].lower()
            if in_match:
                config.in_match.append((path, keyword, value))
            else:
                config.settings.setdefault(keyword, value)
