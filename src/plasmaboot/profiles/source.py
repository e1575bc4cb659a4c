"""One profile or variant file: read, validated on its own (so an error names the file that
holds the bad value), its services checked against the catalog and the files it names
(key files, service packages) found inside its profile directory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmaboot.catalog import PORT_MAX, PORT_MIN, CatalogService, load_catalog
from plasmaboot.errors import UserError
from plasmaboot.profiles.located_errors import (
    display_path,
    format_loc,
    read_toml,
    render_value,
    suggestion,
    validate_data,
)
from plasmaboot.profiles.merge import unset_path
from plasmaboot.profiles.model import PATTERN_EXPECTATIONS, ProfileFile, ServiceSection


@dataclass(frozen=True)
class ProfileSource:
    """A profile or variant file found on disk, read and validated on its own."""

    name: str
    path: Path
    root: Path  # the profile directory its file references are relative to
    data: dict[str, Any]  # as written
    parsed: ProfileFile

    @property
    def display(self) -> str:
        return display_path(self.path)

    def absolute_data(self) -> dict[str, Any]:
        """The data with file references made absolute, so files merged from several
        directories still name the right files."""
        out = dict(self.data)
        ssh = out.get("ssh")
        if isinstance(ssh, dict) and "authorized_keys" in ssh:
            keys = [
                str(resolve_file_ref(key, self.root, f"{self.display}: ssh.authorized_keys"))
                for key in ssh["authorized_keys"]
            ]
            out["ssh"] = {**ssh, "authorized_keys": keys}
        services = out.get("services")
        if isinstance(services, dict):
            new_services = {}
            for name, section in services.items():
                if isinstance(section, dict) and section.get("package") is not None:
                    where = f"{self.display}: services.{name}.package"
                    package = resolve_file_ref(section["package"], self.root, where)
                    section = {**section, "package": str(package)}
                new_services[name] = section
            out["services"] = new_services
        return out


def load_source(path: Path, root: Path, name: str) -> ProfileSource:
    data = read_toml(path)
    parsed = validate_data(ProfileFile, data, display_path(path), PATTERN_EXPECTATIONS)
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
    for index, path in enumerate(source.parsed.unset):
        try:
            unset_path(path)
        except UserError as exc:
            raise UserError(
                f"{source.display}: unset[{index}]: {exc.message}, got {render_value(path)}",
                hint=exc.hint,
            ) from exc


def check_services_known(source: ProfileSource) -> None:
    catalog = load_catalog()
    for service, section in source.parsed.services.items():
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
    for key in section.settings:
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
