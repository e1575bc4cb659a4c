"""What the Debian backend and its mmdebstrap hook agree on. They are two processes that
share only files: the plan the backend uploads into the chroot, and the out directory the
hook fills and mmdebstrap syncs back. Both sides name those files through this module, and
the backend reads the outputs back through `HookOutputs.read()`, which names the file that
is missing or wrong."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from plasmaboot.artifacts.layout import ROOT_SQUASHFS
from plasmaboot.errors import WorkError
from plasmaboot.profiles.model import Profile

# Where the plan is uploaded and the outputs are left, inside the chroot: under /tmp,
# which the squashfs leaves out.
INSIDE_PLAN = "/tmp/plasmaboot-plan.json"
INSIDE_OUT = "/tmp/plasmaboot-out"
KERNEL_VERSION_PATTERN = re.compile(r"^[0-9][A-Za-z0-9._+~-]*$")
T = TypeVar("T")

# The root squashfs's compressors, each with the block size it gets unless the build says
# otherwise (`--squashfs-block-size`). zstd (level 19) in 1 MiB blocks is the default:
# control-plane's kernel + initrd 93.3 MB (mkosi's 96.3), and PXE -> SSH 19.4 s against
# 22.3 s for zstd 9 in 128 KiB blocks under TCG on a calm machine (zstd decodes a 1 MiB
# block fast; fewer, larger reads). xz with the x86 filter in 1 MiB blocks is smaller still
# (90.8 MB) but reached SSH 3.4 s later (docs/benchmarks.md, #16 "Size").
SQUASHFS_BLOCK_SIZES = {"zstd": 1024 * 1024, "xz": 1024 * 1024}
DEFAULT_SQUASHFS_COMPRESSION = "zstd"


class HookPlan(BaseModel):
    """What the backend asks the hook to do: everything the hook knows of the build. The
    hook makes the package layer, shared by every profile with the same packages, so it
    gets only the settings that layer depends on (they are part of its cache key), never
    the whole profile: the profile layer (profile_layer) applies the rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    documentation: bool  # system.documentation: keep man pages, info, translations
    include_modules: tuple[str, ...]  # kernel.include_modules globs
    exclude_modules: tuple[str, ...]  # kernel.exclude_modules globs
    squashfs_level: int  # zstd's level (xz has none)
    squashfs_compression: Literal["zstd", "xz"]
    squashfs_block_size: int  # bytes: a power of two from 4 KiB to 1 MiB

    @classmethod
    def for_profile(
        cls,
        profile: Profile,
        squashfs_level: int,
        squashfs_compression: str = DEFAULT_SQUASHFS_COMPRESSION,
        squashfs_block_size: int | None = None,
    ) -> HookPlan:
        """The plan for `profile`; the block size, unless given, is the compressor's own
        (SQUASHFS_BLOCK_SIZES)."""
        if squashfs_block_size is None:
            squashfs_block_size = SQUASHFS_BLOCK_SIZES.get(squashfs_compression, 0)
        return cls.model_validate(
            {
                "documentation": profile.system.documentation,
                "include_modules": tuple(profile.kernel.include_modules),
                "exclude_modules": tuple(profile.kernel.exclude_modules),
                "squashfs_level": squashfs_level,
                "squashfs_compression": squashfs_compression,
                "squashfs_block_size": squashfs_block_size,
            }
        )

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, path: Path) -> HookPlan:
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise WorkError(f"hook plan {path}: cannot read ({exc.strerror})") from exc
        except ValidationError as exc:
            raise WorkError(
                f"hook plan {path}: not a valid plan: {exc.errors()[0]['msg']}"
            ) from exc


class Output(StrEnum):
    """The hook's outputs, by their names in the out directory."""

    KERNEL = "bzImage"
    KERNEL_VERSION = "kernel_version"
    ROOT_SQUASHFS = ROOT_SQUASHFS
    STAGE1_MODULES = "stage1-modules"  # a directory: the modules stage-1 loads
    STAGE1_ORDER = "stage1-modules.txt"  # their file names, in load order
    PACKAGES = "packages.json"  # {package: version}
    STEPS = "steps.json"  # {step: seconds}
    UNITS = "units.json"  # {unit file: UnitInstall}: what the profile layer enables
    ACCOUNTS = "accounts"  # a directory: the image's passwd, group, shadow, gshadow
    # the installed system's initramfs (generic: every storage, filesystem, RAID and LVM
    # driver of the image), for `plasmaboot install`; optional (older cache entries lack it)
    INSTALLED_INITRD = "installed-initrd"


