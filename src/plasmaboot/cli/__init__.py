"""The plasmaboot command line: profiles, schema, build, verify, serve, boot-test.

Exit codes: 0 success, 1 a failure while working, 2 bad input or usage. A user error is one
line (what, where) plus a hint; a traceback only with --debug.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from plasmaboot import __version__
from plasmaboot.artifacts import (
    BOOT_FILES,
    MANIFEST,
    ensure_writable_dir,
    publish_atomically,
    read_manifest,
)
from plasmaboot.boot.qemu import Nic
from plasmaboot.boot.test import BootTestOptions, render_table, report_json, run_boot_test
from plasmaboot.errors import PlasmabootError, UserError, WorkError
from plasmaboot.image.backends.debian.backend import DEFAULT_SQUASHFS_LEVEL
from plasmaboot.image.pipeline import BACKENDS, BuildOptions, BuildOutcome, build_profiles
from plasmaboot.profiles import Profile, ProfileStore, profile_json_schema
from plasmaboot.verify import Outcome, check_manifest, verify_set

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


class Context:
    """Options shared by every command."""

    def __init__(self, debug: bool, profiles_dirs: tuple[Path, ...]) -> None:
        self.debug = debug
        self.profiles_dirs = profiles_dirs

    def store(self) -> ProfileStore:
        return ProfileStore(self.profiles_dirs)


pass_context = click.make_pass_decorator(Context)


class Group(click.Group):
    """Turns plasmaboot errors into one clean line and the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PlasmabootError as exc:
            if isinstance(ctx.obj, Context) and ctx.obj.debug:
                raise
            report_error(exc)
            sys.exit(exc.exit_code)


def report_error(exc: PlasmabootError) -> None:
    # escape: messages quote TOML ("[services.iam]"), which rich would take for markup;
    # soft_wrap: a message stays one line whatever the terminal width.
    kind = "error" if exc.exit_code == 2 else "failed"
    line = f"[bold red]{kind}:[/] {escape(exc.message)}"
    err_console.print(line, markup=True, highlight=False, soft_wrap=True)
    if exc.hint:
        hint = f"[dim]hint:[/] {escape(exc.hint)}"
        err_console.print(hint, markup=True, highlight=False, soft_wrap=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="plasmaboot")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--profiles-dir",
    "profiles_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    envvar="PLASMABOOT_PROFILES_DIR",
    help="Extra directory of <name>.toml profiles (searched before the built-in ones).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool, profiles_dirs: tuple[Path, ...]) -> None:
    """Build, verify, publish, serve and boot-test PlasmaCloud netboot images.

    \b
    Typical flow:
      plasmaboot profiles list
      plasmaboot build --profile control-plane --ssh-key ~/.ssh/id_ed25519.pub
      plasmaboot verify artifacts/control-plane
      plasmaboot boot-test control-plane --identity ~/.ssh/id_ed25519
      plasmaboot serve --root artifacts
    """
    ctx.obj = Context(debug, profiles_dirs)


# --------------------------------------------------------------------------------------
# profiles


