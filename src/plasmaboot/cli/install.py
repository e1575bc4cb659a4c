"""`plasmaboot install`: a netbooted node to its disk, then its first boot from it (Debian
backend); `--nix` prints the disko configuration and nixos-anywhere command instead."""

from __future__ import annotations

import ipaddress
import json
import tempfile
from pathlib import Path

import click
from rich.markup import escape

from plasmaboot.artifacts.layout import INSTALLED_INITRD, MANIFEST, sha256_file
from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.cli.context import Context, console, err_console, pass_context
from plasmaboot.cli.machines import inventory_option
from plasmaboot.errors import PlasmabootError, UserError
from plasmaboot.install import luks
from plasmaboot.install.debian import Install
from plasmaboot.install.disko import disko_config, nixos_anywhere_command
from plasmaboot.install.flow import (
    Report,
    check_services,
    install_to_disk,
    reboot,
    wait_for_installed,
)
from plasmaboot.install.layout import Layout, default_layout_path, load_layout
from plasmaboot.install.packages import (
    Deb,
    closure,
    fetch_debs,
    kernel_config,
    node_packages,
    read_debs,
    system_packages,
)
from plasmaboot.install.remote import SshRemote
from plasmaboot.install.secrets import list_secrets
from plasmaboot.inventory.installed import mark_installed, record_installed_host_keys
from plasmaboot.inventory.load import load_inventory
from plasmaboot.inventory.model import Machine
from plasmaboot.inventory.state import make_private_dirs, read_host_keys, state_dir
from plasmaboot.log import Log
from plasmaboot.paths import cache_dir
from plasmaboot.profiles.located_errors import display_path

DEFAULT_MIRROR = "http://deb.debian.org/debian"


