"""The profile models: a profile file's sections with their defaults, and the resolved
Profile that every later stage reads.

Each setting is described once, here: its type, its check, its default and its help. A file
is validated against `ProfileFile`; the resolved `Profile` has the same sections (the
`Settings` both share) with every default filled in; `plasmaboot schema`, the Nix resolver's
defaults (nix/lib/profile-defaults.json) and the Nix parity check all follow from these
classes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from plasmaboot.formats.cmdline import MAX_PARAM_LENGTH, PARAM_CHARS, PARAM_EXPECTATION

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SYSCTL_PATTERN = r"^[a-z0-9_]+(\.[A-Za-z0-9_*-]+)+$"
MEMORY_PATTERN = r"^(\d+[KMGT]?|infinity)$"
CPU_QUOTA_PATTERN = r"^\d+%$"
PACKAGE_PATTERN = r"^!?[a-z0-9][a-z0-9+.-]*$"
KERNEL_PACKAGE_PATTERN = r"^linux-image-[a-z0-9][a-z0-9+.-]*$"
SERIAL_PATTERN = r"^tty[A-Za-z]+\d+$"
# A kernel parameter is one word of formats.cmdline's safe alphabet ("!" removes an inherited
# one): nothing in it can end the iPXE kernel line or add a command to the script.
KERNEL_PARAM_PATTERN = rf"^!?[{PARAM_CHARS}]{{1,{MAX_PARAM_LENGTH}}}$"
# The kernel's MODULE_NAME_LEN (56 on 64-bit) counts the final NUL.
MODULE_PATTERN = r"^!?[A-Za-z0-9_-]{1,55}$"
# A sysctl value is one line of sysctl.d: no newline can add a second, unchecked setting, and
# no C1 control, line separator or bidirectional override can rewrite how `profiles show`
# displays it. The kernel takes at most a page.
SYSCTL_TEXT_PATTERN = (
    r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]{0,4096}$"
)

# What each pattern means, for error messages ("expected <this>, got ...").
PATTERN_EXPECTATIONS: dict[str, str] = {
    NAME_PATTERN: "a profile name of lowercase letters, digits and '-'",
    SYSCTL_PATTERN: "a sysctl name like net.ipv4.ip_forward",
    MEMORY_PATTERN: "a size like 512M, 2G or infinity",
    CPU_QUOTA_PATTERN: "a percentage like 50%",
    PACKAGE_PATTERN: "a package name of lowercase letters, digits, '+', '.' and '-' "
    "(optionally prefixed with '!')",
    KERNEL_PACKAGE_PATTERN: "a Debian kernel package name like linux-image-amd64",
    SERIAL_PATTERN: "a tty name like ttyS0",
    KERNEL_PARAM_PATTERN: f"{PARAM_EXPECTATION} (optionally prefixed with '!')",
    MODULE_PATTERN: "a kernel module name of at most 55 letters, digits, '_' and '-' "
    "(optionally prefixed with '!')",
    SYSCTL_TEXT_PATTERN: "a sysctl value on one line of at most 4096 characters "
    "(no control or bidirectional formatting characters)",
}

ProfileName = Annotated[str, Field(pattern=NAME_PATTERN)]
PackageName = Annotated[str, Field(pattern=PACKAGE_PATTERN)]
SysctlName = Annotated[str, Field(pattern=SYSCTL_PATTERN)]
MemoryMax = Annotated[str, Field(pattern=MEMORY_PATTERN)]
CpuQuota = Annotated[str, Field(pattern=CPU_QUOTA_PATTERN)]
KernelParam = Annotated[str, Field(pattern=KERNEL_PARAM_PATTERN)]
ModuleName = Annotated[str, Field(pattern=MODULE_PATTERN)]
SysctlValue = int | Annotated[str, Field(pattern=SYSCTL_TEXT_PATTERN)]


@dataclass(frozen=True)
class PythonOnly:
    """Marks a resolved field that only the Python side has, so the Nix parity check
    leaves it out (every other field of the resolved Profile is compared)."""

    why: str


class Section(BaseModel):
    """A table of a profile file: unknown keys are errors, and types are not coerced
    (`dhcp = "yes"` is an error, not true)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SshSection(Section):
    authorized_keys: list[str] = Field(
        [], description="Public key files for root, relative to the profile directory."
    )


class KernelSection(Section):
    params: list[KernelParam] = Field([], description="Kernel command line parameters.")
    modules: list[ModuleName] = Field([], description="Kernel modules loaded at boot.")
    include_modules: list[str] = Field(
        [], description="Globs (under kernel/) of module trees kept in the image."
    )
    exclude_modules: list[str] = Field(
        [], description="Globs (under kernel/) dropped even if included."
    )
    firmware: list[PackageName] = Field(
        [], description="Firmware packages to install (firmware is opt-in)."
    )
    # Debian only: the Nix backend boots its nixpkgs kernel whatever these say.
    package: str = Field(
        "linux-image-amd64",
        pattern=KERNEL_PACKAGE_PATTERN,
        description="Debian backend: the kernel package.",
    )
    suite: Literal["release", "backports"] = Field(
        "release",
        description="Debian backend: where the kernel package comes from: the release (with "
        "its -updates and -security) or the release's -backports (a newer kernel).",
    )