@main.group()
def profiles() -> None:
    """List and show profiles (TOML files; see README: Profiles)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
def profiles_list(obj: Context, as_json: bool) -> None:
    """List profiles: name, extends, description, services."""
    store = obj.store()
    resolved = [store.resolve(name) for name in store.profile_names()]
    if as_json:
        rows = [
            {
                "name": p.name,
                "extends": p.extends,
                "description": p.description,
                "services": list(p.services),
            }
            for p in resolved
        ]
        click.echo(json.dumps({"profiles": rows, "variants": store.variant_names()}, indent=2))
        return
    table = Table(title="profiles")
    for column in ("name", "extends", "description", "services"):
        table.add_column(column)
    for p in resolved:
        services = ", ".join(p.services) if p.services else "-"
        table.add_row(p.name, ", ".join(p.extends) or "-", p.description, services)
    console.print(table)
    console.print(f"variants (--variant): {', '.join(store.variant_names())}")


@profiles.command("show")
@click.argument("name")
@click.option("--variant", help="Apply a variant (minimal, debug, rescue, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved profile as JSON.")
@pass_context
def profiles_show(obj: Context, name: str, variant: str | None, as_json: bool) -> None:
    """Show the fully resolved profile NAME (inheritance and variant applied)."""
    profile = obj.store().resolve(name, variant)
    if as_json:
        body = profile.model_dump(mode="json")
        body["content_hash"] = profile.content_hash()
        click.echo(json.dumps(body, indent=2))
        return
    print_profile(profile)


def print_profile(profile: Profile) -> None:
    console.print(f"[bold]{profile.label}[/]: {profile.description}")
    console.print(f"  sources:  {', '.join(profile.sources)}")
    console.print(f"  packages: {', '.join(profile.packages)}")
    console.print(f"  kernel:   {' '.join(profile.kernel_params)}")
    if profile.kernel_modules:
        console.print(f"  modules:  {', '.join(profile.kernel_modules)}")
    for key, value in profile.sysctl.items():
        console.print(f"  sysctl:   {key} = {value}")
    if profile.services:
        table = Table(title="services")
        for column in ("service", "enabled", "ports", "MemoryMax", "CPUQuota", "package"):
            table.add_column(column)
        for svc in profile.services.values():
            ports = ", ".join(f"{k}={v}" for k, v in svc.ports.items())
            table.add_row(
                svc.name,
                "yes" if svc.enable else "no",
                ports,
                svc.memory_max or "-",
                svc.cpu_quota or "-",
                svc.package_file or f"({svc.package_name}: not given)",
            )
        console.print(table)


@main.command()
def schema() -> None:
    """Print the JSON Schema of a profile file (for editors)."""
    click.echo(json.dumps(profile_json_schema(), indent=2))


# --------------------------------------------------------------------------------------
# build


@main.command()
@click.option("--profile", "-p", "profile_names", multiple=True, help="Profile to build (repeat).")
@click.option("--all", "build_all", is_flag=True, help="Build every profile.")
@click.option("--variant", help="Variant applied to each profile (minimal, debug, rescue, ...).")
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Artifacts go to OUTPUT_DIR/<profile>/.",
)
@click.option(
    "--pxe-dir",
    type=click.Path(path_type=Path),
    help="Also publish bzImage, initrd, netboot.ipxe atomically to PXE_DIR/<profile>/.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="auto = nix where a working nix with flakes is present, else debian.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Profiles built in parallel.",
)
@click.option(
    "--no-cache", is_flag=True, help="Rebuild from scratch (downloaded .debs are still reused)."
)
@click.option(
    "--ssh-key",
    "ssh_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Public key file for root's authorized_keys (repeat). Private keys are refused.",
)
@click.option("--release", default="bookworm", show_default=True, help="Debian release.")
@click.option(
    "--mirror", default="http://deb.debian.org/debian", show_default=True, help="Debian mirror URL."
)
@click.option(
    "--squashfs-level",
    type=click.IntRange(1, 22),
    default=DEFAULT_SQUASHFS_LEVEL,
    show_default=True,
    help="zstd level of the root squashfs (higher: smaller, slower).",
)
@click.option(
    "--flake",
    type=click.Path(path_type=Path),
    help="Nix backend: the plasmaboot flake directory (default: this checkout's flake.nix).",
)
@click.option(
    "--plasmacloud",
    metavar="FLAKE_REF",
    help="Nix backend: --override-input plasmacloud FLAKE_REF, the flake whose overlays.default "
    "has the PlasmaCloud service packages (path:/src/plasmacloud, github:org/plasmacloud, ...).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary for scripts.")
@pass_context
def build(
    obj: Context,
    profile_names: tuple[str, ...],
    build_all: bool,
    variant: str | None,
    output_dir: Path,
    pxe_dir: Path | None,
    backend: str,
    jobs: int,
    no_cache: bool,
    ssh_keys: tuple[Path, ...],
    release: str,
    mirror: str,
    squashfs_level: int,
    flake: Path | None,
    plasmacloud: str | None,
    as_json: bool,
) -> None:
    """Build netboot artifacts into OUTPUT_DIR/<profile>/ (bzImage, initrd, netboot.ipxe, ...).

    \b
    Examples:
      plasmaboot build --profile control-plane --ssh-key ~/.ssh/id_ed25519.pub
      plasmaboot build --all --jobs 2 --pxe-dir /srv/pxe/assets/nixos
      plasmaboot build -p worker --variant debug --backend debian
      plasmaboot build -p worker --backend nix --plasmacloud path:../plasmacloud
    """
    store = obj.store()
    names = list(profile_names)
    if build_all:
        names += [n for n in store.profile_names() if n not in names]
    if not names:
        raise UserError("no profile given", hint="pass --profile NAME (repeatable) or --all")
    names = list(dict.fromkeys(names))  # a profile given twice is built once
    resolved = [store.resolve(name, variant) for name in names]
    options = BuildOptions(
        output_dir=output_dir.absolute(),
        pxe_dir=pxe_dir.absolute() if pxe_dir else None,
        backend=backend,
        jobs=jobs,
        use_cache=not no_cache,
        ssh_keys=ssh_keys,
        release=release,
        mirror=mirror,
        squashfs_level=squashfs_level,
        flake=flake,
        plasmacloud=plasmacloud,
    )
    with BuildProgress(err_console, quiet=as_json) as progress:
        outcomes = build_profiles(
            resolved, options, progress.update, on_backend=progress.announce_backend
        )
    if as_json:
        click.echo(json.dumps([outcome_json(o) for o in outcomes], indent=2))
    else:
        print_summary(outcomes)


@main.command()
@click.argument("sets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--pxe-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="PXE server assets directory; each set goes to PXE_DIR/<label>/.",
)
def publish(sets: tuple[Path, ...], pxe_dir: Path) -> None:
    """Publish built artifact SETS (e.g. artifacts/worker) to a PXE server's assets directory.

    Copies bzImage, initrd and netboot.ipxe to PXE_DIR/<label>/ atomically: the new set
    appears whole or not at all, and the previous one stays for nodes still downloading it.
    Every file is checked against manifest.json first; a damaged set is refused.
    """
    for directory in sets:
        if not (directory / MANIFEST).is_file():
            raise UserError(
                f"{directory}: no {MANIFEST}, so this is not an artifact set",
                hint="give a directory a build wrote, e.g. artifacts/<profile>",
            )
        checks, _ = check_manifest(directory)  # the same byte check `verify` makes
        problems = [f"{c.name}: {c.detail}" for c in checks if c.result is Outcome.FAIL]
        if problems:
            raise UserError(
                f"{directory}: refusing to publish: {'; '.join(problems)}",
                hint="rebuild it (plasmaboot build --no-cache)",
            )
    ensure_writable_dir(pxe_dir, "--pxe-dir")
    for directory in sets:
        label = read_manifest(directory).label
        published = publish_atomically(directory, pxe_dir.absolute(), label, BOOT_FILES)
        console.print(f"{label}: published to {pxe_dir / label} ({published.name})")


def outcome_json(outcome: BuildOutcome) -> dict[str, Any]:
    return {
        "profile": outcome.profile.name,
        "variant": outcome.profile.variant,
        "label": outcome.profile.label,
        "backend": outcome.backend,
        "kernel_version": outcome.kernel_version,
        "kernel_size": outcome.kernel_size,
        "initrd_size": outcome.initrd_size,
        "total_size": outcome.total_size,
        "seconds": round(outcome.seconds, 2),
        "cache_hit": outcome.cache_hit,
        "path": str(outcome.path),
        "published": str(outcome.published) if outcome.published else None,
        "warnings": outcome.warnings,
    }


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def print_summary(outcomes: list[BuildOutcome]) -> None:
    table = Table(title="build summary")
    for column in ("profile", "variant", "backend", "kernel", "initrd", "total", "time", "cache"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(
            o.profile.name,
            o.profile.variant or "-",
            o.backend,
            mib(o.kernel_size),
            mib(o.initrd_size),
            mib(o.total_size),
            f"{o.seconds:.1f}s",
            "hit" if o.cache_hit else "miss",
        )
    console.print(table)
    for o in outcomes:
        for warning in o.warnings:
            console.print(f"[yellow]warning[/] {o.profile.label}: {warning}", highlight=False)
        console.print(
            f"{o.profile.label}: {o.path}"
            + (f" (published to {o.published})" if o.published else "")
        )


class BuildProgress:
    """Live progress per profile on a terminal; plain timestamped lines otherwise."""

    def __init__(self, out: Console, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.live = out.is_terminal and not quiet
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BuildProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def announce_backend(self, name: str) -> None:
        if not self.quiet:
            self.out.print(f"backend: {name}")

    def update(self, subject: str, step: str, seconds: float | None) -> None:
        if self.quiet:
            return
        if not self.live:
            done = f" done in {seconds:.1f}s" if seconds is not None else ""
            self.out.print(f"{time.strftime('%H:%M:%S')} {subject}: {step}{done}", highlight=False)
            return
        if subject not in self.tasks:
            self.tasks[subject] = self.progress.add_task(subject, total=None)
        text = f"[bold]{subject}[/]: {escape(step)}" + (f" ({seconds:.1f}s)" if seconds else "")
        self.progress.update(self.tasks[subject], description=text)


# verify


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {ok, checks} as JSON for scripts.")
def verify(directory: Path, as_json: bool) -> None:
    """Read the artifact set in DIRECTORY back and check it, trusting nothing the build says:
    kernel header, initrd segments, root squashfs, image security, iPXE script, hashes.

    Exit 0 when every check passes, 1 when any fails, 2 when DIRECTORY is not a set.
    """
    from rich.text import Text

    report = verify_set(directory)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        styles = {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.SKIP: "yellow"}
        table = Table(title=Text(f"verify {directory}"))
        for column in ("check", "result", "detail"):
            table.add_column(column)
        for check in report.checks:
            result = Text(str(check.result), style=styles[check.result])
            table.add_row(Text(check.name), result, Text(check.detail))
        console.print(table)
    if not report.ok:
        names = ", ".join(check.name for check in report.failures)
        raise WorkError(f"verify {directory}: {len(report.failures)} checks failed: {names}")


# --------------------------------------------------------------------------------------
# serve


@main.command()
@click.option(
    "--root",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory of published artifact sets (what `build --output-dir` wrote).",
)
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="HOST:PORT to bind ([::1]:PORT for IPv6, port 0 picks a free one).",
)
@click.option("--allow-remote", is_flag=True, help="Allow binding an address other than loopback.")
@click.option(
    "--public-url",
    help="Base URL written into boot scripts (default: from each request's Host header).",
)
@click.option(
    "--access-log",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append access log lines to this file instead of stderr.",
)
def serve(
    root: Path, listen: str, allow_remote: bool, public_url: str | None, access_log: Path | None
) -> None:
    """Serve artifact sets and iPXE boot scripts over HTTP until Ctrl-C.

    \b
    Nodes chain  http://HOST:PORT/boot.ipxe               (menu of labels)
             or  http://HOST:PORT/boot.ipxe?profile=LABEL
             or  http://HOST:PORT/LABEL/netboot.ipxe
    """
    from plasmaboot.serve import check_listen, parse_listen, serve_forever

    host, port = parse_listen(listen)
    check_listen(host, allow_remote)
    if not root.is_dir():
        raise UserError(
            f"--root {root}: no such directory",
            hint="pass the directory `plasmaboot build --output-dir` wrote (e.g. artifacts)",
        )
    serve_forever(
        root,
        host,
        port,
        public_url=public_url,
        access_log=access_log,
        announce=lambda line: click.echo(line, err=True),
    )


# --------------------------------------------------------------------------------------
# check (the Nix side)


@main.command()
@click.option(
    "--flake",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The plasmaboot flake directory (default: this checkout).",
)
@click.option(
    "--eval-only",
    is_flag=True,
    help="Skip `nix flake check` (it fetches nixpkgs); only parse and compare profiles.",
)
def check(flake: Path | None, eval_only: bool) -> None:
    """Check the Nix side: parse every .nix file, prove nix/lib/profiles.nix resolves every
    profile and variant as the Python loader does, then run `nix flake check`."""
    import shutil

    from plasmaboot.errors import UserError, WorkError
    from plasmaboot.image.backends.nix import (
        check_nix,
        default_flake,
        nix_command,
        nix_files,
        parse_nix_files,
        profile_differences,
    )
    from plasmaboot.run import run

    root = flake or default_flake()
    if shutil.which("nix") is None:
        raise UserError(
            "check skipped: nix is not installed, so the flake cannot be evaluated",
            hint="install it: apt-get install nix-bin (or run `make setup`)",
        )
    check_nix()
    files = nix_files(root)
    parse_nix_files(files)
    console.print(f"parsed {len(files)} .nix files")
    problems = profile_differences(root / "profiles", root / "nix" / "lib" / "profiles.nix")
    if problems:
        raise WorkError(
            "nix/lib/profiles.nix and the Python loader disagree:\n  " + "\n  ".join(problems)
        )
    console.print("profiles: Nix and Python resolve every profile and variant alike")
    if eval_only:
        console.print("nix flake check: skipped (--eval-only)")
        return
    run(nix_command("flake", "check", str(root.resolve()), "--print-build-logs"))
    console.print("nix flake check: passed")


# --------------------------------------------------------------------------------------
# boot-test


@main.command("boot-test")
@click.argument("label")
@click.option(
    "--artifacts",
    type=click.Path(path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Directory holding <LABEL>/ (bzImage, initrd, netboot.ipxe, manifest.json).",
)
@click.option(
    "--identity",
    type=click.Path(path_type=Path),
    required=True,
    help="SSH private key whose public key is in the image.",
)
@click.option(
    "--memory",
    "memory_mib",
    type=click.IntRange(256),
    default=2048,
    show_default=True,
    help="Guest memory in MiB.",
)
@click.option(
    "--nic",
    type=click.Choice([n.value for n in Nic]),
    default="virtio",
    show_default=True,
    help="Guest network card (its iPXE ROM does the PXE boot).",
)
@click.option(
    "--cpu",
    metavar="MODEL",
    default=None,
    help="QEMU CPU model, e.g. max or Skylake-Server,-avx512f "
    "[default: host under KVM, qemu64 under TCG, whose emulation is fastest].",
)
@click.option(
    "--boots",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Boot N times (2+: also check that SSH host keys differ per boot).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=None,
    help="Seconds from power-on to SSH [default: 300 under TCG, 120 under KVM].",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the JSON report [default: ARTIFACTS/boot-test-LABEL.json].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout.")
@pass_context
def boot_test(
    obj: Context,
    label: str,
    artifacts: Path,
    identity: Path,
    memory_mib: int,
    nic: str,
    cpu: str | None,
    boots: int,
    timeout: float | None,
    report: Path | None,
    as_json: bool,
) -> None:
    """PXE-boot the image LABEL in QEMU (TFTP -> iPXE -> HTTP) and check it over SSH.

    Exit 0 when every check passes, 1 when one fails, 2 on bad input.
    """
    options = BootTestOptions(
        label=label,
        artifacts=artifacts,
        identity=identity,
        memory_mib=memory_mib,
        nic=Nic(nic),
        cpu=cpu,
        boots=boots,
        report=report,
        timeout=timeout,
        profiles_dirs=obj.profiles_dirs,
    )
    result = run_boot_test(options, announce=None if as_json else err_console.print)
    if as_json:
        click.echo(report_json(result))
    else:
        console.print(render_table(result))
        for boot in result.boots:
            phases = ", ".join(f"{k} {v:.1f}s" for k, v in boot.phases.items())
            console.print(f"boot {boot.index}: {phases}")
        console.print(
            f"accelerator: {result.accelerator} ({result.accelerator_reason}), cpu {result.cpu}"
        )
        if result.memory:
            console.print(
                f"memory: {result.memory['mem_available_mib']} MiB available "
                f"of {result.memory['mem_total_mib']} MiB"
            )
        console.print(f"report: {result.report_path}")
    if not result.passed:
        sys.exit(1)
