"""From a chain of validated files to the resolved Profile: merge them in order, apply the
service catalog and the profile's service_defaults to its services, check that no two
enabled services claim a port, and let the model fill in every default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plasmaboot.catalog import load_catalog
from plasmaboot.errors import UserError
from plasmaboot.formats import FormatError
from plasmaboot.formats.cmdline import check_cmdline
from plasmaboot.profiles.located_errors import validate_data
from plasmaboot.profiles.merge import merge_file
from plasmaboot.profiles.model import (
    PATTERN_EXPECTATIONS,
    LimitsSection,
    Profile,
    ResolvedService,
    ServiceSection,
    Settings,
)
from plasmaboot.profiles.source import ProfileSource


def resolve_profile(name: str, variant: str | None, chain: list[ProfileSource]) -> Profile:
    """The profile `name` from its chain of files (parents first; the variant's file last
    when `variant` is given)."""
    merged: dict[str, Any] = {}
    for source in chain:
        merged = merge_file(merged, source.absolute_data(), source.parsed.unset)
    services = resolve_services(merged)
    check_port_clashes(services, chain)
    profile_chain = chain if variant is None else chain[:-1]
    body = {
        "name": name,
        "variant": variant,
        "description": describe(profile_chain, variant, chain[-1]),
        "extends": [source.name for source in profile_chain[:-1]],
        **{key: merged[key] for key in Settings.model_fields if key in merged},
        "services": services,
        "sources": [source.display for source in chain],
    }
    profile = validate_data(Profile, body, chain[-1].display, PATTERN_EXPECTATIONS)
    check_command_line(profile, chain)
    return profile


def check_command_line(profile: Profile, chain: list[ProfileSource]) -> None:
    """The merged kernel parameters fit the kernel's command line (with the `initrd=initrd`
    the script adds): past its limit the kernel silently cuts the last ones."""
    try:
        check_cmdline(["initrd=initrd", *profile.kernel.params])
    except FormatError as exc:
        setters = [s for s in chain if "params" in (s.data.get("kernel") or {})]
        blamed = (setters or chain)[-1]
        raise UserError(
            f"{blamed.display}: kernel.params: {exc}",
            hint="drop parameters, or move machine-specific ones to the inventory",
        ) from exc


def describe(profile_chain: list[ProfileSource], variant: str | None, last: ProfileSource) -> str:
    """The nearest description in the chain, with the variant's note after it."""
    description = next(
        (s.parsed.description for s in reversed(profile_chain) if s.parsed.description), ""
    )
    if variant is None:
        return description
    return f"{description} ({variant} variant: {last.parsed.description or variant})"


def resolve_services(merged: Mapping[str, Any]) -> dict[str, ResolvedService]:
    """The merged services with the catalog's entries, port defaults and the profile's
    service_defaults applied, in catalog order (so output is stable)."""
    catalog = load_catalog()
    limits = LimitsSection.model_validate(merged.get("service_defaults", {}))
    resolved: dict[str, ResolvedService] = {}
    for name, entry in catalog.items():
        data = merged.get("services", {}).get(name)
        if data is None:
            continue
        section = ServiceSection.model_validate(data)
        resolved[name] = ResolvedService(
            name=name,
            description=entry.description,
            enable=section.enable,
            ports={key: int(data.get(key, default)) for key, default in entry.ports.items()},
            package_name=entry.package,
            package_file=section.package,
            binary=entry.binary,
            config=entry.config,
            user=entry.user,
            settings=section.settings,
            memory_max=section.memory_max or limits.memory_max,
            cpu_quota=section.cpu_quota or limits.cpu_quota,
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
