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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plasmaboot.catalog import PORT_MAX, PORT_MIN, CatalogService, load_catalog
from plasmaboot.errors import UserError
from plasmaboot.paths import builtin_profiles_dir

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SYSCTL_PATTERN = r"^[a-z0-9_]+(\.[A-Za-z0-9_*-]+)+$"
MEMORY_PATTERN = r"^(\d+[KMGT]?|infinity)$"
CPU_QUOTA_PATTERN = r"^\d+%$"
PACKAGE_PATTERN = r"^!?[a-z0-9][a-z0-9+.-]*$"
SERIAL_PATTERN = r"^tty[A-Za-z]+\d+$"
REMOVE_PREFIX = "!"

# What each pattern means, for error messages ("expected <this>, got ...").
PATTERN_EXPECTATIONS: dict[str, str] = {
    NAME_PATTERN: "a profile name of lowercase letters, digits and '-'",
    SYSCTL_PATTERN: "a sysctl name like net.ipv4.ip_forward",
    MEMORY_PATTERN: "a size like 512M, 2G or infinity",
    CPU_QUOTA_PATTERN: "a percentage like 50%",
    PACKAGE_PATTERN: "a package name of lowercase letters, digits, '+', '.' and '-' "
    "(optionally prefixed with '!')",
    SERIAL_PATTERN: "a tty name like ttyS0",
}

ProfileName = Annotated[str, Field(pattern=NAME_PATTERN)]
PackageName = Annotated[str, Field(pattern=PACKAGE_PATTERN)]
MemoryMax = Annotated[str, Field(pattern=MEMORY_PATTERN)]
CpuQuota = Annotated[str, Field(pattern=CPU_QUOTA_PATTERN)]
SysctlValue = int | str


class Section(BaseModel):
    """A table of a profile file: unknown keys are errors, and types are not coerced
    (`dhcp = "yes"` is an error, not true)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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
    serial: str | None = Field(None, pattern=SERIAL_PATTERN, description="Serial tty.")
    baud: int | None = Field(None, ge=1200, le=4000000, description="Serial speed.")


class SystemSection(Section):
    locales: list[str] | None = Field(None, description="Locales kept (others dropped).")
    documentation: bool | None = Field(None, description="Keep docs and man pages.")


class LimitsSection(Section):
    memory_max: MemoryMax | None = Field(None, description="systemd MemoryMax= of services.")
    cpu_quota: CpuQuota | None = Field(None, description="systemd CPUQuota= of services.")


class ServiceSection(Section):
    """A service's settings in a profile; its port options come from the catalog."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

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

    name: ProfileName | None = Field(None, description="Must equal the file name, if given.")
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
    """A value as it would be written in a file: `"abc"`, `5`, `true`, `["a"]`."""
    return json.dumps(value, default=str)


