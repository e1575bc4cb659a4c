"""Finding profiles: the search path (user directories first, then the built-in profiles/),
the names it holds, and the chain of files `extends` makes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from plasmaboot.errors import UserError
from plasmaboot.paths import builtin_profiles_dir
from plasmaboot.profiles.located_errors import display_path, render_value, suggestion
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.resolve import resolve_profile
from plasmaboot.profiles.source import ProfileSource, load_source


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

    def profile_names(self) -> list[str]:
        names: dict[str, None] = {}
        for directory in self.dirs:
            for path in sorted(directory.glob("*.toml")):
                names.setdefault(path.stem, None)
        return list(names)

    def variant_names(self) -> list[str]:
        names: dict[str, None] = {}
        for directory in self.dirs:
            for path in sorted((directory / "variants").glob("*.toml")):
                names.setdefault(path.stem, None)
        return list(names)

    def locate(self, name: str, kind: str = "profile") -> tuple[Path, Path] | None:
        """(file, profile directory) of the first `name` in the search path, if any."""
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
        chain = self.chain(name)
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

    def chain(self, name: str, stack: tuple[ProfileSource, ...] = ()) -> list[ProfileSource]:
        """The files to merge for `name`, parents first (depth-first, in `extends` order).

        `stack` holds the profiles that (transitively) extend `name`, the nearest last.
        """
        names = [s.name for s in stack]
        if name in names:
            cycle = " -> ".join([*names[names.index(name) :], name])
            raise UserError(
                f"{stack[-1].display}: extends: expected a profile that does not extend "
                f"{render_value(stack[-1].name)}, got {render_value(name)} (cycle {cycle})",
                hint="remove one of the `extends` in the cycle",
            )
        if stack and self.locate(name) is None:
            raise self.unknown(name, "profile", where=f"{stack[-1].display}: extends: ")
        source = self.find(name)
        parents = source.parsed.extends
        parent_list = [parents] if isinstance(parents, str) else list(parents or [])
        files: list[ProfileSource] = []
        for parent in parent_list:
            for item in self.chain(parent, (*stack, source)):
                if item.path not in [f.path for f in files]:
                    files.append(item)
        files.append(source)
        return files
