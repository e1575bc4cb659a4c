"""The backend registry: every backend by name, with its options, and the choice `--backend`
makes among them (a name, or `auto`). The pipeline and the command line find backends here
and never name one.

Each backend module registers itself (`register(BackendType(...))`). The built-in modules
are imported on first use, not with this package: the mmdebstrap hook is a module of this
package too, and runs in the chroot without the parent's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from plasmaboot.errors import UserError
from plasmaboot.image.backend import Backend, BackendOptions, BackendType, OptionInfo

AUTO = "auto"
BUILTIN_MODULES = ("plasmaboot.image.backends.debian.backend", "plasmaboot.image.backends.nix")

_registry: dict[str, BackendType[Any]] = {}


def register(backend: BackendType[Any]) -> None:
    """Add a backend. Its options must not share a flag with another backend's."""
    taken = {info.flag: other.name for other in _registry.values() for info in option_infos(other)}
    for info in option_infos(backend):
        owner = taken.get(info.flag)
        if owner is not None and owner != backend.name:
            raise ValueError(f"{backend.name}: option {info.flag} is already {owner}'s")
    _registry[backend.name] = backend


def load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def backend_types() -> list[BackendType[Any]]:
    """Every registered backend, in the order they registered."""
    load_builtin()
    return list(_registry.values())


def backend_names() -> list[str]:
    return [backend.name for backend in backend_types()]


def choices() -> list[str]:
    """What `--backend` accepts."""
    return [AUTO, *backend_names()]


def get(name: str) -> BackendType[Any]:
    load_builtin()
    if name not in _registry:
        raise UserError(f"--backend: expected one of {', '.join(choices())}, got {name!r}")
    return _registry[name]


def option_infos(backend: BackendType[Any]) -> list[OptionInfo]:
    options: type[BackendOptions] = backend.options
    return options.describe()


def options_from_values(values: Mapping[str, Any]) -> dict[str, BackendOptions]:
    """Each backend's options from the values of every backend's options by field name
    (the command line's), defaults where a value is missing."""
    return {
        backend.name: backend.options(
            **{
                info.name: values[info.name]
                for info in option_infos(backend)
                if info.name in values
            }
        )
        for backend in backend_types()
    }


def select_backend(choice: str, options: Mapping[str, BackendOptions]) -> tuple[Backend, str]:
    """The backend to build with, made with its options, and why (the build announces it).

    A backend asked for by name refuses another backend's options; `auto` takes the first
    suitable backend by `auto_rank` (the last if none is: its availability check then says
    what to install) and names the options it leaves unused."""
    if choice != AUTO:
        chosen = get(choice)
        foreign = foreign_options(chosen, options)
        if foreign:
            given, owner = foreign[0]
            raise UserError(
                f"{given} applies only to the {owner} backend, and --backend {choice} was given",
                hint=f"drop {given}, or build with --backend {owner}",
            )
        return chosen.create(options.get(chosen.name)), "asked for"
    ranked = sorted(backend_types(), key=lambda candidate: candidate.auto_rank)
    passed_over: list[str] = []
    for candidate in ranked:
        backend = candidate.create(options.get(candidate.name))
        verdict = backend.suitability()
        if verdict.usable or candidate is ranked[-1]:
            reasons = [*passed_over, verdict.reason] if verdict.usable else passed_over
            unused = "".join(
                f", {given} not used" for given, _ in foreign_options(candidate, options)
            )
            return backend, f"{AUTO}: {'; '.join(r for r in reasons if r)}{unused}"
        passed_over.append(verdict.reason)
    raise UserError("no backend is registered")


def foreign_options(
    chosen: BackendType[Any], options: Mapping[str, BackendOptions]
) -> list[tuple[str, str]]:
    """(flag, owner) of every option given (not at its default) for another backend."""
    return [
        (given, name)
        for name, values in options.items()
        if name != chosen.name
        for given in values.given()
    ]