def suggestion(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_loc(loc: Iterable[object]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            text = str(part)
            parts.append(text if re.match(r"^[A-Za-z0-9_-]+$", text) else render_value(text))
    return ".".join(parts)


def data_loc(loc: Iterable[object], data: Any) -> tuple[object, ...]:
    """The part of a pydantic error location that is a real path in the file's data.

    pydantic adds names of union members (`constrained-str`, `int`) and `[key]` (an invalid
    dict key) to locations; they are not keys of the file, so they are dropped.
    """
    path: list[object] = []
    current = data
    for part in loc:
        in_table = isinstance(current, dict) and isinstance(part, str) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_table or in_list:
            current = current[part]
            path.append(part)
    return tuple(path)


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


def describe_validation_error(exc: ValidationError, data: Any, model: type[BaseModel]) -> UserError:
    """The most specific problem of a validation error, as `key.path: expected ..., got ...`.

    Of the errors under the first bad key, the deepest wins; a value that fails every member
    of a union (`extends` takes a name or a list) gets all of their expectations.
    """
    located = [(data_loc(error["loc"], data), error) for error in exc.errors()]
    top = located[0][0][:1]
    under_top = [(loc, error) for loc, error in located if loc[:1] == top]
    deepest = max(len(loc) for loc, _ in under_top)
    candidates = [(loc, error) for loc, error in under_top if len(loc) == deepest]
    loc, error = next(
        ((loc, e) for loc, e in candidates if e["type"] not in ERROR_TEMPLATES), candidates[0]
    )
    where = format_loc(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = field_names_at(model, loc[:-1])
        return UserError(
            f"{where}: unknown key{suggestion(str(loc[-1]), allowed)}",
            hint=f"known keys here: {', '.join(allowed)}",
        )
    got = f", got {render_value(error.get('input'))}"
    ctx = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return UserError(f"{where}: expected {PATTERN_EXPECTATIONS.get(pattern, pattern)}{got}")
    if kind in {"greater_than_equal", "less_than_equal"}:
        bound = ctx.get("ge", ctx.get("le"))
        relation = "at least" if kind == "greater_than_equal" else "at most"
        return UserError(f"{where}: expected a number {relation} {bound}{got}")
    if kind in ERROR_TEMPLATES:
        expected = dict.fromkeys(
            ERROR_TEMPLATES[e["type"]].removeprefix("expected ")
            for _, e in candidates
            if e["type"] in ERROR_TEMPLATES
        )
        return UserError(f"{where}: expected {' or '.join(expected)}{got}")
    return UserError(f"{where}: {error['msg'].lower()}{got}")


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
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{display_path(path)}: cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{display_path(path)}: line {line}: expected UTF-8 text, "
            f"got the byte {raw[exc.start]:#04x}"
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        if at:
            position = f"line {at[1]}, column {at[2]}"
            message = message[: at.start()]
        else:  # "(at end of document)": the problem shows at the last line
            position = f"line {max(text.count(chr(10)) + (not text.endswith(chr(10))), 1)}"
            message = message.removesuffix(" (at end of document)") + " at the end of the file"
        raise UserError(
            f"{display_path(path)}: {position}: invalid TOML: {message}",
            hint="fix the syntax there (TOML reference: https://toml.io)",
        ) from exc


def load_source(path: Path, root: Path, name: str) -> ProfileSource:
    data = read_toml(path)
    try:
        parsed = ProfileFile.model_validate(data)
    except ValidationError as exc:
        error = describe_validation_error(exc, data, ProfileFile)
        raise UserError(f"{display_path(path)}: {error.message}", hint=error.hint) from exc
    source = ProfileSource(name=name, path=path, root=root, data=data, parsed=parsed)
    if parsed.name is not None and parsed.name != name:
        raise UserError(
            f"{source.display}: name: expected {render_value(name)} (the file name), "
            f"got {render_value(parsed.name)}",
            hint="rename the file or drop the `name` key",
        )
    check_unset(source)
    check_services_known(source)
    for where, ref in file_refs(data):
        resolve_file_ref(ref, root, f"{source.display}: {where}")
    return source


def check_unset(source: ProfileSource) -> None:
    for index, path in enumerate(source.parsed.unset or []):
        try:
            unset_path(path)
        except UserError as exc:
            raise UserError(
                f"{source.display}: unset[{index}]: {exc.message}, got {render_value(path)}",
                hint=exc.hint,
            ) from exc


def check_services_known(source: ProfileSource) -> None:
    catalog = load_catalog()
    for service, section in (source.parsed.services or {}).items():
        if service not in catalog:
            raise UserError(
                f"{source.display}: services.{format_loc([service])}: unknown service"
                f"{suggestion(service, catalog)}",
                hint=f"the catalog has: {', '.join(catalog)}",
            )
        check_service_ports(service, section, catalog[service], source)


def check_service_ports(
    service: str, section: ServiceSection, entry: CatalogService, source: ProfileSource
) -> None:
    for key, value in (section.model_extra or {}).items():
        where = f"{source.display}: services.{service}.{format_loc([key])}"
        if key not in entry.ports:
            allowed = [*ServiceSection.model_fields, *entry.ports]
            raise UserError(
                f"{where}: unknown key{suggestion(key, allowed)}",
                hint=f"known keys of services.{service}: {', '.join(allowed)}",
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not PORT_MIN <= value <= PORT_MAX
        ):
            raise UserError(
                f"{where}: expected an integer {PORT_MIN}-{PORT_MAX}, got {render_value(value)}"
            )
    for key in section.settings or {}:
        if key in entry.ports:
            # a port set through settings would escape the port-clash check
            raise UserError(
                f"{source.display}: services.{service}.settings.{format_loc([key])}: "
                f"{key!r} is a port option; set it as services.{service}.{key}",
                hint="ports are checked for clashes only where the catalog declares them",
            )


def file_refs(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key path, reference) of every file a profile file names: keys and service packages."""
    refs: list[tuple[str, str]] = []
    ssh = data.get("ssh") or {}
    for index, key in enumerate(ssh.get("authorized_keys") or []):
        refs.append((f"ssh.authorized_keys[{index}]", key))
    for service, section in (data.get("services") or {}).items():
        if section.get("package") is not None:
            refs.append((f"services.{service}.package", section["package"]))
    return refs


def resolve_file_ref(ref: str, root: Path, where: str) -> Path:
    """A file named by a profile: relative to the profile directory, inside it, and existing."""
    directory = render_value(display_path(root))
    if not ref or "\0" in ref:
        raise UserError(f"{where}: expected a file name, got {render_value(ref)}")
    candidate = Path(ref)
    if candidate.is_absolute():
        raise UserError(
            f"{where}: expected a path relative to the profile directory {directory}, "
            f"got {render_value(ref)}",
            hint="copy the file beside the profile and name it relatively",
        )
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UserError(
            f"{where}: expected a path inside the profile directory {directory}, "
            f"got {render_value(ref)}",
            hint="keep referenced files inside the profile directory",
        )
    if not resolved.is_file():
        raise UserError(
            f"{where}: expected an existing file (looked for {display_path(resolved)}), "
            f"got {render_value(ref)}"
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
            if path.is_file():
                return path, directory
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
        merged: dict[str, Any] = {}
        for source in chain:
            merged = merge_source(merged, source)
        return build_profile(name, variant, chain, merged)

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


# ---------------------------------------------------------------------------------------
# Merging: lists append (without duplicates), tables merge, scalars override;
# "!item" in a list removes an inherited item; `unset` drops inherited keys or tables.

NOT_MERGED = frozenset({"name", "extends", "unset"})


def merge_source(merged: dict[str, Any], source: ProfileSource) -> dict[str, Any]:
    result = merged
    for path in source.parsed.unset or []:
        result = drop_key(result, unset_path(path))
    data = {k: v for k, v in source.data.items() if k not in NOT_MERGED}
    data = absolutize_refs(data, source)
    merged_data: dict[str, Any] = merge_values(result, data)
    return merged_data


def unsettable_keys() -> list[str]:
    return [k for k in ProfileFile.model_fields if k not in NOT_MERGED]


def unset_path(path: str) -> tuple[str, ...]:
    """An `unset` entry as the key path it drops: `("sysctl", "fs.file-max")`.

    Raises UserError with what was expected (the caller adds where and what it got).
    """
    head, _, rest = path.partition(".")
    if head not in unsettable_keys():
        raise UserError(
            f"expected a top-level key or <table>.<key>{suggestion(head, unsettable_keys())}",
            hint=f"top-level keys: {', '.join(unsettable_keys())}",
        )
    if not rest:
        return (head,)
    if head == "sysctl":
        if not re.match(SYSCTL_PATTERN, rest):
            raise UserError(f"expected sysctl.<name>, {PATTERN_EXPECTATIONS[SYSCTL_PATTERN]}")
        return (head, rest)
    if head == "services":
        catalog = load_catalog()
        service, _, key = rest.partition(".")
        if service not in catalog:
            raise UserError(
                f"expected services.<service>[.<key>]{suggestion(service, catalog)}",
                hint=f"the catalog has: {', '.join(catalog)}",
            )
        allowed = [*ServiceSection.model_fields, *catalog[service].ports]
        if key and key not in allowed:
            raise UserError(
                f"expected services.{service}.<key>{suggestion(key, allowed)}",
                hint=f"known keys of services.{service}: {', '.join(allowed)}",
            )
        return (head, service, key) if key else (head, service)
    section = unwrap_model(ProfileFile.model_fields[head].annotation)
    if section is None:
        raise UserError(
            f"expected {head!r} alone ({head} is not a table)",
            hint='to drop one inherited list item, write "!item" in the list',
        )
    if rest not in section.model_fields:
        raise UserError(
            f"expected {head}.<key>{suggestion(rest, section.model_fields)}",
            hint=f"keys of [{head}]: {', '.join(section.model_fields)}",
        )
    return (head, rest)


def drop_key(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    head, *rest = path
    if head not in data:
        return data
    if not rest:
        return {k: v for k, v in data.items() if k != head}
    return {**data, head: drop_key(data[head], tuple(rest))}


def absolutize_refs(data: dict[str, Any], source: ProfileSource) -> dict[str, Any]:
    """Turn file references into absolute paths, so merged files from several dirs still work."""
    out = dict(data)
    ssh = out.get("ssh")
    if isinstance(ssh, dict) and "authorized_keys" in ssh:
        keys = [
            str(resolve_file_ref(key, source.root, f"{source.display}: ssh.authorized_keys"))
            for key in ssh["authorized_keys"]
        ]
        out["ssh"] = {**ssh, "authorized_keys": keys}
    services = out.get("services")
    if isinstance(services, dict):
        new_services = {}
        for name, section in services.items():
            if isinstance(section, dict) and section.get("package") is not None:
                where = f"{source.display}: services.{name}.package"
                package = resolve_file_ref(section["package"], source.root, where)
                section = {**section, "package": str(package)}
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
    kernel = merged.get("kernel", {})
    network = merged.get("network", {})
    console = merged.get("console", {})
    system = merged.get("system", {})
    services = resolve_services(merged)
    check_port_clashes(services, chain)
    description = next(
        (s.parsed.description for s in reversed(profile_chain) if s.parsed.description), ""
    )
    if variant is not None:
        note = chain[-1].parsed.description or variant
        description = f"{description} ({variant} variant: {note})"
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


def resolve_services(merged: Mapping[str, Any]) -> dict[str, ResolvedService]:
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


def check_port_clashes(services: Mapping[str, ResolvedService], chain: list[ProfileSource]) -> None:
    """Two enabled services must not listen on the same port (disabled ones may share)."""
    claimed: dict[int, tuple[str, str]] = {}
    for service in services.values():
        if not service.enable:
            continue
        for key, port in service.ports.items():
            if port in claimed:
                other = claimed[port]
                blamed = last_setter(chain, [(service.name, key), other])
                raise UserError(
                    f"{blamed.display}: services.{service.name}.{key}: expected a port no other "
                    f"enabled service uses, got {port} (services.{other[0]}.{other[1]} has it)",
                    hint="change one of the ports, or disable one of the services",
                )
            claimed[port] = (service.name, key)


def last_setter(chain: list[ProfileSource], keys: list[tuple[str, str]]) -> ProfileSource:
    """The last file that sets one of these service ports or enables one of the services:
    the file whose settings made them clash."""
    for source in reversed(chain):
        services = source.data.get("services") or {}
        for service, key in keys:
            section = services.get(service) or {}
            if key in section or "enable" in section:
                return source
    return chain[-1]


def profile_json_schema() -> dict[str, Any]:
    """JSON Schema of a profile file, for editors (`plasmaboot schema`)."""
    schema = ProfileFile.model_json_schema()
    schema["title"] = "plasmaboot profile"
    schema["$id"] = "https://plasmacloud.dev/schemas/plasmaboot-profile.json"
    return schema
