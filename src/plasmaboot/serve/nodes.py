"""`serve --inventory`: each machine's per-node layer and its host-key report.

    GET  /node/<machine>.cpio?token=T    the machine's per-node segment (serve.nodelayer);
                                         with a valid token also the host-key reporter
    POST /node/<machine>/hostkeys?token=T   the node's public host keys, once per token

A machine's script gets a second `initrd` line naming its segment (after the set's initrd)
and `initrd=node` for the kernel's EFI stub. The script carries a one-time token bound to
the address that fetched it; where plasmaboot knows the machine's address (its static
address in the inventory, or its lease in the file of the dnsmasq pxe-server runs) a fetch
from another address gets no token. The report must come from the bound address within
the token's lifetime; a second report with the same token is refused (409). Reports are
recorded beside the inventory (inventory.state), read by `machines known-hosts`.

An address is a hint, not proof: anything that can take a machine's MAC or address on the
provisioning network can fetch its script and report keys of its own.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
from asyncio import to_thread
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from plasmaboot.artifacts.manifest import read_manifest
from plasmaboot.formats import FormatError
from plasmaboot.formats.cmdline import check_cmdline
from plasmaboot.inventory.load import Inventory, normalize_mac
from plasmaboot.inventory.model import Machine
from plasmaboot.inventory.state import is_bare_key, record_host_keys
from plasmaboot.paths import read_regular_file
from plasmaboot.serve.machines import InventoryWatch
from plasmaboot.serve.metrics import count_node_segment
from plasmaboot.serve.nodelayer import (
    NodeLayerError,
    node_files,
    reporter_files,
    segment,
    server_address,
    token_files,
)
from plasmaboot.serve.paths import find_set
from plasmaboot.serve.tokens import DEFAULT_TTL, Refusal, Token, TokenStore

NODE_INITRD = "node"  # the segment's name in the script (`initrd --name node ...`)
MAX_REPORT_SIZE = 16 << 10  # a few public keys
MAX_REPORTED_KEYS = 16
MAX_LEASES_SIZE = 4 << 20
CACHE_ENTRIES = 1024
SEGMENT_TYPE = "application/octet-stream"


class NodeService:
    """What the node routes share: the inventory, the tokens, the segment cache, and where
    dnsmasq's leases are (pxe-server) if anywhere."""

    def __init__(
        self,
        root: Path,
        inventory: InventoryWatch,
        base_url: Callable[[web.Request], str],
        events: logging.Logger,
        leases: Path | None = None,
        token_ttl: float = DEFAULT_TTL,
    ) -> None:
        self.root = root
        self.inventory = inventory
        self.base_url = base_url
        self.events = events
        self.leases = leases
        self.tokens = TokenStore(ttl=token_ttl)
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    async def current(self) -> Inventory:
        watch = self.inventory
        return watch.current() if watch.unchanged() else await to_thread(watch.current)

    # the script ------------------------------------------------------------------------

    def expected_address(self, machine: Machine) -> str | None:
        """The address the machine should fetch from, where plasmaboot knows it."""
        if machine.address is not None:
            return machine.address
        return lease_address(self.leases, machine.macs) if self.leases is not None else None

    def issue(self, machine: Machine, client: str) -> Token | None:
        """A token for the machine's script, bound to `client`; None when plasmaboot knows
        the machine's address and `client` is another one (logged)."""
        expected = self.expected_address(machine)
        if expected is not None and expected != client:
            self.events.warning(
                "no host-key token for machine %s: its script went to %s, its address is %s",
                machine.name, client, expected,
            )  # fmt: skip
            return None
        return self.tokens.issue(machine.name, client)

    def add_to_script(self, request: web.Request, machine: Machine, script: str) -> str:
        """The machine's script with its per-node segment as a second initrd (before
        `boot`), and a token in that segment's URL when one is issued."""
        token = self.issue(machine, client_address(request))
        url = f"{self.base_url(request)}/node/{machine.name}.cpio"
        if token is not None:
            url += f"?token={token.value}"
        try:
            return add_initrd(script, url)
        except FormatError as exc:  # `initrd=node` would push the kernel line too far
            self.events.warning(
                "machine %s boots without its per-node layer: %s", machine.name, exc
            )
            return script

    # the segment -----------------------------------------------------------------------

    def segment_bytes(self, files: dict[str, tuple[bytes, int]]) -> bytes:
        """The cpio of `files`, cached by content."""
        digest = files_digest(files)
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            return cached
        data = segment(files)
        self._cache[digest] = data
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return data


