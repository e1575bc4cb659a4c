"""serve.metrics: /metrics in Prometheus' text format, a registry per app, bounded labels."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.serve.app import ServerThread, make_app
from plasmaboot.serve.machines import InventoryWatch
from plasmaboot.serve.metrics import METRICS_KEY, count_node_segment, file_label

INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    source = tmp_path / "worker"
    source.mkdir()
    for name in (KERNEL, INITRD, MANIFEST):
        (source / name).write_bytes(name.encode() * 100)
    (source / IPXE).write_text(render_netboot_script("worker", ["console=ttyS0"]))
    publish_atomically(source, tmp_path / "artifacts", "worker", (KERNEL, INITRD, IPXE, MANIFEST))
    (tmp_path / "machines.toml").write_text(INVENTORY)
    watch = InventoryWatch(tmp_path / "machines.toml", ProfileStore())
    with ServerThread(
        tmp_path / "artifacts", access_log=tmp_path / "access.log", inventory=watch
    ) as running:
        yield running


def fetch(server: ServerThread, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(server.base_url + path, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), ""


def samples(server: ServerThread) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body, content_type = fetch(server, "/metrics")
    assert status == 200 and content_type.startswith(
        "text/plain; version=0.0.4"
    )  # what Prometheus asks by default
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_boots_refusals_files_and_latency_are_counted(server: ServerThread) -> None:
    assert fetch(server, "/boot.ipxe?mac=52:54:00:12:34:01")[0] == 200
    assert fetch(server, "/boot.ipxe?mac=52:54:00:99:99:99")[0] == 200  # a refusal script
    assert fetch(server, "/boot.ipxe?mac=junk")[0] == 200
    assert fetch(server, "/worker/netboot.ipxe")[0] == 200
    for _ in range(2):
        assert fetch(server, f"/worker/{INITRD}")[0] == 200
    assert fetch(server, "/no/such/file-name-a-scanner-made-up")[0] == 404
    found = samples(server)
    assert found[("plasmaboot_boots_total", frozenset({("profile", "worker"), ("machine", "w1")}))]
    assert found[("plasmaboot_boots_total", frozenset({("profile", "worker"), ("machine", "")}))]
    assert found[("plasmaboot_refused_machines_total", frozenset({("reason", "unknown MAC")}))] == 1
    assert found[("plasmaboot_refused_machines_total", frozenset({("reason", "no MAC")}))] == 1
    initrd = frozenset({("file", INITRD), ("status", "200")})
    assert found[("plasmaboot_http_requests_total", initrd)] == 2
    assert found[("plasmaboot_http_sent_bytes_total", frozenset({("file", INITRD)}))] == 1200
    assert found[
        ("plasmaboot_http_requests_total", frozenset({("file", "other"), ("status", "404")}))
    ]
    count = found[("plasmaboot_http_request_duration_seconds_count", frozenset({("file", INITRD)}))]
    assert count == 2
    assert not any("scanner" in str(labels) for _, labels in found)


def test_head_and_ranges_count_what_is_sent(server: ServerThread) -> None:
    request = urllib.request.Request(server.base_url + f"/worker/{KERNEL}", method="HEAD")
    urllib.request.urlopen(request, timeout=10).close()
    request = urllib.request.Request(
        server.base_url + f"/worker/{KERNEL}", headers={"Range": "bytes=0-9"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 206
    found = samples(server)
    assert found[("plasmaboot_http_sent_bytes_total", frozenset({("file", KERNEL)}))] == 10


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    first, second = make_app(tmp_path / "root"), make_app(tmp_path / "root")
    count_node_segment(first, "w1")
    assert b'plasmaboot_node_segments_total{machine="w1"} 1.0' in first[METRICS_KEY].text()
    assert b"w1" not in second[METRICS_KEY].text()


@pytest.mark.parametrize(
    ("path", "status", "label"),
    [
        ("/", 200, "status"),
        ("/metrics", 200, "metrics"),
        ("/boot.ipxe?mac=x", 200, "boot.ipxe"),
        ("/worker/initrd", 200, "initrd"),
        ("/sets/worker-1/bzImage", 200, "bzImage"),
        ("/node/w1.cpio?token=t", 200, "node"),
        ("/worker/made-up", 404, "other"),
        ("/../../etc/passwd", 400, "other"),
        ("/a/b/c/d/e", 200, "other"),
    ],
)
def test_file_labels_are_bounded(path: str, status: int, label: str) -> None:
    assert file_label(urllib.parse.quote(path, safe="/?=&"), status) == label