@click.command("install")
@click.argument("machine", required=False)
@inventory_option
@click.option("--host", help="The node's address (default: the inventory's or its reported one).")
@click.option(
    "--layout",
    "layout_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Disk layout (default: the machine's, else layouts/<profile>.toml).",
)
@click.option(
    "--identity",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Private key that logs in as root on the node.",
)
@click.option(
    "--known-hosts",
    type=click.Path(path_type=Path, dir_okay=False),
    help="known_hosts holding the node's key (default: its reported keys in the state).",
)
@click.option(
    "--insecure-first-use",
    is_flag=True,
    help="Trust whatever key the node shows (tests only; never on a real network).",
)
@click.option(
    "--secrets",
    "secrets_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("secrets"),
    show_default=True,
    help="Secrets directory: DIR/<machine>/ lands on the installed root as it is.",
)
@click.option(
    "--artifacts",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("artifacts"),
    show_default=True,
    help="The artifacts directory: the machine's set there gives the kernel.",
)
@click.option(
    "--debs",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of .debs for GRUB (default: the build cache's debs/<release>).",
)
@click.option(
    "--fetch-debs", is_flag=True, help="Download the .debs into --debs when some are missing."
)
@click.option(
    "--release", default="bookworm", show_default=True, help="Debian release of the image."
)
@click.option(
    "--mirror", default=DEFAULT_MIRROR, show_default=True, help="Mirror for --fetch-debs."
)
@click.option("--wipe", is_flag=True, help="Erase a disk that holds partitions or filesystems.")
@click.option("--no-reboot", is_flag=True, help="Stop after the install (no first boot).")
@click.option(
    "--boot-timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds to wait for the installed system's SSH.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where the JSON report goes (default: the state's reports/, or ./install-report.json).",
)
@click.option(
    "--nix",
    "nix_flake",
    metavar="FLAKE",
    help="Nix backend: print the disko configuration and nixos-anywhere command for FLAKE.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_context
def install(
    obj: Context,
    machine: str | None,
    inventory: Path | None,
    host: str | None,
    layout_file: Path | None,
    identity: Path,
    known_hosts: Path | None,
    insecure_first_use: bool,
    secrets_dir: Path,
    artifacts: Path,
    debs: Path | None,
    fetch_debs: bool,
    release: str,
    mirror: str,
    wipe: bool,
    no_reboot: bool,
    boot_timeout: float,
    report_file: Path | None,
    nix_flake: str | None,
    as_json: bool,
) -> None:
    """Install MACHINE (netbooted, reachable over SSH) to its disk and boot it from there.

    \b
      plasmaboot install cp1 --inventory machines.toml --identity ~/.ssh/id_ed25519
      plasmaboot install --host 10.0.0.5 --layout layouts/default.toml --identity KEY \\
          --known-hosts known_hosts --artifacts artifacts   (no inventory: machine "node")
    """
    entry = find_machine(obj, inventory, machine)
    name = entry.name if entry else (machine or "node")
    address = host.removeprefix("root@") if host else node_address(inventory, entry)
    layout_path = layout_file or (
        Path(entry.layout)
        if entry and entry.layout
        else default_layout_path(entry.profile if entry else "default", inventory)
    )
    layout = load_layout(layout_path)
    machine_secrets = secrets_dir / name
    if nix_flake is not None:
        print_nix(layout, nix_flake, name, address, identity, machine_secrets)
        return
    report_path = report_file or (
        state_dir(inventory) / "reports" / f"install-{name}.json"
        if inventory and entry
        else Path("install-report.json")
    )
    report = Report(name, address)
    make_private_dirs(report_path.parent)  # the state directory is 0700 (C3)
    with (
        Log(report_path.with_suffix(".log"), subject=name) as log,
        tempfile.TemporaryDirectory() as tmp,
    ):
        try:
            pinned = known_hosts_file(
                inventory, entry, known_hosts, insecure_first_use, Path(tmp), address
            )
            label = entry.label if entry else None
            secrets = list_secrets(machine_secrets)
            keys = luks.key_files(layout, display_path(layout_path), secrets, machine_secrets)
            job = Install(
                machine=name,
                hostname=entry.hostname if entry else name,
                layout=layout,
                kernel=set_kernel(artifacts, label),
                debs=[],
                services=entry.services if entry and entry.services is not None else (),
                secrets=secrets,
                luks_keys=keys,
                ipv4=entry.ipv4 if entry else None,
                macs=entry.macs if entry else (),
                wipe=wipe,
            )
            job.prebuilt_initrd, job.prebuilt_initrd_version = set_installed_initrd(job.kernel)
            node = SshRemote(address, identity, pinned, first_use=insecure_first_use, log=log)
            installed_keys = Path(tmp) / "installed_known_hosts"
            # one SSH connection for every command of the install (closed before the
            # installed system is reached, also on failure)
            with node.shared_connection():
                deb_dir = debs or cache_dir() / "debs" / release
                job.debs, job.node_debs, job.kernel_config = needed_debs(
                    node, layout, deb_dir, fetch_debs, release, mirror, log
                )
                progress(as_json, f"installing {name} on {address} (layout {layout_path})")
                install_to_disk(job, node, report, log)
                installed_keys.write_text("".join(f"{address} {key}\n" for key in job.host_keys))
                if inventory and entry:
                    recorded = ip_address_of(address, inventory, entry)
                    record_installed_host_keys(inventory, name, recorded, job.host_keys)
                    # before the reboot: the machine's next PXE boot must get its disk
                    mark_installed(inventory, name, set_name(artifacts, label), report_path)
                if not no_reboot:
                    progress(as_json, "rebooting into the installed system")
                    reboot(node)
            if not no_reboot:
                first = SshRemote(address, identity, installed_keys, log=log)
                wait_for_installed(first, boot_timeout)
                report.data["service_states"] = check_services(first, job.services)
            report.ok = True
        except PlasmabootError as exc:
            report.error = report.error or exc.message
            report.hint = report.hint or exc.hint
            raise
        finally:
            report.write(report_path)
            if as_json:
                click.echo(json.dumps(report.as_json(), indent=2))
            else:
                state = "installed" if report.ok else f"failed at {report.failed_step or 'start'}"
                err_console.print(
                    escape(f"{name}: {state}; report: {report_path}"), highlight=False
                )


def progress(as_json: bool, message: str) -> None:
    if not as_json:
        console.print(escape(message), highlight=False)


def find_machine(obj: Context, inventory: Path | None, machine: str | None) -> Machine | None:
    if inventory is None:
        if machine is not None:
            raise UserError(
                f"install {machine}: a machine name needs --inventory",
                hint="pass --inventory machines.toml, or --host ADDR --layout FILE without a name",
            )
        return None
    if machine is None:
        raise UserError("install: name the MACHINE to install (from --inventory)")
    found = load_inventory(inventory, obj.store())
    if machine not in found.machines:
        raise UserError(
            f"no machine {machine!r} in {found.path}",
            hint=f"known machines: {', '.join(found.machines) or '(none)'}",
        )
    return found.machines[machine]


def node_address(inventory: Path | None, entry: Machine | None) -> str:
    if entry is not None and entry.address:
        return entry.address
    if inventory is not None and entry is not None:
        reported = read_host_keys(inventory, entry.name)  # checked as it is read back
        if reported is not None:
            return reported.address
    raise UserError(
        "install: the node's address is unknown (no static ipv4 in the inventory, no report)",
        hint="pass --host ADDR",
    )


def ip_address_of(address: str, inventory: Path, entry: Machine) -> str:
    """The address the installed keys are recorded under: state keeps IP addresses only
    (`--host cp1.lab` is a name), so a name gives the inventory's or the reported one."""
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    if entry.address:
        return entry.address
    reported = read_host_keys(inventory, entry.name)
    return reported.address if reported is not None else address


def known_hosts_file(
    inventory: Path | None,
    entry: Machine | None,
    given: Path | None,
    first_use: bool,
    tmp: Path,
    address: str,
) -> Path:
    """The known_hosts install trusts for the RAM session: --known-hosts, else the keys the
    node reported (state), under the name ssh connects to (`address`, which --host may make
    a host name or another address) and the address the report came from; else only with
    --insecure-first-use an empty one to fill."""
    if given is not None:
        if not given.is_file():
            raise UserError(f"--known-hosts {given}: no such file")
        return given
    if inventory is not None and entry is not None:
        record = read_host_keys(inventory, entry.name)  # checked as it is read back
        if record is not None and not record.installed:
            path = tmp / "known_hosts"
            hosts = ",".join(dict.fromkeys([address, record.address]))
            path.write_text("".join(f"{hosts} {key}\n" for key in record.keys))
            return path
    if first_use:
        return tmp / "known_hosts"
    raise UserError(
        "install: no host key to trust for the node (no --known-hosts, no reported keys)",
        hint="pass --known-hosts FILE (e.g. from `plasmaboot machines known-hosts`); "
        "--insecure-first-use trusts any key (tests only)",
    )


def set_kernel(artifacts: Path, label: str | None) -> Path:
    directory = (artifacts / (label or "")).resolve() if label else artifacts.resolve()
    kernel = directory / "bzImage"
    if not kernel.is_file():
        raise UserError(
            f"--artifacts {artifacts}: no kernel for {label or 'the set'} ({kernel})",
            hint="pass the artifacts directory serve uses (or a set directory with --host)",
        )
    return kernel


def set_installed_initrd(kernel: Path) -> tuple[Path | None, str]:
    """The set's prebuilt initramfs for installed systems and its kernel's version (from
    the manifest beside it): (None, "") when the set has none (a Nix set, an older set) or
    its manifest does not record one; a UserError when it differs from the manifest's
    record (a damaged set would install a system that cannot boot)."""
    initrd = kernel.parent / INSTALLED_INITRD
    if not initrd.is_file():
        return None, ""
    try:
        manifest = read_manifest(kernel.parent)
    except (OSError, ValueError):
        return None, ""
    record = manifest.files.get(INSTALLED_INITRD)
    if record is None:  # not the build's: never pushed to a disk
        return None, ""
    if initrd.stat().st_size != record.size or sha256_file(initrd) != record.sha256:
        raise UserError(
            f"{display_path(initrd)} does not match its record in {MANIFEST} (damaged set)",
            hint="rebuild the set (plasmaboot build); `plasmaboot verify` checks a set",
        )
    return initrd, manifest.kernel_version


def set_name(artifacts: Path, label: str | None) -> str:
    return (artifacts / (label or "")).resolve().name


def needed_debs(
    node: SshRemote,
    layout: Layout,
    directory: Path,
    fetch: bool,
    release: str,
    mirror: str,
    log: Log,
) -> tuple[list[Deb], list[Deb], bytes]:
    """(.debs for the installed system's boot, .debs the node lacks to make the layout, the
    running kernel's config from its .deb)."""
    installed = set(node.sh("dpkg-query -W -f '${Package}\\n'").split())
    version = node.sh("uname -r").strip()

    def resolve() -> tuple[list[Deb], list[Deb], bytes]:
        available = read_debs(directory) if directory.is_dir() else {}
        return (
            closure(system_packages(layout), available, installed),
            closure(node_packages(layout), available, installed),
            kernel_config(available, version, log),
        )

    try:
        return resolve()
    except UserError:
        if not fetch:
            raise
    fetch_debs(directory, release, mirror, log)  # only what the cache lacks is downloaded
    return resolve()


def print_nix(
    layout: Layout, flake: str, name: str, address: str, identity: Path, secrets: Path
) -> None:
    click.echo(disko_config(layout))
    command = nixos_anywhere_command(
        layout, flake, name, f"root@{address}", identity, secrets if secrets.is_dir() else None
    )
    click.echo("# " + " ".join(command))
