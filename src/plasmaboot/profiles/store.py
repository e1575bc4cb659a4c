"""Finding profiles: the search path (user directories first, then the built-in profiles/),
the names it holds, and the chain of files `extends` makes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from plasmaboot.errors import UserError
from plasmaboot.paths import builtin_profiles_dir
from plasmaboot.profiles.located_errors import display_path, render_value, suggestion
from plasmaboot.profiles.model import NAME_PATTERN, Profile
from plasmaboot.profiles.resolve import resolve_profile
from plasmaboot.profiles.source import ProfileSource, load_source

# How many profiles deep `extends` may go; real chains are a handful deep.
MAX_EXTENDS_DEPTH = 64


def is_name(name: str) -> bool:
    """The one rule for a profile or variant name wherever it comes from (the command
    line, a file name in a profiles directory, `extends`, an inventory): lowercase letters,
    digits and '-', so it is never a path (`../x`, `/abs`, `a/b`) and always a safe label."""
    return re.fullmatch(NAME_PATTERN, name, flags=re.ASCII) is not None


def check_name(name: str, kind: str, where: str = "") -> None:
    """A UserError naming `where` unless `name` keeps the name rule (is_name)."""
    if is_name(name):
        return
    raise UserError(
        f"{where}expected a {kind} name of lowercase letters, digits and '-', "
        f"got {render_value(name)}",
        hint=f"a {kind} is named by its file, <name>.toml in a profiles directory; "
        "name it, not a path",
    )


class ProfileStore:
    """Profiles and variants found in the search path (user directories first, then built-in)."""

    def __init__(self, extra_dirs: Iterable[Path] = ()) -> None:
        self.dirs: list[Path] = []
        for directory in [*extra_dirs, builtin_profiles_dir()]:
            if not directory.is_dir():
                raise UserError(
                    f"--profiles-dir: expected a directory, got {render_value(str(directory))}",
                    hint="pass a directory that holds <name>.toml profile files",
                )
            if directory.resolve() not in [d.resolve() for d in self.dirs]:
                self.dirs.append(directory)
        self.chains: dict[str, tuple[ProfileSource, ...]] = {}  # resolved once per name

    def profile_names(self) -> list[str]:
        return self.names_in("", "profile")

    def variant_names(self) -> list[str]:
        return self.names_in("variants", "variant")

    def names_in(self, subdirectory: str, kind: str) -> list[str]:
        """The names of the `*.toml` files in each directory's `subdirectory`, first one
        first; a file whose name breaks the name rule is an error naming it (its name would
        reach labels, paths and the boot script)."""
        names: dict[str, None] = {}
        for directory in self.dirs:
            folder = directory / subdirectory
            for path in sorted(folder.glob("*.toml")):
                where = f"{display_path(folder)}: file {render_value(path.name)}: "
                check_name(path.stem, kind, where=where)
                names.setdefault(path.stem, None)
        return list(names)

    def locate(self, name: str, kind: str = "profile") -> tuple[Path, Path] | None:
        """(file, profile directory) of the first `name` in the search path, if any."""
        if not is_name(name):
            return None
        for directory in self.dirs:
            path = directory / ("variants" if kind == "variant" else "") / f"{name}.toml"
            try:
                if path.is_file():
                    return path, directory
            except OSError:  # a name too long for a file name is no profile either
                continue
        return None

    def find(self, name: str, kind: str = "profile") -> ProfileSource:
        found = self.locate(name, kind)
        if found is None:
            raise self.unknown(name, kind)
        return load_source(*found, name)

    def unknown(self, name: str, kind: str, where: str = "") -> UserError:
        known = self.variant_names() if kind == "variant" else self.profile_names()
        searched = ", ".join(display_path(d) for d in self.dirs)
        return UserError(
            f"{where}unknown {kind} {render_value(name)}{suggestion(name, known)}",
            hint=f"known {kind}s: {', '.join(known)} (searched {searched})",
        )

    def resolve(self, name: str, variant: str | None = None) -> Profile:
        check_name(name, "profile")
        if variant is not None:
            check_name(variant, "variant", where="--variant: ")
        chain = list(self.chain(name))
        if variant is not None:
            if self.locate(variant, "variant") is None:
                raise self.unknown(variant, "variant", where="--variant: ")
            overlay = self.find(variant, "variant")
            if overlay.parsed.extends is not None:
                raise UserError(
                    f"{overlay.display}: extends: expected no `extends` in a variant, "
                    f"got {render_value(overlay.parsed.extends)}",
                    hint="a variant applies on top of whatever profile it is used with",
                )
            chain.append(overlay)
        return resolve_profile(name, variant, chain)

    def chain(self, name: str, stack: tuple[ProfileSource, ...] = ()) -> tuple[ProfileSource, ...]:
        """The files to merge for `name`, parents first (depth-first, in `extends` order).

        `stack` holds the profiles that (transitively) extend `name`, the nearest last. Each
        name's chain is worked out once (a diamond of parents is linear, not exponential),
        and a chain deeper than MAX_EXTENDS_DEPTH is an error, never a RecursionError.
        """
        names = [s.name for s in stack]
        if name in names:
            cycle = " -> ".join([*names[names.index(name) :], name])
            raise UserError(
                f"{stack[-1].display}: extends: expected a profile that does not extend "
                f"{render_value(stack[-1].name)}, got {render_value(name)} (cycle {cycle})",
                hint="remove one of the `extends` in the cycle",
            )
        if name in self.chains:
            return self.chains[name]
        if len(stack) >= MAX_EXTENDS_DEPTH:
            raise UserError(
                f"{stack[-1].display}: extends: expected at most {MAX_EXTENDS_DEPTH} profiles "
                f"in a chain of `extends`, got more (from {render_value(stack[0].name)})",
                hint="flatten the chain: a profile can extend several parents at once",
            )
        if stack and self.locate(name) is None:
            raise self.unknown(name, "profile", where=f"{stack[-1].display}: extends: ")
        source = self.find(name)
        parents = source.parsed.extends
        parent_list = [parents] if isinstance(parents, str) else list(parents or [])
        files: dict[Path, ProfileSource] = {}
        for parent in parent_list:
            for item in self.chain(parent, (*stack, source)):
                files.setdefault(item.path, item)
        files.setdefault(source.path, source)
        self.chains[name] = tuple(files.values())
        return self.chains[name]
