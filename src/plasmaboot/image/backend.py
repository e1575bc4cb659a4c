"""The interface every backend implements, and how a backend describes its options.

A backend turns a resolved Profile into a kernel and an initrd in a staging directory; the
pipeline does the rest (iPXE script, manifest, checks, publishing), so every backend gives
the same artifact set. Each backend owns its options: one frozen dataclass whose fields
carry their defaults and help texts (the command line is made from them) and whose
`check()` refuses a bad value before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from plasmaboot.artifacts.manifest import LayerRecord
from plasmaboot.errors import UserError
from plasmaboot.log import Log
from plasmaboot.profiles.model import Profile


@dataclass(frozen=True)
class BuildRequest:
    """One profile to build: what every backend gets, whatever its options."""

    profile: Profile
    staging: Path  # write bzImage and initrd here
    log: Log
    ssh_keys: tuple[Path, ...] = ()  # extra public keys from --ssh-key
    cache_dir: Path | None = None  # shared cache (e.g. downloaded .deb files, layers)
    use_cache: bool = True  # False (--no-cache): rebuild cached layers too, and store them


@dataclass(frozen=True)
class BuildResult:
    kernel_version: str
    distro: str  # "debian bookworm", "nixos 24.05", ...
    extra_kernel_params: tuple[str, ...] = ()  # nix: ("init=/nix/store/...-toplevel/init",)
    packages: dict[str, str] = field(default_factory=dict)  # name -> version
    package_sizes: dict[str, int] = field(default_factory=dict)  # name -> bytes installed
    module_sizes: dict[str, int] = field(default_factory=dict)  # module tree -> bytes
    layers: tuple[LayerRecord, ...] = ()  # the image's layers, built or reused


@dataclass(frozen=True)
class Suitability:
    """What `--backend auto` learns from a backend: can it build here, and why (the build
    announces the reason)."""

    usable: bool
    reason: str = ""


class Backend(Protocol):
    name: str
    # whether `build --ssh-key` reaches the image (the Nix backend's keys come only from the
    # profile's ssh.authorized_keys, which the flake evaluates)
    takes_ssh_keys: bool

    def check_options(self) -> None:
        """Raise UserError naming the option when one of the backend's options is wrong."""

    def check_available(self) -> None:
        """Raise UserError naming what to install when the backend cannot run here."""

    def suitability(self) -> Suitability:
        """Whether `--backend auto` may pick this backend here, and why."""

    def cache_inputs(self, request: BuildRequest) -> dict[str, str]:
        """Everything besides the profile that changes the image (for the cache key)."""

    def build(self, request: BuildRequest) -> BuildResult:
        """Write `bzImage` and `initrd` into request.staging."""


# --------------------------------------------------------------------------------------
# Options: one frozen dataclass per backend, each field one row (default, help, range)


def option(
    default: Any,
    *,
    help: str,
    metavar: str | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any:
    """A backend option: a dataclass field whose metadata the command line is made from."""
    metadata = {"help": help, "metavar": metavar, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=metadata)


def flag(name: str) -> str:
    """The command-line spelling of an option: `squashfs_level` is `--squashfs-level`."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class OptionInfo:
    """One backend option as the command line shows it."""

    name: str
    default: Any
    help: str
    value_type: type  # str, int or Path (None is allowed when the default is None)
    metavar: str | None
    minimum: int | None
    maximum: int | None

    @property
    def flag(self) -> str:
        return flag(self.name)


@dataclass(frozen=True)
class BackendOptions:
    """The base of every backend's options. Subclasses add fields made with `option()`
    and extend `check()`."""

    @classmethod
    def describe(cls) -> list[OptionInfo]:
        hints = typing.get_type_hints(cls)
        return [
            OptionInfo(
                name=item.name,
                default=item.default,
                help=item.metadata["help"],
                value_type=value_type(hints[item.name]),
                metavar=item.metadata["metavar"],
                minimum=item.metadata["minimum"],
                maximum=item.metadata["maximum"],
            )
            for item in dataclasses.fields(cls)
        ]

    def check(self) -> None:
        """Refuse a value outside its option's range; subclasses check the rest."""
        for info in self.describe():
            value = getattr(self, info.name)
            low, high = info.minimum, info.maximum
            in_range = low is None or high is None or low <= value <= high
            if isinstance(value, int) and not in_range:
                raise UserError(f"{info.flag}: expected {low} to {high}, got {value}")

    def given(self) -> list[str]:
        """The flags of the options whose values are not their defaults."""
        return [info.flag for info in self.describe() if getattr(self, info.name) != info.default]


def value_type(hint: Any) -> type:
    """`str` from `str`, `Path` from `Path | None`: the type the command line parses."""
    if isinstance(hint, types.UnionType):
        (single,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return value_type(single)
    if not isinstance(hint, type):
        raise TypeError(f"a backend option must be a plain type, not {hint!r}")
    return hint


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


@dataclass(frozen=True)
class BackendType(Generic[OptionsT]):
    """A backend as the registry knows it: its name, its options and how to make one.
    `auto` tries the backends by ascending `auto_rank`; the last one it tries is taken
    even when unsuitable, so its own availability check tells the user what to install."""

    name: str
    options: type[OptionsT]
    make: Callable[[OptionsT], Backend]
    auto_rank: int

    def create(self, options: BackendOptions | None = None) -> Backend:
        """The backend, made with `options` (its defaults when None)."""
        if options is None:
            return self.make(self.options())
        if not isinstance(options, self.options):
            raise TypeError(f"{self.name} takes {self.options.__name__}, not {options!r}")
        return self.make(options)
