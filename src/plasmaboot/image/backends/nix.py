"""The nix backend: builds a profile's NixOS netboot image from the flake (flake.nix at the
repository root, or the one given) with `nix build`, and copies its kernel and initrd out.

The flake generates `nixosConfigurations.netboot-<label>` from the same profiles/*.toml
files the Python side reads (plasmaboot.profiles.nixparity proves both sides resolve them
alike).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, KERNEL
from plasmaboot.errors import UserError, WorkError
from plasmaboot.image.backend import (
    BackendOptions,
    BackendType,
    BuildRequest,
    BuildResult,
    Suitability,
    option,
)
from plasmaboot.image.backends import register
from plasmaboot.image.cache import code_fingerprint
from plasmaboot.log import Log
from plasmaboot.nix import (
    PROBE_TIMEOUT,
    check_nix,
    json_output,
    last_line,
    nix_command,
    nix_works,
)
from plasmaboot.paths import data_dir
from plasmaboot.run import run

# The parts of an image the flake builds, each to an out-link in the staging directory.
OUTPUTS = (
    ("netbootRamdisk", "initrd-link"),
    ("kernel", "kernel-link"),
    ("toplevel", "toplevel-link"),
)


def flake_inputs_problem(
    flake: Path | None = None, input_options: Iterable[str] = ()
) -> str | None:
    """Why the flake's inputs (nixpkgs above all, and any `--override-input` the build will
    use) cannot be fetched here, or None if they can. One quick attempt with a short connect
    timeout: `auto` must not stall offline."""
    target = flake or default_flake()
    proc = run(
        nix_command(
            "--option",
            "download-attempts",
            "1",
            "--option",
            "connect-timeout",
            "3",
            "flake",
            "metadata",
            "--json",
            str(target.resolve()),
            *input_options,
        ),
        check=False,
        timeout=PROBE_TIMEOUT,
    )
    if proc.returncode == 0:
        return None
    return last_line(proc.stdout)


def default_flake() -> Path:
    root = data_dir()
    if not (root / "flake.nix").is_file():
        raise UserError(
            f"no flake.nix in {root}",
            hint="pass the plasmaboot flake directory (with flake.nix) as --flake",
        )
    return root


def checked_flake(flake: Path | None) -> str:
    """The absolute path of the flake to build (`--flake`, else this checkout's)."""
    flake = flake or default_flake()
    if not (flake / "flake.nix").is_file():
        raise UserError(
            f"--flake {flake}: no flake.nix there",
            hint="pass the directory that holds the plasmaboot flake.nix",
        )
    return str(flake.resolve())


def nix_code_fingerprint() -> str:
    """The set's code (image/, formats/, artifacts/) and the nix driver (plasmaboot.nix)."""
    return code_fingerprint(Path(__file__).resolve().parents[2] / "nix.py")


@dataclass(frozen=True)
class NixOptions(BackendOptions):
    """The Nix backend's options (`--flake`, `--plasmacloud`)."""

    flake: Path | None = option(
        None, help="the plasmaboot flake directory (default: this checkout's flake.nix)"
    )
    plasmacloud: str | None = option(
        None,
        metavar="FLAKE_REF",
        help="--override-input plasmacloud FLAKE_REF, the flake whose overlays.default has "
        "the PlasmaCloud service packages (path:/src/plasmacloud, github:org/plasmacloud, ...)",
    )

    def check(self) -> None:
        super().check()
        checked_flake(self.flake)


class NixBackend:
    """Builds NixOS netboot images with `nix build` from the plasmaboot flake."""

    name = "nix"
    takes_ssh_keys = False  # the flake reads the profile's key files, never --ssh-key

    def __init__(self, options: NixOptions | None = None) -> None:
        self.options = options or NixOptions()

    def check_options(self) -> None:
        self.options.check()

    def check_available(self) -> None:
        check_nix()

    def suitability(self) -> Suitability:
        """Picked by auto only where nix works and can fetch the flake's inputs (one quick
        attempt): offline, a NixOS build could not even start."""
        if not nix_works():
            return Suitability(usable=False, reason="no working nix with flakes")
        problem = flake_inputs_problem(self.options.flake, self.input_options())
        if problem is not None:
            return Suitability(
                usable=False, reason=f"nix cannot fetch the flake's inputs ({problem})"
            )
        return Suitability(usable=True, reason="nix with flakes and reachable inputs")

    def flake_ref(self) -> str:
        return checked_flake(self.options.flake)

    def input_options(self) -> list[str]:
        """What every nix command gets for `--plasmacloud`."""
        if self.options.plasmacloud is None:
            return []
        return ["--override-input", "plasmacloud", self.options.plasmacloud]

    def cache_inputs(self, request: BuildRequest) -> dict[str, str]:
        """The flake's content hash (every file nix sees) and its locked inputs, with the
        `--plasmacloud` override applied, from `nix flake metadata`. Reading flake.lock
        instead would miss: the first build writes it, and an override is not in it."""
        proc = run(
            nix_command("flake", "metadata", "--json", self.flake_ref(), *self.input_options()),
            check=False,
            timeout=PROBE_TIMEOUT,
        )
        if proc.returncode != 0:
            raise WorkError(f"nix cannot lock the flake's inputs: {last_line(proc.stdout)}")
        metadata = json_output(proc.stdout)
        # our code turns nix's output into the set (padding, layers, manifest): a change
        # to it misses, as for the Debian backend
        inputs = {"flake": str(metadata["locked"]["narHash"]), "code": nix_code_fingerprint()}
        for name, node in sorted(metadata["locks"]["nodes"].items()):
            if "locked" in node:
                # lastModified of a path: input is its mtime, which says nothing of content
                locked = {k: v for k, v in node["locked"].items() if k != "lastModified"}
                inputs[f"input:{name}"] = json.dumps(locked, sort_keys=True)
        return inputs

    def build(self, request: BuildRequest) -> BuildResult:
        flake = self.flake_ref()
        attr = f"netboot-{request.profile.label}"
        log = request.log
        with log.step("check the flake"):
            self.require_configuration(flake, attr, log)
        links: dict[str, Path] = {}
        for output, link in OUTPUTS:
            with log.step(f"nix build {output}"):
                links[output] = request.staging / link
                run(
                    nix_command(
                        "build",
                        f"{flake}#nixosConfigurations.{attr}.config.system.build.{output}",
                        *self.input_options(),
                        "--out-link",
                        str(links[output]),
                        "--print-build-logs",
                    ),
                    log=log,
                )
        # The set gets copies: links into /nix/store must not be published or served.
        paths = {output: link.resolve() for output, link in links.items()}
        for out_link in links.values():
            out_link.unlink()
        with log.step("copy kernel and initrd"):
            copy_artifact(paths["netbootRamdisk"] / "initrd", request.staging / INITRD)
            copy_artifact(paths["kernel"] / "bzImage", request.staging / KERNEL)
        toplevel = paths["toplevel"]
        init = toplevel / "init"
        if not init.is_file():
            raise WorkError(f"the built system has no init: {init} is missing")
        log.info(f"init: {init}")
        return BuildResult(
            kernel_version=kernel_version(paths["kernel"]),
            distro=f"nixos {nixos_release(toplevel)}",
            extra_kernel_params=(f"init={init}",),
        )

    def require_configuration(self, flake: str, attr: str, log: Log) -> None:
        """Fail clearly when the flake has no configuration for this profile (for example a
        new profile file git does not track yet, so the flake cannot see it)."""
        proc = run(
            nix_command(
                "eval",
                "--json",
                f"{flake}#nixosConfigurations",
                "--apply",
                "builtins.attrNames",
                *self.input_options(),
            ),
            log=log,
        )
        names = json_output(proc.stdout)
        if attr not in names:
            known = ", ".join(name.removeprefix("netboot-") for name in names)
            raise UserError(
                f"flake {flake} has no nixosConfigurations.{attr}; it has: {known}",
                hint="put the profile in the flake's profiles/ directory; in a git checkout "
                "also `git add` it (flakes see only files git tracks)",
            )


def copy_artifact(source: Path, target: Path) -> None:
    if not source.is_file():
        raise WorkError(f"nix build produced no {source.name}: {source} is missing")
    shutil.copyfile(source, target)
    target.chmod(0o644)


def kernel_version(kernel: Path) -> str:
    """The kernel's version: its lib/modules/<version> directory, else the store name."""
    modules = sorted(p.name for p in (kernel / "lib" / "modules").glob("*") if p.is_dir())
    if modules:
        return modules[0]
    match = re.search(r"-linux-(\d[^/]*)$", kernel.name)
    if match is None:
        raise WorkError(f"cannot tell the kernel version of {kernel}")
    return match.group(1)


def nixos_release(toplevel: Path) -> str:
    """`24.05` from the system's nixos-version (`24.05.20240601.abcdef`)."""
    version_file = toplevel / "nixos-version"
    if not version_file.is_file():
        raise WorkError(f"the built system has no nixos-version: {version_file} is missing")
    version = version_file.read_text(encoding="utf-8").strip()
    return ".".join(version.split(".")[:2])


# auto tries nix first: where it works, its images are the seed's own NixOS ones
register(BackendType(name=NixBackend.name, options=NixOptions, make=NixBackend, auto_rank=1))
