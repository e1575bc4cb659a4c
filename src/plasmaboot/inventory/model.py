"""The machine inventory (`machines.toml`) as data: the file's tables exactly as written, and
the resolved Machine every later stage reads (serve, pxe-server, install).

    [defaults]                 # any machine setting but mac, hostname and ipv4
    profile = "control-plane"

    [machines.cp1]
    mac = "52:54:00:12:34:01"  # or a list: one machine, several NICs
    ipv4 = "10.20.0.11/24"     # static address/prefix; DHCP hands it out
    hostname = "cp1"           # default: the table's name
    variant = "debug"
    kernel_params = ["plasmaboot.overlay_size=75%"]
    ssh_keys = ["keys/ops.pub"]  # relative to the inventory file
    labels = { rack = "r1" }
    layout = "layouts/control-plane.toml"  # disk layout for `install`, relative to this file
    services = ["iam", "chainfire"]       # what the installed system enables (all else off)
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAC_PATTERN = r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"
LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"  # one DNS label (RFC 1123)
HOSTNAME_PATTERN = rf"^{LABEL}(\.{LABEL})*$"  # at most 253 characters: max_length
MACHINE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
LABEL_KEY_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MAX_LABEL_VALUE = 256
SERVICE_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"

# What each pattern means, for error messages ("expected <this>, got ...").
PATTERN_EXPECTATIONS: dict[str, str] = {
    MAC_PATTERN: "a MAC address like 52:54:00:12:34:01",
    HOSTNAME_PATTERN: "a lowercase host name (letters, digits and '-', dot-separated labels)",
    MACHINE_NAME_PATTERN: "a machine name of lowercase letters, digits and '-' (a host name label)",
    LABEL_KEY_PATTERN: "a label name of lowercase letters, digits, '.', '_' and '-'",
    SERVICE_PATTERN: "a service name of the catalog, like iam",
}

Mac = Annotated[str, Field(pattern=MAC_PATTERN)]
LabelValue = Annotated[str, Field(max_length=MAX_LABEL_VALUE)]


class Table(BaseModel):
    """A table of the inventory file: unknown keys are errors, types are not coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SharedSettings(Table):
    """Settings a machine takes from [defaults] unless it sets them itself."""

    profile: str | None = Field(None, description="Profile to boot (a name `profiles list` shows).")
    variant: str | None = Field(None, description="Variant applied to the profile (debug, ...).")
    kernel_params: list[str] | None = Field(
        None, description="Extra kernel parameters (added after the profile's; defaults first)."
    )
    ssh_keys: list[str] | None = Field(
        None,
        description="Public key files for root on this machine, relative to the inventory file.",
    )
    labels: dict[Annotated[str, Field(pattern=LABEL_KEY_PATTERN)], LabelValue] | None = Field(
        None, description="Free labels (rack, role, ...), merged over the defaults' labels."
    )
    layout: str | None = Field(
        None,
        description="Disk layout for `plasmaboot install`, relative to the inventory file "
        "(default: layouts/<profile>.toml there, else the built-in one).",
    )
    services: list[Annotated[str, Field(pattern=SERVICE_PATTERN)]] | None = Field(
        None,
        description="Services the installed system enables (every other stays disabled; "
        "default: none).",
    )


class MachineTable(SharedSettings):
    """One `[machines.<name>]` table."""

    mac: Mac | list[Mac] = Field(description="The machine's MAC address, or one per NIC.")
    hostname: str | None = Field(
        None,
        pattern=HOSTNAME_PATTERN,
        max_length=253,
        description="Host name (default: the table's name).",
    )
    ipv4: str | None = Field(
        None, description="Static IPv4 address with its prefix, e.g. 10.20.0.11/24."
    )


class InventoryFile(Table):
    """The whole `machines.toml`."""

    defaults: SharedSettings | None = None
    machines: dict[Annotated[str, Field(pattern=MACHINE_NAME_PATTERN)], MachineTable] = Field(
        default_factory=dict, description="One table per machine, by name."
    )


class Machine(BaseModel):
    """A machine with its defaults applied and every value checked: what serve, pxe-server
    and install read."""

    model_config = ConfigDict(frozen=True)

    name: str
    macs: tuple[str, ...]  # lowercase, colon-separated
    profile: str
    variant: str | None
    hostname: str
    ipv4: str | None  # "10.20.0.11/24"
    kernel_params: tuple[str, ...]
    ssh_keys: tuple[str, ...]  # absolute paths of public key files
    labels: dict[str, str]
    layout: str | None = None  # absolute path of the layout file, when the inventory names one
    services: tuple[str, ...] | None = None  # None: not given (install enables none)

    @property
    def label(self) -> str:
        """The artifact set this machine boots: `control-plane` or `control-plane-debug`."""
        return f"{self.profile}-{self.variant}" if self.variant else self.profile

    @property
    def address(self) -> str | None:
        """The static address without its prefix."""
        return self.ipv4.split("/", 1)[0] if self.ipv4 else None


def inventory_json_schema() -> dict[str, object]:
    """JSON Schema of machines.toml, for editors (`plasmaboot machines schema`)."""
    schema = InventoryFile.model_json_schema()
    schema["title"] = "plasmaboot machine inventory"
    schema["$id"] = "https://plasmacloud.dev/schemas/plasmaboot-inventory.json"
    return schema
