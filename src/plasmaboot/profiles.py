"""Profiles: the TOML schema (pydantic), loading, inheritance, variants and content hash.

A profile file is plain TOML (Nix reads the same files with `builtins.fromTOML`). Files are
validated one by one, so an error names the file that holds the bad value; then the chain
of `extends` is merged (lists append, tables merge, `"!item"` and `unset` remove) and the
result is validated again as a whole (services against the catalog, port clashes).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from plasmaboot.errors import UserError
from plasmaboot.paths import builtin_profiles_dir
from plasmaboot.services import PORT_MAX, PORT_MIN, CatalogService, load_catalog

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SYSCTL_PATTERN = r"^[a-z0-9_]+(\.[A-Za-z0-9_*-]+)+$"
MEMORY_PATTERN = r"^(\d+[KMGT]?|infinity)$"
CPU_QUOTA_PATTERN = r"^\d+%$"
PACKAGE_PATTERN = r"^!?[a-z0-9][a-z0-9+.-]*$"
REMOVE_PREFIX = "!"

ProfileName = Annotated[str, Field(pattern=NAME_PATTERN)]
PackageName = Annotated[str, Field(pattern=PACKAGE_PATTERN)]
MemoryMax = Annotated[str, Field(pattern=MEMORY_PATTERN)]
CpuQuota = Annotated[str, Field(pattern=CPU_QUOTA_PATTERN)]
SysctlValue = int | str


class Section(BaseModel):
    """A table of a profile file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SshSection(Section):
    authorized_keys: list[str] | None = Field(
        None, description="Public key files for root, relative to the profile directory."
    )


class KernelSection(Section):
    params: list[str] | None = Field(None, description="Kernel command line parameters.")
    modules: list[str] | None = Field(None, description="Kernel modules loaded at boot.")
    include_modules: list[str] | None = Field(
        None, description="Globs (under kernel/) of module trees kept in the image."
    )
    exclude_modules: list[str] | None = Field(
        None, description="Globs (under kernel/) dropped even if included."
    )
    firmware: list[PackageName] | None = Field(
        None, description="Firmware packages to install (firmware is opt-in)."
    )


class NetworkSection(Section):
    dhcp: bool | None = Field(None, description="DHCP on every Ethernet NIC.")
    predictable_names: bool | None = Field(None, description="Predictable interface names.")


class ConsoleSection(Section):
    serial: str | None = Field(None, pattern=r"^tty[A-Za-z]+\d+$", description="Serial tty.")
    baud: int | None = Field(None, ge=1200, le=4000000, description="Serial speed.")


class SystemSection(Section):
    locales: list[str] | None = Field(None, description="Locales kept (others dropped).")
    documentation: bool | None = Field(None, description="Keep docs and man pages.")


class LimitsSection(Section):
    memory_max: MemoryMax | None = Field(None, description="systemd MemoryMax= of services.")
    cpu_quota: CpuQuota | None = Field(None, description="systemd CPUQuota= of services.")


class ServiceSection(Section):
    """A service's settings in a profile; its port options come from the catalog."""

    model_config = ConfigDict(extra="allow", frozen=True)

    enable: bool | None = Field(None, description="Start at boot (default false).")
    package: str | None = Field(
        None, description="A .deb with the service binary, relative to the profile directory."
    )
    settings: dict[str, Any] | None = Field(
        None, description="Free-form settings rendered to the service's config file."
    )
    memory_max: MemoryMax | None = None
    cpu_quota: CpuQuota | None = None


class ProfileFile(Section):
    """One profile (or variant) file, exactly as written."""

    name: str | None = Field(None, description="Must equal the file name, if given.")
    description: str | None = None
    extends: ProfileName | list[ProfileName] | None = Field(
        None, description="Parent profile(s), merged in order before this file."
    )
    unset: list[str] | None = Field(
        None, description='Inherited settings to drop, e.g. "services" or "sysctl.fs.file-max".'
    )
    packages: list[PackageName] | None = Field(
        None, description='Packages (abstract names); "!name" removes an inherited one.'
    )
    ssh: SshSection | None = None
    kernel: KernelSection | None = None
    network: NetworkSection | None = None
    console: ConsoleSection | None = None
    system: SystemSection | None = None
    sysctl: dict[Annotated[str, Field(pattern=SYSCTL_PATTERN)], SysctlValue] | None = None
    service_defaults: LimitsSection | None = Field(
        None, description="Resource limits applied to every service of the profile."
    )
    services: dict[str, ServiceSection] | None = Field(
        None, description="PlasmaCloud services in the image (all disabled unless enabled)."
    )

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not re.match(NAME_PATTERN, value):
            raise ValueError("expected a non-empty name of lowercase letters, digits and '-'")
        return value