@functools.lru_cache(maxsize=256)
def set_mtu(set_dir: Path) -> int | None:
    """The network.mtu of the profile a set was built from (a set never changes once
    published); None when it sets none or its manifest cannot be read."""
    try:
        return read_manifest(set_dir).resolved_profile.network.mtu
    except (OSError, ValueError):
        return None


def add_initrd(script: str, url: str) -> str:
    """`initrd --name node URL` before the script's last line (`boot`), and `initrd=node`
    on its kernel line for the EFI stub (it loads the initrds named there)."""
    lines = script.rstrip("\n").split("\n")
    if lines[-1] != "boot":
        raise FormatError("the script does not end with `boot`")
    kernel = next(i for i, line in enumerate(lines) if line.startswith("kernel "))
    lines[kernel] += f" initrd={NODE_INITRD}"
    check_cmdline(lines[kernel].split(" ")[2:])  # the words after the kernel's URL
    lines.insert(len(lines) - 1, f"initrd --name {NODE_INITRD} {url}")
    return "\n".join(lines) + "\n"


@functools.cache
def token_template(length: int) -> bytes:
    """The token's archive with a placeholder token of `length` characters: the archive of
    any token of that length differs from it only there (its size is in the header)."""
    return segment(token_files("A" * length))


def token_segment(value: str) -> bytes:
    """The token's own archive (0600), made per request from the template."""
    placeholder = f"{'A' * len(value)}\n".encode()
    template = token_template(len(value))
    if template.count(placeholder) != 1:
        return segment(token_files(value))
    token_files(value)  # the token's shape, checked as for any file
    return template.replace(placeholder, f"{value}\n".encode())


