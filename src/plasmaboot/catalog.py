"""The catalog: the nine PlasmaCloud services (catalog/services.toml: ports, users, binaries)
and the package names of each backend (catalog/packages.toml). The Nix side reads the same
files; on the Python side they are read here and nowhere else."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plasmaboot.errors import UserError
from plasmaboot.paths import data_dir

PORT_MIN, PORT_MAX = 1, 65535


class CatalogService(BaseModel):
    """One service as the catalog declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    description: str
    package: str
    binary: str
    config: str
    user: str
    ports: dict[str, int] = Field(min_length=1)


def catalog_path() -> Path:
    return data_dir() / "catalog" / "services.toml"


@cache
def load_catalog() -> dict[str, CatalogService]:
    """The catalog, keyed by service name, in file order."""
    path = catalog_path()
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    catalog: dict[str, CatalogService] = {}
    for name, table in raw.items():
        try:
            catalog[name] = CatalogService.model_validate({**table, "name": name})
        except ValidationError as exc:
            raise UserError(f"{path}: [{name}]: {exc.errors()[0]['msg']}") from exc
    return catalog


# --------------------------------------------------------------------------------------
# catalog/packages.toml: abstract package names -> each backend's names, and the commands
# that prove a package is installed. Read here only.

BACKEND_TABLES = ("debian", "nix")


def packages_path() -> Path:
    return data_dir() / "catalog" / "packages.toml"


@cache
def load_package_catalog() -> dict[str, Any]:
    with packages_path().open("rb") as handle:
        return tomllib.load(handle)


def backend_package_names(backend: str) -> dict[str, str]:
    """Abstract name -> that backend's name, where they differ ("" means not available)."""
    if backend not in BACKEND_TABLES:
        raise ValueError(f"no package table for backend {backend!r}")
    table: dict[str, str] = load_package_catalog().get(backend, {})
    return table


def native_package_names(backend: str, abstract: Iterable[str]) -> tuple[list[str], list[str]]:
    """The packages under the backend's own names (in order, once each), and the abstract
    names the backend does not have."""
    mapping = backend_package_names(backend)
    names: list[str] = []
    missing: list[str] = []
    for name in abstract:
        native = mapping.get(name, name)
        if not native:
            missing.append(name)
        elif native not in names:
            names.append(native)
    return names, missing


def package_commands() -> dict[str, tuple[str, ...]]:
    """Abstract package name -> commands, any one of which proves it is installed."""
    table: dict[str, list[str]] = load_package_catalog().get("commands", {})
    return {name: tuple(commands) for name, commands in table.items()}
