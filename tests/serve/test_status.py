"""serve.status: the status page at / (machines, sets, last boots, host keys, refused MACs),
escaped, and refused.json beside the inventory."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.inventory.load import Inventory
from plasmaboot.inventory.model import Machine
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.machines import InventoryWatch
from plasmaboot.serve.status import Seen, fingerprint, host_key, state_dir, status_page

INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"

[machines.w2]
mac = "52:54:00:12:34:02"
"""
# ssh-keygen -l of this key: SHA256:... computed the same way (sha256 of the blob, base64)
BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
KEY = "ssh-ed25519 " + base64.b64encode(BLOB).decode()


def publish_worker(tmp_path: Path) -> Path:
    source = tmp_path / "worker"
    source.mkdir()
    for name in (KERNEL, INITRD):
        (source / name).write_bytes(name.encode())
    (source / MANIFEST).write_text('{"built_at": "2026-01-01T00:00:00+00:00"}')
    (source / IPXE).write_text(render_netboot_script("worker", ["console=ttyS0"]))
    publish_atomically(source, tmp_path / "artifacts", "worker", (KERNEL, INITRD, IPXE, MANIFEST))
    return tmp_path / "artifacts"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    root = publish_worker(tmp_path)
    (tmp_path / "machines.toml").write_text(INVENTORY)
    hostkeys = tmp_path / "machines.state" / "hostkeys"
    hostkeys.mkdir(parents=True)
    (hostkeys / "w1.json").write_text(
        json.dumps(
            {
                "machine": "w1",
                "address": "10.0.0.5",
                "boot": "b1",
                "reported_at": "2026-01-02T00:00:00Z",
                "keys": [KEY],
            }
        )
    )
    watch = InventoryWatch(tmp_path / "machines.toml", ProfileStore())
    with ServerThread(root, access_log=tmp_path / "access.log", inventory=watch) as running:
        yield running


def get(server: ServerThread, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(server.base_url + path, timeout=10) as response:
        return response.status, response.read().decode(), response.headers["Content-Type"]


def test_the_page_shows_machines_sets_boots_keys_and_refusals(
    server: ServerThread, tmp_path: Path
) -> None:
    get(server, "/boot.ipxe?mac=52:54:00:12:34:01")
    get(server, "/boot.ipxe?mac=" + urllib.parse.quote("52-54-00-AA-BB-CC"))
    status, page, content_type = get(server, "/")
    assert status == 200 and content_type.startswith("text/html")
    assert 'name="viewport"' in page
    set_name = (tmp_path / "artifacts" / "worker").readlink().name
    assert page.count(set_name) >= 3  # w1's set, w2's set, the published label
    w1_row = page.split("<b>w1</b>", 1)[1].split("</tr>", 1)[0]
    assert "from 127.0.0.1" in w1_row and fingerprint(KEY) in w1_row
    w2_row = page.split("<b>w2</b>", 1)[1].split("</tr>", 1)[0]
    assert "not since start" in w2_row and "none reported" in w2_row
    assert "52:54:00:aa:bb:cc" in page and "unknown MAC" in page
    refused = json.loads((tmp_path / "machines.state" / "refused.json").read_text())
    assert refused["52:54:00:aa:bb:cc"]["count"] == 1  # the first refusal is written at once


def test_refused_json_is_written_when_the_server_stops(tmp_path: Path) -> None:
    (tmp_path / "machines.toml").write_text(INVENTORY)
    watch = InventoryWatch(tmp_path / "machines.toml", ProfileStore())
    with ServerThread(publish_worker(tmp_path), inventory=watch) as running:
        for _ in range(3):  # within SAVE_INTERVAL: only the first is written at once
            get(running, "/boot.ipxe?mac=02:00:00:00:00:01")
    refused = json.loads((tmp_path / "machines.state" / "refused.json").read_text())
    assert refused["02:00:00:00:00:01"]["count"] == 3


def test_fingerprint_is_what_ssh_keygen_prints() -> None:
    import hashlib

    expected = base64.b64encode(hashlib.sha256(BLOB).digest()).decode().rstrip("=")
    assert fingerprint(KEY) == f"SHA256:{expected}"
    assert fingerprint("ssh-ed25519 AAAAnotakey") is None


HOSTILE = "<script>alert(1)</script>\"'&"


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    root = publish_worker(tmp_path)
    machine = Machine(
        name=HOSTILE,
        macs=(HOSTILE,),
        profile=HOSTILE,
        variant=None,
        hostname="w",
        ipv4=None,
        kernel_params=(),
        ssh_keys=(),
        labels={},
    )
    inventory = Inventory(tmp_path / "machines.toml", "0", {HOSTILE: machine}, {})
    seen = Seen()
    seen.boot(HOSTILE, HOSTILE, HOSTILE)
    seen.refuse(HOSTILE, HOSTILE, HOSTILE)
    named = machine.model_copy(update={"name": "w1", "macs": ("52:54:00:12:34:01",)})
    inventory.machines["w1"] = named
    state = state_dir(inventory.path) / "hostkeys"
    state.mkdir(parents=True)
    report = {
        "machine": "w1", "address": "10.0.0.5", "boot": "b1",
        "reported_at": HOSTILE, "keys": [KEY], "installed": True,
    }  # fmt: skip
    (state / "w1.json").write_text(json.dumps(report))
    page = status_page(root, inventory, seen)
    assert "<script>" not in page and "alert(1)</script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;") >= 6
    assert fingerprint(KEY) in page and "(installed)" in page