def files_digest(files: dict[str, tuple[bytes, int]]) -> str:
    digest = hashlib.sha256()
    for path, (data, mode) in sorted(files.items()):
        digest.update(f"{path}\0{mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def lease_address(leases: Path, macs: tuple[str, ...]) -> str | None:
    """The address dnsmasq's lease file gives one of `macs` (`expiry mac ip name id`)."""
    try:
        raw = read_regular_file(leases, MAX_LEASES_SIZE)
    except OSError:
        return None
    if raw is None:
        return None
    for line in raw.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 3 and normalize_mac(fields[1]) in macs:
            try:
                return str(ipaddress.ip_address(fields[2]))
            except ValueError:
                continue
    return None


NODES_KEY = web.AppKey("nodes", NodeService)


def client_address(request: web.Request) -> str:
    """The client's address as the inventory and the leases write it (an IPv4 client of a
    dual-stack listener comes as ::ffff:10.0.0.5)."""
    remote = request.remote or "-"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def printable(text: str) -> str:
    return "".join(c if 0x20 < ord(c) < 0x7F else f"\\x{ord(c):02x}" for c in text)[:80]


async def handle_segment(request: web.Request) -> web.Response:
    service = request.app[NODES_KEY]
    name = request.match_info["machine"]
    client = client_address(request)
    machine = (await service.current()).machines.get(name)
    boot_set = find_set(service.root, machine.label) if machine is not None else None
    if machine is None or boot_set is None:
        raise web.HTTPNotFound(text=f"no per-node layer for {printable(name)}\n")
    files = node_files_or_none(service, machine, boot_set.directory)
    value = request.query.get("token")
    token: Token | Refusal | None = None
    if value is not None:
        token = service.tokens.check(value, name, client)
        if isinstance(token, Refusal):
            service.events.warning(
                "per-node layer of %s to %s without the reporter: %s", name, client, token
            )
        else:
            try:
                server = server_address(service.base_url(request))
            except NodeLayerError as exc:  # a --public-url the reporter cannot use
                service.events.warning("per-node layer of %s without the reporter: %s", name, exc)
                token = None
            else:
                files.update(reporter_files(machine, server))
    data = service.segment_bytes(files)
    count_node_segment(request.app, machine.name)
    if isinstance(token, Token):
        data += token_segment(token.value)
    return web.Response(body=data, content_type=SEGMENT_TYPE, headers={"Cache-Control": "no-store"})


def node_files_or_none(
    service: NodeService, machine: Machine, set_dir: Path
) -> dict[str, tuple[bytes, int]]:
    try:
        return node_files(machine, set_dir.name, set_mtu(set_dir))
    except (OSError, FormatError, NodeLayerError) as exc:
        service.events.warning("refused: per-node layer of %s: %s", machine.name, exc)
        raise web.HTTPInternalServerError(
            text="this machine's per-node layer cannot be made\n"
        ) from exc


async def handle_report(request: web.Request) -> web.Response:
    service = request.app[NODES_KEY]
    name = request.match_info["machine"]
    client = client_address(request)

    def refuse(status: int, why: str) -> web.Response:
        service.events.warning(
            "refused: host-key report for %s from %s: %s", printable(name), client, why
        )
        return web.Response(status=status, text=f"{why}\n")

    length = request.content_length
    if length is not None and length > MAX_REPORT_SIZE:
        return refuse(413, "report too large")
    body = await read_limited(request, MAX_REPORT_SIZE)
    if len(body) > MAX_REPORT_SIZE:
        return refuse(413, "report too large")
    found = service.tokens.check(request.query.get("token", ""), name, client)
    if isinstance(found, Refusal):
        return refuse(409 if found is Refusal.USED else 403, str(found))
    keys = parse_report(body)
    if keys is None:
        return refuse(400, "not a list of public host keys")
    inventory = await service.current()
    if name not in inventory.machines:
        return refuse(404, "no such machine in the inventory")
    service.tokens.redeem(found.value, name, client)
    await to_thread(record_host_keys, inventory.path, name, client, found.boot, keys)
    service.events.info(
        "host keys: machine %s from %s reported %d keys (boot %s)",
        name,
        client,
        len(keys),
        found.boot,
    )
    return web.Response(text="recorded\n", headers={"Cache-Control": "no-store"})


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The request's body, or its first `limit` + 1 bytes when it is longer (a read returns
    what has arrived, so it is read until the end or past the limit)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def parse_report(body: bytes) -> list[str] | None:
    """`type base64` per line (a comment after them is dropped); None unless every line is
    a valid public key and there are 1..MAX_REPORTED_KEYS of them."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return None
    keys: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        bare = " ".join(line.split()[:2])
        if not is_bare_key(bare):
            return None
        keys.append(bare)
    keys = list(dict.fromkeys(keys))
    return keys if 0 < len(keys) <= MAX_REPORTED_KEYS else None


def add_node_routes(
    app: web.Application,
    root: Path,
    inventory: InventoryWatch,
    base_url: Callable[[web.Request], str],
    events: logging.Logger,
    leases: Path | None = None,
    token_ttl: float = DEFAULT_TTL,
) -> None:
    """Register the node routes (before the catch-all GET of app.py)."""
    app[NODES_KEY] = NodeService(root, inventory, base_url, events, leases, token_ttl)
    app.router.add_get("/node/{machine:[a-z0-9-]+}.cpio", handle_segment)
    app.router.add_post("/node/{machine:[a-z0-9-]+}/hostkeys", handle_report)