# ---------------------------------------------------------------------------------------
# The resolved profile: immutable, what backends build from.


class ResolvedService(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    enable: bool
    ports: dict[str, int]
    package_name: str
    package_file: str | None
    binary: str
    config: str
    user: str
    settings: dict[str, Any]
    memory_max: str | None
    cpu_quota: str | None


class Profile(BaseModel):
    """A fully resolved profile: inheritance and variant applied, validated, frozen."""

    model_config = ConfigDict(frozen=True)

    name: str
    variant: str | None
    description: str
    extends: list[str]
    packages: list[str]
    authorized_keys: list[str]
    kernel_params: list[str]
    kernel_modules: list[str]
    include_modules: list[str]
    exclude_modules: list[str]
    firmware: list[str]
    dhcp: bool
    predictable_names: bool
    serial: str
    baud: int
    locales: list[str]
    documentation: bool
    sysctl: dict[str, SysctlValue]
    services: dict[str, ResolvedService]
    sources: list[str]

    @property
    def label(self) -> str:
        """The artifact directory name: `control-plane` or `control-plane-debug`."""
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def content_hash(self) -> str:
        """sha256 over everything that goes into the image from the profile, files included."""
        digest = hashlib.sha256()
        body = self.model_dump(mode="json", exclude={"sources"})
        digest.update(json.dumps(body, sort_keys=True).encode())
        for ref in [*self.authorized_keys, *self.service_package_files()]:
            digest.update(ref.encode())
            digest.update(Path(ref).read_bytes())
        return digest.hexdigest()

    def service_package_files(self) -> list[str]:
        return [svc.package_file for svc in self.services.values() if svc.package_file]


# ---------------------------------------------------------------------------------------
# Errors: one line naming the file, the key path, what was expected and what was found.

ERROR_TEMPLATES: dict[str, str] = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
}


def render_value(value: object) -> str:
    return json.dumps(value, default=str)