def test_hostile_mac_from_a_request_is_escaped(server: ServerThread) -> None:
    get(server, "/boot.ipxe?mac=" + urllib.parse.quote("<img/src=x/onerror=alert(1)>"))
    _, page, _ = get(server, "/")
    assert "<img" not in page and "&lt;img/src=x/onerror=alert(1)&gt;" in page


def test_refused_macs_are_bounded_and_survive_a_restart(tmp_path: Path) -> None:
    seen = Seen(state=tmp_path / "state")
    for index in range(300):
        seen.refuse(f"02:00:00:00:{index // 256:02x}:{index % 256:02x}", "10.0.0.1", "unknown MAC")
    seen.save()
    again = Seen(state=tmp_path / "state")
    assert len(again.refused) == 256
    assert "02:00:00:00:01:2b" in again.refused and "02:00:00:00:00:00" not in again.refused


def test_without_an_inventory_the_page_lists_the_published_sets(tmp_path: Path) -> None:
    with ServerThread(publish_worker(tmp_path)) as running:
        get(running, "/worker/netboot.ipxe")
        _, page, _ = get(running, "/")
    assert "Machines" not in page and "Published (1)" in page
    assert "2026-01-01T00:00:00+00:00" in page


@pytest.mark.parametrize(
    "record",
    [
        {"machine": "w1", "reported_at": "x", "keys": [KEY]},  # no address
        {"machine": "w1", "address": "w1.lab", "boot": "b", "keys": [KEY]},  # not an IP
        {"machine": "other", "address": "10.0.0.5", "boot": "b", "keys": [KEY]},  # not w1's
        {"machine": "w1", "address": "10.0.0.5", "boot": "b", "keys": [KEY + " comment"]},
    ],
)
def test_a_record_known_hosts_would_not_trust_shows_no_key(
    tmp_path: Path, record: dict[str, object]
) -> None:
    """The status page reads host keys by the one rule `machines known-hosts` and `install`
    use: a planted or damaged record shows nothing."""
    hostkeys = tmp_path / "machines.state" / "hostkeys"
    hostkeys.mkdir(parents=True)
    (hostkeys / "w1.json").write_text(json.dumps(record))
    assert host_key(tmp_path / "machines.state", "w1") is None
    good = {"machine": "w1", "address": "10.0.0.5", "boot": "b", "keys": [KEY]}
    (hostkeys / "w1.json").write_text(json.dumps(good))
    found = host_key(tmp_path / "machines.state", "w1")
    assert found is not None and found["fingerprint"] == fingerprint(KEY)
