"""The files of a machine's per-node layer (`layers/90-node/` in the initramfs, stacked by
stage-1 above the image's layers) and the cpio segment that carries them.

    etc/hostname                                        the machine's host name
    etc/plasmaboot/node/authorized_keys                 its own keys (inventory ssh_keys)
    etc/plasmaboot/node/node.json                       name, host name, labels, profile, set
    etc/systemd/network/05-plasmaboot-static.network    its static address (inventory ipv4)
    and with a host-key token (see `reporter_files`):
    etc/systemd/system/plasmaboot-hostkeys-report.service
    etc/systemd/system/multi-user.target.d/90-plasmaboot-node.conf   (Wants= the unit)
    etc/plasmaboot/node/report-hostkeys                 the reporter script
    etc/plasmaboot/node/hostkeys-token                  the one-time token (0600)

Only regular files and directories, modes 0644/0755 (0600 for the token): the unit is
pulled in by a drop-in, not a `.wants/` symlink. Never a private key or a secret: every
value comes from the inventory, which checked it where it entered (inventory.load), and
each file is checked once more here before it is written.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from plasmaboot.formats.cpio import Entry, write_cpio
from plasmaboot.formats.sshkeys import PRIVATE_KEY_MARKER, read_public_keys
from plasmaboot.inventory.model import HOSTNAME_PATTERN, MACHINE_NAME_PATTERN, Machine

LAYER = "layers/90-node"
NODE_DIR = "etc/plasmaboot/node"
TOKEN_FILE = f"{NODE_DIR}/hostkeys-token"
REPORTER = f"{NODE_DIR}/report-hostkeys"
REPORT_UNIT = "plasmaboot-hostkeys-report.service"
REPORT_DROP_IN = "etc/systemd/system/multi-user.target.d/90-plasmaboot-node.conf"
STATIC_NETWORK = "etc/systemd/network/05-plasmaboot-static.network"
# What never goes into a segment (scanned for before it is served).
PRIVATE_MARKERS = (b"PRIVATE KEY", b"OPENSSH PRIVATE", PRIVATE_KEY_MARKER.encode())
TOKEN_PATTERN = r"[A-Za-z0-9_-]{16,64}"
REPORT_ATTEMPTS = 10


class NodeLayerError(ValueError):
    """A value that may not reach a node's files (never expected: the inventory checks it)."""


@dataclass(frozen=True)
class ServerAddress:
    """Where the reporter posts: the URL nodes reach this server at, split for bash."""

    scheme: str
    host: str  # a name or an address, without brackets
    port: int
    path: str  # "" or "/prefix"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443}[self.scheme]
        return host if self.port == default else f"{host}:{self.port}"