OPTIONAL_OUTPUTS = frozenset({Output.INSTALLED_INITRD})


# The account files the profile layer adds service users to (copies of the package layer's).
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")


class UnitInstall(BaseModel):
    """A unit file of the package layer and its [Install] section: what `systemctl enable`
    reads, so the profile layer can enable units without a chroot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str  # absolute, inside the image: /usr/lib/systemd/system/ssh.service
    wanted_by: tuple[str, ...] = ()
    required_by: tuple[str, ...] = ()
    alias: tuple[str, ...] = ()
    also: tuple[str, ...] = ()
    default_instance: str | None = None


def parse_install(path: str, text: str) -> UnitInstall:
    """A unit file's [Install] section, as systemctl reads it (an empty value resets)."""
    keys = {"WantedBy": "wanted_by", "RequiredBy": "required_by", "Alias": "alias", "Also": "also"}
    values: dict[str, list[str]] = {field: [] for field in keys.values()}
    default_instance = None
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if section != "[Install]":
            continue
        if key == "DefaultInstance":
            default_instance = value or None
        elif key in keys:
            values[keys[key]] = values[keys[key]] + value.split() if value else []
    return UnitInstall(
        path=path,
        wanted_by=tuple(values["wanted_by"]),
        required_by=tuple(values["required_by"]),
        alias=tuple(values["alias"]),
        also=tuple(values["also"]),
        default_instance=default_instance,
    )


# Optional (older hooks did not write it; a build without it has no sizes in its manifest):
# {"packages": {package: bytes installed}, "modules": {module tree: bytes}}.
SIZES = "sizes.json"

PACKAGES_JSON: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])
SIZES_JSON: TypeAdapter[dict[str, dict[str, int]]] = TypeAdapter(dict[str, dict[str, int]])
UNITS_JSON: TypeAdapter[dict[str, UnitInstall]] = TypeAdapter(dict[str, UnitInstall])
STEPS_JSON: TypeAdapter[dict[str, float]] = TypeAdapter(dict[str, float])


@dataclass(frozen=True)
class HookResult:
    """The outputs, read back and checked."""

    kernel: Path
    kernel_version: str
    root_squashfs: Path
    stage1_modules: tuple[Path, ...]  # in load order
    stage1_order: Path  # the list stage-1 reads (etc/stage1-modules)
    packages: dict[str, str]
    steps: dict[str, float]
    package_sizes: dict[str, int] = field(default_factory=dict)
    module_sizes: dict[str, int] = field(default_factory=dict)
    units: dict[str, UnitInstall] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)  # ACCOUNT_FILES by name -> text
    installed_initrd: Path | None = None  # Output.INSTALLED_INITRD, when the hook made one


