"""Inheritance: how the files of a chain merge into one set of settings.

Lists append (without duplicates), tables merge key by key, scalars override; `"!item"` in a
list removes an inherited item; `unset` drops inherited keys or tables before the file's own
values are added. Works on the files' data (plain dicts), so what a file does not say stays
unsaid until the resolved Profile fills in the defaults.
"""

from __future__ import annotations

import re
from typing import Any

from plasmaboot.catalog import load_catalog
from plasmaboot.errors import UserError
from plasmaboot.profiles.located_errors import suggestion, unwrap_model
from plasmaboot.profiles.model import (
    NOT_MERGED,
    PATTERN_EXPECTATIONS,
    SYSCTL_PATTERN,
    ProfileFile,
    ServiceSection,
)

REMOVE_PREFIX = "!"


def merge_file(merged: dict[str, Any], data: dict[str, Any], unset: list[str]) -> dict[str, Any]:
    """`merged` with one more file applied: its `unset` entries first, then its data."""
    result = merged
    for path in unset:
        result = drop_key(result, unset_path(path))
    body = {key: value for key, value in data.items() if key not in NOT_MERGED}
    merged_data: dict[str, Any] = merge_values(result, body)
    return merged_data


def unsettable_keys() -> list[str]:
    return [key for key in ProfileFile.model_fields if key not in NOT_MERGED]


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
        return (head, *service_unset_path(rest))
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


def service_unset_path(rest: str) -> tuple[str, ...]:
    """`iam` or `iam.port` of an `unset = ["services.iam.port"]` entry."""
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
    return (service, key) if key else (service,)


def drop_key(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    head, *rest = path
    if head not in data:
        return data
    if not rest:
        return {k: v for k, v in data.items() if k != head}
    return {**data, head: drop_key(data[head], tuple(rest))}


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
