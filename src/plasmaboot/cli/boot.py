"""`plasmaboot boot-test`: a real PXE boot in QEMU (QEMU's user network, or pxe-server in a
namespace of its own), then checks over SSH."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from plasmaboot.boot.provisioning import DEFAULT_SUBNET
from plasmaboot.boot.qemu import DEFAULT_MEMORY_MIB, Firmware, Nic
from plasmaboot.boot.test import BootTestOptions, Network, run_boot_test
from plasmaboot.checks import render_checks
from plasmaboot.cli.build import BuildProgress
from plasmaboot.cli.context import Context, console, err_console, pass_context
from plasmaboot.errors import UserError


@click.command("boot-test")
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
    default=DEFAULT_MEMORY_MIB,
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
    "--network",
    type=click.Choice([n.value for n in Network]),
    default="user",
    show_default=True,
    help="user: QEMU's own DHCP and TFTP, the HTTP server on loopback. netns (as root): "
    "plasmaboot pxe-server (dnsmasq's DHCP and TFTP, HTTP) in a network namespace of its "
    "own, with a one-machine inventory; also checks the node's hostname.",
)
@click.option(
    "--firmware",
    type=click.Choice([f.value for f in Firmware]),
    default="bios",
    show_default=True,
    help="bios: SeaBIOS and the NIC's iPXE ROM. uefi (with --network netns): OVMF, whose "
    "own PXE fetches snponly.efi over TFTP.",
)
@click.option(
    "--hostname",
    default=None,
    help="--network netns: the machine's host name in the inventory [default: LABEL].",
)
@click.option(
    "--netns-subnet",
    metavar="NETWORK",
    default=DEFAULT_SUBNET,
    show_default=True,
    help="--network netns: the namespace's network (server .1, machine .2, then a DHCP range).",
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
@click.option(
    "--profile",
    "profile_name",
    metavar="NAME",
    default=None,
    help="The profile LABEL was built from: if its files now resolve to something else, "
    "say so (the image built is still what is tested).",
)
@click.option("--variant", default=None, help="The variant LABEL was built with (with --profile).")
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
    network: str,
    firmware: str,
    hostname: str | None,
    netns_subnet: str,
    boots: int,
    timeout: float | None,
    report: Path | None,
    profile_name: str | None,
    variant: str | None,
    as_json: bool,
) -> None:
    """PXE-boot the image LABEL in QEMU (DHCP -> TFTP -> iPXE -> HTTP) and check it over SSH.

    The node is checked against the profile the image was built from (its manifest.json).
    With --network netns it boots through plasmaboot pxe-server, as a machine of the
    inventory boots on a provisioning network. Exit 0 when every check passes, 1 when one
    fails, 2 on bad input.
    """
    if variant is not None and profile_name is None:
        raise UserError(
            f"--variant {variant}: only means something with --profile",
            hint="give --profile NAME too, or leave --variant out",
        )
    current = obj.store().resolve(profile_name, variant) if profile_name is not None else None
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
        current_profile=current,
        network=Network(network),
        firmware=Firmware(firmware),
        hostname=hostname,
        netns_subnet=netns_subnet,
        profiles_dirs=obj.profiles_dirs,
    )
    # a spinner with the time so far on a terminal; a line with the duration otherwise
    with BuildProgress(err_console, quiet=as_json) as progress:
        started = time.monotonic()
        progress.update(label, "boot-test", None)
        result = run_boot_test(
            options,
            announce=None if as_json else err_console.print,
            notice=lambda line: err_console.print(
                line, markup=False, highlight=False, soft_wrap=True
            ),
        )
        progress.update(label, "boot-test", time.monotonic() - started)
    if as_json:
        click.echo(result.to_json())
    else:
        how = result.accelerator
        if result.network == Network.NETNS:
            how += f", {result.firmware} through pxe-server"
        title = f"boot-test {result.label} ({how})"
        console.print(render_checks(title, result.checks))
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
    if not result.ok:
        sys.exit(1)