def server_address(base_url: str) -> ServerAddress:
    """`http://10.0.0.1:8080` (or with a path prefix) as the reporter needs it; only the
    characters a URL `serve` writes may hold (serve checked it: --public-url or Host)."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or parts.query or parts.fragment:
        raise NodeLayerError(f"not a base URL: {base_url!r}")
    if not re.fullmatch(r"[A-Za-z0-9.\-]+|[0-9A-Fa-f:.]+", host):
        raise NodeLayerError(f"not a host: {host!r}")
    if not re.fullmatch(r"(/[A-Za-z0-9._~+-]+)*", parts.path.rstrip("/")):
        raise NodeLayerError(f"not a URL path: {parts.path!r}")
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    return ServerAddress(parts.scheme, host, port, parts.path.rstrip("/"))


# --------------------------------------------------------------------------------------
# the files


def node_files(
    machine: Machine, set_id: str, mtu: int | None = None
) -> dict[str, tuple[bytes, int]]:
    """The machine's own files (path under the layer -> (contents, mode)), without the
    reporter; `mtu` is the set's profile's network.mtu (kept on a static address).
    FormatError/OSError when a key file no longer holds public keys only."""
    check_names(machine)
    files = {
        "etc/hostname": (f"{machine.hostname}\n".encode(), 0o644),
        f"{NODE_DIR}/node.json": (node_json(machine, set_id), 0o644),
    }
    keys = authorized_keys(machine)
    if keys:
        files[f"{NODE_DIR}/authorized_keys"] = (keys, 0o644)
    if machine.ipv4 is not None:
        files[STATIC_NETWORK] = (static_network(machine, mtu), 0o644)
    return files


def check_names(machine: Machine) -> None:
    """The names that become file contents are what the inventory allowed (a Machine made
    in code, not loaded, gets the same rule)."""
    if not re.fullmatch(MACHINE_NAME_PATTERN, machine.name):
        raise NodeLayerError(f"machine name {machine.name!r}")
    if len(machine.hostname) > 253 or not re.fullmatch(HOSTNAME_PATTERN, machine.hostname):
        raise NodeLayerError(f"host name {machine.hostname!r}")


def node_json(machine: Machine, set_id: str) -> bytes:
    """What the node may read about itself: JSON, so any label value stays one string."""
    data = {
        "name": machine.name,
        "hostname": machine.hostname,
        "profile": machine.profile,
        "variant": machine.variant,
        "label": machine.label,
        "set": set_id,
        "labels": dict(sorted(machine.labels.items())),
    }
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


def authorized_keys(machine: Machine) -> bytes:
    """The machine's key files, read again by the one key rule (a file edited into a
    private key since the inventory was loaded is refused, never served)."""
    lines: list[str] = []
    for path in machine.ssh_keys:
        lines += read_public_keys(Path(path))
    unique = list(dict.fromkeys(lines))
    return "".join(f"{line}\n" for line in unique).encode()


def static_network(machine: Machine, mtu: int | None = None) -> bytes:
    """systemd-networkd's file for the machine's static address on its own NICs (matched
    on the inventory's MACs; `05-` sorts before the image's DHCP file, so it wins), with
    the profile's MTU when it sets one (as the image's DHCP file does)."""
    assert machine.ipv4 is not None
    interface = ipaddress.IPv4Interface(machine.ipv4)  # checked by the inventory
    macs = " ".join(machine.macs)
    if not re.fullmatch(r"[0-9a-f:]+( [0-9a-f:]+)*", macs):
        raise NodeLayerError(f"MAC addresses {macs!r}")
    if mtu is not None and not 68 <= mtu <= 65535:
        raise NodeLayerError(f"MTU {mtu!r}")
    link = f"[Link]\nMTUBytes={mtu}\n\n" if mtu is not None else ""
    return (
        "# plasmaboot: this machine's static address from the inventory\n"
        f"[Match]\nMACAddress={macs}\n\n{link}"
        f"[Network]\nAddress={interface}\nDHCP=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    ).encode()


def reporter_files(machine: Machine, server: ServerAddress) -> dict[str, tuple[bytes, int]]:
    """The host-key reporter: its unit, the drop-in that pulls it in, its script."""
    check_names(machine)
    wants = f"# plasmaboot: this node reports its SSH host keys\n[Unit]\nWants={REPORT_UNIT}\n"
    return {
        f"etc/systemd/system/{REPORT_UNIT}": (REPORT_UNIT_TEXT.encode(), 0o644),
        REPORT_DROP_IN: (wants.encode(), 0o644),
        REPORTER: (reporter_script(machine.name, server).encode(), 0o755),
    }


def token_files(token: str) -> dict[str, tuple[bytes, int]]:
    if not re.fullmatch(TOKEN_PATTERN, token):
        raise NodeLayerError("not a token")
    return {TOKEN_FILE: (f"{token}\n".encode(), 0o600)}


# The unit: Type=simple, so multi-user.target (and `running`) never waits for the report;
# the script exits 0 whatever happens, so it never leaves a failed unit (see the script).
REPORT_UNIT_TEXT = f"""\
# plasmaboot: report this boot's SSH host keys to the server that booted the node, once
[Unit]
Description=Report the SSH host keys of this boot to the plasmaboot server
After=plasmaboot-ssh-hostkeys.service systemd-networkd.service
ConditionPathExists=/etc/plasmaboot/node/hostkeys-token
ConditionPathExists=/bin/bash

[Service]
Type=simple
ExecStart=/bin/bash /{REPORTER}
TimeoutStopSec=5
"""

REPORTER_TEMPLATE = r"""#!/bin/bash
# plasmaboot: report this boot's public SSH host keys to the server that booted this node,
# once, with the one-time token of this boot. Host keys never leave the node; only their
# public halves are sent. Bash's /dev/tcp does plain HTTP (bash is in every Debian image;
# curl may not be), curl an https URL. It never fails the boot: a server that cannot be
# reached is retried a few times, then a warning goes to the journal and to
# /run/plasmaboot/hostkeys-report, and the script exits 0 (no failed unit).
set -u
SCHEME=@SCHEME@
SERVER_HOST=@HOST@
SERVER_PORT=@PORT@
HOST_HEADER=@HOST_HEADER@
REPORT_PATH=@PATH@
NODE_DIR=${PLASMABOOT_NODE_DIR:-/etc/plasmaboot/node}
SSH_DIR=${PLASMABOOT_SSH_DIR:-/etc/ssh}
STATUS=${PLASMABOOT_REPORT_STATUS:-/run/plasmaboot/hostkeys-report}
ATTEMPTS=${PLASMABOOT_REPORT_ATTEMPTS:-@ATTEMPTS@}
PAUSE=${PLASMABOOT_REPORT_PAUSE:-3}
TIMEOUT=10