class NetworkSection(Section):
    dhcp: bool = Field(True, description="DHCP on every Ethernet NIC.")
    predictable_names: bool = Field(True, description="Predictable interface names.")
    mtu: int | None = Field(
        None,
        ge=576,
        le=9216,
        description="MTU of the NICs DHCP configures (9000: jumbo frames); unset keeps the "
        "NIC's default.",
    )


class ConsoleSection(Section):
    serial: str = Field("ttyS0", pattern=SERIAL_PATTERN, description="Serial tty.")
    baud: int = Field(115200, ge=1200, le=4000000, description="Serial speed.")


class SystemSection(Section):
    locales: list[str] = Field(["en_US.UTF-8"], description="Locales kept (others dropped).")
    documentation: bool = Field(
        False,
        description="Keep docs, man pages, translations and udev's vendor/model name databases.",
    )


class LimitsSection(Section):
    memory_max: MemoryMax | None = Field(None, description="systemd MemoryMax= of services.")
    cpu_quota: CpuQuota | None = Field(None, description="systemd CPUQuota= of services.")


class ServiceOptions(Section):
    enable: bool = Field(False, description="Start at boot.")
    package: str | None = Field(
        None, description="A .deb with the service binary, relative to the profile directory."
    )
    settings: dict[str, Any] = Field(
        {}, description="Free-form settings rendered to the service's config file."
    )


# The bases are listed last-first: pydantic puts the fields of the last base first.
class ServiceSection(LimitsSection, ServiceOptions):
    """A service's settings in a profile; its port options come from the catalog (extra
    keys, checked against it when the file is loaded)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class Settings(Section):
    """The settings a profile file sets and the resolved profile carries, section by
    section, with their defaults."""

    packages: list[PackageName] = Field(
        [], description='Packages (abstract names); "!name" removes an inherited one.'
    )
    ssh: SshSection = SshSection()
    kernel: KernelSection = KernelSection()
    network: NetworkSection = NetworkSection()
    console: ConsoleSection = ConsoleSection()
    system: SystemSection = SystemSection()
    sysctl: dict[SysctlName, SysctlValue] = Field({}, description="sysctl name = value.")


class FileHeader(Section):
    name: ProfileName | None = Field(None, description="Must equal the file name, if given.")
    description: str | None = None
    extends: ProfileName | list[ProfileName] | None = Field(
        None, description="Parent profile(s), merged in order before this file."
    )
    unset: list[str] = Field(
        [], description='Inherited settings to drop, e.g. "services" or "sysctl.fs.file-max".'
    )


class ProfileFile(Settings, FileHeader):
    """One profile (or variant) file, exactly as written."""

    service_defaults: LimitsSection = Field(
        LimitsSection(), description="Resource limits applied to every service of the profile."
    )
    services: dict[str, ServiceSection] = Field(
        {}, description="PlasmaCloud services in the image (all disabled unless enabled)."
    )


# Keys of a file that say where it sits in the chain; they are not merged.
NOT_MERGED = frozenset({"name", "extends", "unset"})


# ---------------------------------------------------------------------------------------
# The resolved profile: immutable, what backends build from and manifest.json carries.


class ResolvedService(BaseModel):
    """A service as the image gets it: the catalog's entry with the profile's settings and
    the profile's service_defaults applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


class ProfileHeader(Section):
    name: str
    variant: str | None = None
    description: str = ""
    extends: list[str] = Field([], description="The profiles merged before this one, in order.")


class Profile(Settings, ProfileHeader):
    """A fully resolved profile: inheritance and variant applied, every default filled in,
    validated, frozen. File references are absolute paths."""

    services: dict[str, ResolvedService] = {}
    sources: Annotated[list[str], PythonOnly("the files as this machine's user names them")] = (
        Field([], description="The files merged, in order (display paths).")
    )

    @property
    def label(self) -> str:
        """The artifact directory name: `control-plane` or `control-plane-debug`."""
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def service_package_files(self) -> list[str]:
        return [svc.package_file for svc in self.services.values() if svc.package_file]

    def content_hash(self) -> str:
        """sha256 over everything that goes into the image from the profile. Referenced
        files count by content, not by path, so the same profile in another checkout or
        directory hashes alike; `sources` (where the files were found) does not count."""
        body = self.model_dump(mode="json", exclude={"sources"})
        body["ssh"]["authorized_keys"] = [file_digest(p) for p in self.ssh.authorized_keys]
        for service in body["services"].values():
            if service["package_file"] is not None:
                service["package_file"] = file_digest(service["package_file"])
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def file_digest(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def setting_defaults() -> dict[str, Any]:
    """The defaults of every mergeable key of a profile file, and of a service's section:
    what the Nix resolver fills in (nix/lib/profile-defaults.json holds this, and the parity
    check proves it current)."""
    return {
        "profile": ProfileFile().model_dump(mode="json", exclude={*NOT_MERGED, "description"}),
        "service": ServiceSection().model_dump(mode="json"),
    }


def profile_json_schema() -> dict[str, Any]:
    """JSON Schema of a profile file, for editors (`plasmaboot schema`)."""
    schema = ProfileFile.model_json_schema()
    schema["title"] = "plasmaboot profile"
    schema["$id"] = "https://plasmacloud.dev/schemas/plasmaboot-profile.json"
    return schema
