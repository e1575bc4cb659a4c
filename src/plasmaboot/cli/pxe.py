"""`plasmaboot pxe-server`: DHCP/TFTP (dnsmasq) and HTTP for the machines of the inventory."""

from __future__ import annotations

from pathlib import Path

import click

from plasmaboot.cli.context import Context, err_console, pass_context
from plasmaboot.cli.machines import inventory_option, inventory_path
from plasmaboot.cli.serve import root_option, token_ttl_option


@click.command("pxe-server")
@click.option("--interface", required=True, help="The provisioning network's interface.")
@root_option
@inventory_option
@click.option(
    "--dhcp-range",
    metavar="START,END",
    help="Hand out addresses from START to END (on the interface's network).",
)
@click.option(
    "--proxy-dhcp", is_flag=True, help="Boot data only, beside the site's own DHCP server."
)
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="Port of the HTTP server (scripts, kernels, initrds) on the interface's address.",
)
@token_ttl_option
@click.option("--print-config", is_flag=True, help="Print the dnsmasq configuration and exit.")
@pass_context
def pxe_server(
    obj: Context,
    interface: str,
    root: Path,
    inventory: Path | None,
    dhcp_range: str | None,
    proxy_dhcp: bool,
    http_port: int,
    token_ttl: float,
    print_config: bool,
) -> None:
    """Answer the inventory's machines with DHCP (or proxyDHCP) and TFTP through dnsmasq,
    and serve their boot scripts and images over HTTP, until Ctrl-C or SIGTERM.

    \b
    BIOS clients get undionly.kpxe and UEFI x86-64 clients snponly.efi over TFTP (Debian's
    ipxe package); iPXE then gets http://ADDRESS:PORT/boot.ipxe and each machine its own
    script. MACs that are not in the inventory get no answer at all.
    Example:
      plasmaboot pxe-server --interface eno2 --root artifacts --inventory machines.toml \\
          --dhcp-range 10.20.0.100,10.20.0.199
    """
    from plasmaboot.pxe.server import PxeOptions, run_pxe_server
    from plasmaboot.pxe.server import print_config as config_text

    options = PxeOptions(
        interface=interface,
        root=root,
        inventory=inventory_path(inventory),
        dhcp_range=dhcp_range,
        proxy=proxy_dhcp,
        http_port=http_port,
        token_ttl=token_ttl * 60,
    )
    if print_config:
        click.echo(config_text(options, obj.store()), nl=False)
        return
    run_pxe_server(
        options,
        obj.store(),
        announce=lambda line: err_console.print(line, highlight=False, soft_wrap=True),
    )