post_once() {
    # one POST over bash's /dev/tcp; prints the HTTP status code
    exec 3<>"/dev/tcp/$SERVER_HOST/$SERVER_PORT" || return 1
    local head='POST %s?token=%s HTTP/1.0\r\nHost: %s\r\nContent-Type: text/plain\r\n'
    head+='Content-Length: %d\r\nConnection: close\r\n\r\n%s'
    printf "$head" "$REPORT_PATH" "$TOKEN" "$HOST_HEADER" "${#BODY}" "$BODY" >&3 || return 1
    local version code rest
    read -r -t "$TIMEOUT" version code rest <&3 || return 1
    exec 3<&-
    echo "$code"
}

if [ "${1:-}" = --post-once ]; then
    post_once
    exit
fi

say() {
    echo "$1"
    mkdir -p "${STATUS%/*}" 2>/dev/null && echo "${1#<?>}" >"$STATUS" 2>/dev/null
    return 0
}

TOKEN=$(head -n 1 "$NODE_DIR/hostkeys-token" 2>/dev/null) || TOKEN=""
if [ -z "$TOKEN" ]; then
    say "<4>plasmaboot: no host-key token on this node; host keys not reported"
    exit 0
fi
BODY=""
for pub in "$SSH_DIR"/ssh_host_*_key.pub; do
    [ -f "$pub" ] || continue
    read -r type key rest <"$pub" || continue
    BODY+="$type $key"$'\n'
done
if [ -z "$BODY" ]; then
    say "<4>plasmaboot: no SSH host keys in $SSH_DIR; nothing reported"
    exit 0
fi
export TOKEN BODY
LANG=C
LC_ALL=C

attempt=1
while :; do
    if [ "$SCHEME" = https ]; then
        if command -v curl >/dev/null; then
            code=$(printf '%s' "$BODY" | curl -sS -o /dev/null -w '%{http_code}' \
                --max-time "$TIMEOUT" -H 'Content-Type: text/plain' --data-binary @- \
                "https://$HOST_HEADER$REPORT_PATH?token=$TOKEN" 2>/dev/null) || code=""
        else
            say "<4>plasmaboot: https server, no curl in this image; host keys not reported"
            exit 0
        fi
    else
        code=$(timeout "$TIMEOUT" /bin/bash "$0" --post-once 2>/dev/null) || code=""
    fi
    case "$code" in
        200)
            say "<5>plasmaboot: host keys reported to $HOST_HEADER"
            exit 0
            ;;
        403 | 409)
            say "<4>plasmaboot: report refused (HTTP $code: token used, expired or not ours)"
            exit 0
            ;;
    esac
    if [ "$attempt" -ge "$ATTEMPTS" ]; then
        say "<4>plasmaboot: host keys not reported: ${code:-no answer} after $attempt attempts"
        exit 0
    fi
    attempt=$((attempt + 1))
    sleep "$PAUSE"
done
"""


def reporter_script(machine_name: str, server: ServerAddress) -> str:
    """The reporter for one machine and server (every value is a checked literal)."""
    values = {
        "@SCHEME@": server.scheme,
        "@HOST@": server.host,
        "@PORT@": str(server.port),
        "@HOST_HEADER@": server.host_header,
        "@PATH@": f"{server.path}/node/{machine_name}/hostkeys",
        "@ATTEMPTS@": str(REPORT_ATTEMPTS),
    }
    text = REPORTER_TEMPLATE
    for marker, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9._~+:/\[\]-]+", value):
            raise NodeLayerError(f"{marker.strip('@').lower()} {value!r}")
        text = text.replace(marker, f"'{value}'")
    return text


# --------------------------------------------------------------------------------------
# the segment


def segment(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A newc archive of `files` under `layers/90-node/` (regular files; parent
    directories 0755), padded to 512 bytes. ValueError if anything looks like a private key."""
    entries = [
        Entry(f"{LAYER}/{path}", stat.S_IFREG | mode, data=data)
        for path, (data, mode) in sorted(files.items())
    ]
    out = io.BytesIO()
    write_cpio(entries, out, mtime=0)
    data = out.getvalue()
    check_no_private_key(data)
    return data


def check_no_private_key(data: bytes) -> None:
    for marker in PRIVATE_MARKERS:
        if marker in data:
            raise NodeLayerError("a private key marker in a node segment")
