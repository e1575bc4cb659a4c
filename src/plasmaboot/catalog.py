"""The PlasmaCloud service catalog: nine services, their ports, users and binaries,
read from catalog/services.toml (the Nix modules read the same file)."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

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