@dataclass(frozen=True)
class HookOutputs:
    """The out directory: the hook writes it with these methods, the backend reads it."""

    directory: Path

    def path(self, output: Output) -> Path:
        return self.directory / output

    # -- the hook's side

    def write_kernel_version(self, version: str) -> None:
        self.path(Output.KERNEL_VERSION).write_text(f"{version}\n")

    def stage1_dir(self) -> Path:
        target = self.path(Output.STAGE1_MODULES)
        target.mkdir(parents=True, exist_ok=True)
        return target

    def write_stage1_order(self, names: list[str]) -> None:
        self.path(Output.STAGE1_ORDER).write_text("".join(f"{name}\n" for name in names))

    def write_packages(self, packages: dict[str, str]) -> None:
        self.path(Output.PACKAGES).write_text(json.dumps(packages, indent=1, sort_keys=True))

    def write_sizes(self, packages: dict[str, int], modules: dict[str, int]) -> None:
        sizes = {"packages": packages, "modules": modules}
        (self.directory / SIZES).write_text(json.dumps(sizes, indent=1, sort_keys=True))

    def write_steps(self, steps: dict[str, float]) -> None:
        self.path(Output.STEPS).write_text(json.dumps(steps, indent=1))

    def write_units(self, units: dict[str, UnitInstall]) -> None:
        self.path(Output.UNITS).write_bytes(UNITS_JSON.dump_json(units, indent=1))

    def accounts_dir(self) -> Path:
        target = self.path(Output.ACCOUNTS)
        target.mkdir(parents=True, exist_ok=True)
        return target

    # -- the backend's side

    def read(self) -> HookResult:
        """Every output, checked: a missing or malformed one is a WorkError naming it."""
        for output in Output:
            if output not in OPTIONAL_OUTPUTS:
                self.require(output)
        version = self.text(Output.KERNEL_VERSION).strip()
        if not KERNEL_VERSION_PATTERN.match(version):
            raise self.invalid(Output.KERNEL_VERSION, f"{version!r} is not a kernel version")
        modules = self.path(Output.STAGE1_MODULES)
        names = self.text(Output.STAGE1_ORDER).split()
        missing = [name for name in names if not (modules / name).is_file()]
        if missing:
            raise self.invalid(Output.STAGE1_ORDER, f"lists {missing[0]}, which is not there")
        return HookResult(
            kernel=self.path(Output.KERNEL),
            kernel_version=version,
            root_squashfs=self.path(Output.ROOT_SQUASHFS),
            stage1_modules=tuple(modules / name for name in names),
            stage1_order=self.path(Output.STAGE1_ORDER),
            packages=self.parsed(Output.PACKAGES, PACKAGES_JSON),
            steps=self.parsed(Output.STEPS, STEPS_JSON),
            units=self.parsed(Output.UNITS, UNITS_JSON),
            accounts=self.accounts(),
            installed_initrd=self.optional_file(Output.INSTALLED_INITRD),
            **self.sizes(),
        )

    def optional_file(self, output: Output) -> Path | None:
        """An optional output: its path, None when the hook left none (an older entry)."""
        path = self.path(output)
        if not path.exists():
            return None
        self.require(output)
        return path

    def sizes(self) -> dict[str, dict[str, int]]:
        """The optional sizes.json as HookResult's fields ({} when the hook wrote none)."""
        path = self.directory / SIZES
        if not path.is_file():
            return {}
        try:
            sizes = SIZES_JSON.validate_json(path.read_bytes())
        except ValidationError as exc:
            raise WorkError(
                f"the mmdebstrap hook's {SIZES} is not valid: {exc.errors()[0]['msg']}"
            ) from exc
        return {
            "package_sizes": sizes.get("packages", {}),
            "module_sizes": sizes.get("modules", {}),
        }

    def accounts(self) -> dict[str, str]:
        directory = self.path(Output.ACCOUNTS)
        missing = [name for name in ACCOUNT_FILES if not (directory / name).is_file()]
        if missing:
            raise self.invalid(Output.ACCOUNTS, f"{missing[0]} is missing")
        return {name: (directory / name).read_text(encoding="utf-8") for name in ACCOUNT_FILES}

    def require(self, output: Output) -> None:
        path = self.path(output)
        if output in (Output.STAGE1_MODULES, Output.ACCOUNTS):
            if not path.is_dir():
                raise WorkError(
                    f"the mmdebstrap hook left no {output}/ directory in {self.directory}"
                )
            return
        if not path.is_file():
            raise WorkError(f"the mmdebstrap hook left no {output} in {self.directory}")
        if output is not Output.STAGE1_ORDER and path.stat().st_size == 0:
            raise self.invalid(output, "it is empty")

    def text(self, output: Output) -> str:
        try:
            return self.path(output).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise self.invalid(output, "it is not UTF-8 text") from exc

    def parsed(self, output: Output, adapter: TypeAdapter[T]) -> T:
        try:
            return adapter.validate_json(self.path(output).read_bytes())
        except ValidationError as exc:
            raise self.invalid(output, exc.errors()[0]["msg"]) from exc

    def invalid(self, output: Output, problem: str) -> WorkError:
        return WorkError(f"the mmdebstrap hook's {output} is not valid: {problem}")