def format_loc(loc: Iterable[object]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            text = str(part)
            parts.append(text if re.match(r"^[A-Za-z0-9_-]+$", text) else render_value(text))
    return ".".join(parts)


def field_names_at(model: type[BaseModel], loc: tuple[object, ...]) -> list[str]:
    """The keys allowed at `loc` inside `model` (for close-match suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not isinstance(current, type):
            continue
        if not issubclass(current, BaseModel):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            # a dict key (e.g. a service name): descend into the value type
            continue
        current = unwrap_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def unwrap_model(annotation: Any) -> Any:
    """The BaseModel class inside `X | None` or `dict[str, X]`, if any."""
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in args or ():
        found = unwrap_model(arg)
        if found is not None:
            return found
    return None


def describe_error(error: ErrorDetails, model: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    where = format_loc(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = field_names_at(model, loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = f"; known keys: {', '.join(allowed)}" if allowed and not close else ""
        return f"{where}: unknown key{hint}{known}"
    got = f", got {render_value(error.get('input'))}"
    if kind == "string_pattern_mismatch":
        return f"{where}: {pattern_expectation(loc)}{got}"
    if kind in {"greater_than_equal", "less_than_equal"}:
        ctx = error.get("ctx") or {}
        bound = ctx.get("ge", ctx.get("le"))
        relation = "at least" if kind == "greater_than_equal" else "at most"
        return f"{where}: expected a number {relation} {bound}{got}"
    if kind == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        return f"{where}: {message}{got}"
    if kind in ERROR_TEMPLATES:
        return f"{where}: {ERROR_TEMPLATES[kind]}{got}"
    return f"{where}: {error['msg'].lower()}{got}"


def pattern_expectation(loc: tuple[object, ...]) -> str:
    head = str(loc[0]) if loc else ""
    last = str(loc[-1]) if loc else ""
    if head == "sysctl":
        return "expected a sysctl name like net.ipv4.ip_forward"
    if last == "memory_max":
        return "expected a size like 512M or infinity"
    if last == "cpu_quota":
        return "expected a percentage like 50%"
    if head == "packages" or last == "firmware" or (len(loc) > 1 and loc[1] == "firmware"):
        return "expected a Debian/Nix package name (optionally prefixed with '!')"
    if head == "extends":
        return "expected a profile name of lowercase letters, digits and '-'"
    if head == "console":
        return "expected a tty name like ttyS0"
    return "value does not match the expected form"


# ---------------------------------------------------------------------------------------
# Loading files.


@dataclass(frozen=True)
class ProfileSource:
    """A profile or variant file found on disk, read and validated on its own."""

    name: str
    path: Path
    root: Path
    data: dict[str, Any]
    parsed: ProfileFile

    @property
    def display(self) -> str:
        return display_path(self.path)


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(
            f"{display_path(path)}: invalid TOML: {exc}",
            hint="fix the syntax at that line (see https://toml.io)",
        ) from exc
    except OSError as exc:
        raise UserError(f"{display_path(path)}: cannot read: {exc.strerror}") from exc


def load_source(path: Path, root: Path, name: str) -> ProfileSource:
    data = read_toml(path)
    try:
        parsed = ProfileFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"{display_path(path)}: {describe_error(first, ProfileFile)}") from exc
    if parsed.name is not None and parsed.name != name:
        raise UserError(
            f"{display_path(path)}: name: expected {name!r} (the file name), got {parsed.name!r}",
            hint="rename the file or drop the `name` key",
        )
    check_services_known(parsed, path)
    check_file_refs(parsed, path, root)
    return ProfileSource(name=name, path=path, root=root, data=data, parsed=parsed)


def check_services_known(parsed: ProfileFile, path: Path) -> None:
    catalog = load_catalog()
    for service, section in (parsed.services or {}).items():
        if service not in catalog:
            close = difflib.get_close_matches(service, list(catalog), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"{display_path(path)}: services.{service}: unknown service{hint}; "
                f"the catalog has: {', '.join(catalog)}"
            )
        check_service_ports(service, section, catalog[service], path)


def check_service_ports(
    service: str, section: ServiceSection, entry: CatalogService, path: Path
) -> None:
    for key, value in (section.model_extra or {}).items():
        where = f"{display_path(path)}: services.{service}.{key}"
        if key not in entry.ports:
            allowed = [*ServiceSection.model_fields, *entry.ports]
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{where}: unknown key{hint}; known keys: {', '.join(allowed)}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(
                f"{where}: expected an integer {PORT_MIN}-{PORT_MAX}, got {render_value(value)}"
            )
        if not PORT_MIN <= value <= PORT_MAX:
            raise UserError(f"{where}: expected an integer {PORT_MIN}-{PORT_MAX}, got {value}")


def check_file_refs(parsed: ProfileFile, path: Path, root: Path) -> None:
    refs: list[tuple[str, str]] = []
    for index, key in enumerate((parsed.ssh.authorized_keys if parsed.ssh else None) or []):
        refs.append((f"ssh.authorized_keys[{index}]", key))
    for service, section in (parsed.services or {}).items():
        if section.package:
            refs.append((f"services.{service}.package", section.package))
    for where, ref in refs:
        resolve_file_ref(ref, root, f"{display_path(path)}: {where}")


def resolve_file_ref(ref: str, root: Path, where: str) -> Path:
    """A file named by a profile: relative to the profile directory and inside it."""
    if not ref or "\0" in ref:
        raise UserError(f"{where}: expected a file path, got {render_value(ref)}")
    candidate = Path(ref)
    if candidate.is_absolute():
        raise UserError(
            f"{where}: expected a path relative to the profile directory, got {ref!r}",
            hint="put the file beside the profile, or pass it on the command line",
        )
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UserError(
            f"{where}: {ref!r} escapes the profile directory {display_path(root)}",
            hint="keep referenced files inside the profile directory",
        )
    return resolved


# ---------------------------------------------------------------------------------------
# Finding profiles.


class ProfileStore:
    """Profiles and variants found in the search path (user directories first, then built-in)."""

    def __init__(self, extra_dirs: Iterable[Path] = ()) -> None:
        self.dirs: list[Path] = []
        for directory in [*extra_dirs, builtin_profiles_dir()]:
            if not directory.is_dir():
                raise UserError(
                    f"--profiles-dir {display_path(directory)}: not a directory",
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

    def find(self, name: str, kind: str = "profile") -> ProfileSource:
        for directory in self.dirs:
            path = directory / ("variants" if kind == "variant" else "") / f"{name}.toml"
            if path.is_file():
                return load_source(path, directory, name)
        known = self.variant_names() if kind == "variant" else self.profile_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"unknown {kind} {name!r}",
            hint=f"{hint}known {kind}s: {', '.join(known)}",
        )

    def resolve(self, name: str, variant: str | None = None) -> Profile:
        chain = self.chain(name, [])
        if variant is not None:
            chain.append(self.find(variant, "variant"))
        merged: dict[str, Any] = {}
        for source in chain:
            merged = merge_source(merged, source)
        return build_profile(name, variant, chain, merged)

    def chain(self, name: str, stack: list[str]) -> list[ProfileSource]:
        """The files to merge for `name`, parents first (depth-first, in `extends` order)."""
        if name in stack:
            cycle = " -> ".join([*stack[stack.index(name) :], name])
            raise UserError(
                f"{self.find(stack[-1]).display}: extends: cycle {cycle}",
                hint="remove one of the `extends` in the cycle",
            )
        source = self.find(name) if not stack else self.find_parent(name, stack[-1])
        parents = source.parsed.extends
        parent_list = [parents] if isinstance(parents, str) else list(parents or [])
        files: list[ProfileSource] = []
        for parent in parent_list:
            for item in self.chain(parent, [*stack, name]):
                if item.path not in [f.path for f in files]:
                    files.append(item)
        files.append(source)
        return files

    def find_parent(self, name: str, child: str) -> ProfileSource:
        try:
            return self.find(name)
        except UserError as exc:
            raise UserError(
                f"{self.find(child).display}: extends: unknown profile {name!r}",
                hint=exc.hint,
            ) from exc


# ---------------------------------------------------------------------------------------
# Merging: lists append (without duplicates), tables merge, scalars override;
# "!item" in a list removes an inherited item; `unset` drops inherited keys or tables.


def merge_source(merged: dict[str, Any], source: ProfileSource) -> dict[str, Any]:
    result = apply_unset(merged, source.parsed.unset or [], source)
    data = {k: v for k, v in source.data.items() if k not in {"name", "extends", "unset"}}
    data = absolutize_refs(data, source.root)
    return merge_values(result, data)


def apply_unset(merged: dict[str, Any], paths: list[str], source: ProfileSource) -> dict[str, Any]:
    result = dict(merged)
    for index, path in enumerate(paths):
        section, _, key = path.partition(".")
        if section not in ProfileFile.model_fields or section in {"name", "extends", "unset"}:
            raise UserError(
                f"{source.display}: unset[{index}]: unknown setting {path!r}",
                hint=f"use a top-level key ({', '.join(unsettable_keys())}) or <table>.<key>",
            )
        if not key:
            result.pop(section, None)
        elif isinstance(result.get(section), dict):
            result[section] = {k: v for k, v in result[section].items() if k != key}
    return result


def unsettable_keys() -> list[str]:
    return [k for k in ProfileFile.model_fields if k not in {"name", "extends", "unset"}]


def absolutize_refs(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """Turn file references into absolute paths, so merged files from several dirs still work."""
    out = dict(data)
    ssh = out.get("ssh")
    if isinstance(ssh, dict) and "authorized_keys" in ssh:
        keys = [str(resolve_file_ref(k, root, "ssh")) for k in ssh["authorized_keys"]]
        out["ssh"] = {**ssh, "authorized_keys": keys}
    services = out.get("services")
    if isinstance(services, dict):
        new_services = {}
        for name, section in services.items():
            if isinstance(section, dict) and section.get("package"):
                section = {
                    **section,
                    "package": str(resolve_file_ref(section["package"], root, name)),
                }
            new_services[name] = section
        out["services"] = new_services
    return out


def merge_values(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_values(base[key], value) if key in base else strip_removals(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return merge_lists(base, override)
    return strip_removals(override)


def merge_lists(base: list[Any], override: list[Any]) -> list[Any]:
    result = list(base)
    for item in override:
        if isinstance(item, str) and item.startswith(REMOVE_PREFIX):
            target = item[len(REMOVE_PREFIX) :]
            result = [x for x in result if x != target]
        elif item not in result:
            result.append(item)
    return result


def strip_removals(value: Any) -> Any:
    if isinstance(value, list):
        return merge_lists([], value)
    if isinstance(value, dict):
        return {k: strip_removals(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------
# The resolved profile.

BASE_DEFAULTS: dict[str, Any] = {
    "dhcp": True,
    "predictable_names": True,
    "serial": "ttyS0",
    "baud": 115200,
    "locales": ["en_US.UTF-8"],
    "documentation": False,
}


def build_profile(
    name: str, variant: str | None, chain: list[ProfileSource], merged: dict[str, Any]
) -> Profile:
    profile_chain = chain if variant is None else chain[:-1]
    leaf = profile_chain[-1]
    kernel = merged.get("kernel", {})
    network = merged.get("network", {})
    console = merged.get("console", {})
    system = merged.get("system", {})
    services = resolve_services(merged, leaf)
    check_port_clashes(services, chain[-1])
    description = next(
        (s.parsed.description for s in reversed(profile_chain) if s.parsed.description), ""
    )
    if variant is not None:
        description = (
            f"{description} ({variant} variant: {chain[-1].parsed.description or variant})"
        )
    return Profile(
        name=name,
        variant=variant,
        description=description,
        extends=[s.name for s in profile_chain[:-1]],
        packages=merged.get("packages", []),
        authorized_keys=merged.get("ssh", {}).get("authorized_keys", []),
        kernel_params=kernel.get("params", []),
        kernel_modules=kernel.get("modules", []),
        include_modules=kernel.get("include_modules", []),
        exclude_modules=kernel.get("exclude_modules", []),
        firmware=kernel.get("firmware", []),
        dhcp=network.get("dhcp", BASE_DEFAULTS["dhcp"]),
        predictable_names=network.get("predictable_names", BASE_DEFAULTS["predictable_names"]),
        serial=console.get("serial", BASE_DEFAULTS["serial"]),
        baud=console.get("baud", BASE_DEFAULTS["baud"]),
        locales=system.get("locales", BASE_DEFAULTS["locales"]),
        documentation=system.get("documentation", BASE_DEFAULTS["documentation"]),
        sysctl=merged.get("sysctl", {}),
        services=services,
        sources=[s.display for s in chain],
    )


def resolve_services(merged: Mapping[str, Any], leaf: ProfileSource) -> dict[str, ResolvedService]:
    catalog = load_catalog()
    defaults = merged.get("service_defaults", {})
    resolved: dict[str, ResolvedService] = {}
    for name in catalog:  # catalog order, so output is stable
        section = merged.get("services", {}).get(name)
        if section is None:
            continue
        entry = catalog[name]
        ports = {key: int(section.get(key, default)) for key, default in entry.ports.items()}
        resolved[name] = ResolvedService(
            name=name,
            description=entry.description,
            enable=bool(section.get("enable", False)),
            ports=ports,
            package_name=entry.package,
            package_file=section.get("package"),
            binary=entry.binary,
            config=entry.config,
            user=entry.user,
            settings=section.get("settings", {}),
            memory_max=section.get("memory_max", defaults.get("memory_max")),
            cpu_quota=section.get("cpu_quota", defaults.get("cpu_quota")),
        )
    return resolved


def check_port_clashes(services: Mapping[str, ResolvedService], leaf: ProfileSource) -> None:
    claimed: dict[int, str] = {}
    for service in services.values():
        if not service.enable:
            continue
        for key, port in service.ports.items():
            owner = f"services.{service.name}.{key}"
            if port in claimed:
                raise UserError(
                    f"{leaf.display}: {owner}: port {port} is also claimed by {claimed[port]}",
                    hint="give one of the enabled services another port",
                )
            claimed[port] = owner


def profile_json_schema() -> dict[str, Any]:
    """JSON Schema of a profile file, for editors (`plasmaboot schema`)."""
    schema = ProfileFile.model_json_schema()
    schema["title"] = "plasmaboot profile"
    schema["$id"] = "https://plasmacloud.dev/schemas/plasmaboot-profile.json"
    return schema
