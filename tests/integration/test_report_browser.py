"""The report and the status page as people see them: rendered by headless Chromium
(Debian's `chromium`), screenshotted into the test's temporary directory (never into git),
and the screenshots checked: the right size, not blank, and the plots drawn on the page
(the lines' and the bars' colours are on screen)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import numpy
import pytest
from matplotlib.image import imread

from netns import require
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.report.figures import collect_figures
from plasmaboot.report.history import append_history, history_record
from plasmaboot.report.render import render_report
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.machines import InventoryWatch
from report_sets import MIB, make_manifest

pytestmark = pytest.mark.slow

C0 = numpy.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first line colour
BAR = numpy.array([0x48, 0x78, 0xA8]) / 255  # the report's bars
CHROMIUM_TIMEOUT = 120
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
INVENTORY = """\
[defaults]
profile = "worker"

[machines.rack1-node-with-a-rather-long-name]
mac = "52:54:00:12:34:01"

[machines.w2]
mac = "52:54:00:12:34:02"
"""


def screenshot(url: str, path: Path, width: int, height: int) -> numpy.ndarray:
    require("chromium")
    profile = path.parent / f"chromium-{path.stem}"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=CHROMIUM_TIMEOUT,
    )
    pixels: numpy.ndarray = imread(path)
    assert pixels.shape[:2] == (height, width)
    assert numpy.ptp(pixels[..., :3]) > 0.5, "the screenshot is blank"
    return pixels


def share_near(pixels: numpy.ndarray, colour: numpy.ndarray, tolerance: float = 0.08) -> float:
    """The share of the screenshot's pixels within `tolerance` of `colour`."""
    near = numpy.all(numpy.abs(pixels[..., :3] - colour) < tolerance, axis=-1)
    return float(near.mean())


def report_dir(tmp_path: Path) -> Path:
    artifacts = tmp_path / "artifacts"
    for index in range(6):
        manifest = make_manifest(
            artifacts / ".sets" / f"worker-{index}",
            initrd_size=(100 + 3 * index) * MIB,
            steps={"mmdebstrap": 300.0 + 10 * index, "initrd": 9.0, "stage1": 1.5},
            package_sizes={f"package-{n}": n * MIB for n in range(1, 40)},
            module_sizes={"drivers/net": 25 * MIB, "drivers/gpu": 18 * MIB, "fs": 9 * MIB},
        )
        at = f"2026-01-{index + 1:02d}T00:00:00+00:00"
        append_history(artifacts, history_record(manifest, f"worker-{index}", False, 330.0, at))
    (artifacts / "worker").symlink_to(Path(".sets") / "worker-5")
    output = tmp_path / "report"
    render_report(collect_figures(artifacts), output)
    return output


def test_report_in_chromium(tmp_path: Path) -> None:
    output = report_dir(tmp_path)
    document = json.loads((output / "report.json").read_text())
    plots = [document["plots"]["sizes"], *document["plots"]["steps"].values()]
    plots += document["plots"]["bytes"].values()
    assert len(plots) == 3
    for name in plots:
        pixels = imread(output / name)
        assert min(pixels.shape[:2]) >= 300 and numpy.ptp(pixels[..., :3]) > 0.5
    shot = screenshot((output / "index.html").as_uri(), tmp_path / "report.png", 1200, 2400)
    # the plots' lines and bars are on the page, not broken-image icons
    assert share_near(shot, C0, 0.05) > 0.0005, "no plot line on the rendered page"
    assert share_near(shot, BAR, 0.05) > 0.02, "no bars on the rendered page"


def test_status_page_in_chromium_at_phone_width(tmp_path: Path) -> None:
    artifacts = tmp_path / "report-artifacts"
    make_manifest(artifacts / ".sets" / "worker-1")
    (artifacts / ".sets" / "worker-1" / "netboot.ipxe").write_text(
        "#!ipxe\n# plasmaboot: worker\nkernel ${boot-server}/worker/bzImage initrd=initrd\n"
        "initrd --name initrd ${boot-server}/worker/initrd\nboot\n"
    )
    (artifacts / "worker").symlink_to(Path(".sets") / "worker-1")
    (tmp_path / "machines.toml").write_text(INVENTORY)
    (tmp_path / "machines.state" / "hostkeys").mkdir(parents=True)
    report = {"machine": "w2", "reported_at": "2026-01-02T00:00:00Z", "keys": [KEY]}
    (tmp_path / "machines.state" / "hostkeys" / "w2.json").write_text(json.dumps(report))
    watch = InventoryWatch(tmp_path / "machines.toml", ProfileStore())
    with ServerThread(artifacts, inventory=watch, access_log=tmp_path / "access.log") as server:
        for mac in ("52:54:00:12:34:01", "52:54:00:de:ad:01", "52:54:00:de:ad:02"):
            urllib.request.urlopen(f"{server.base_url}/boot.ipxe?mac={mac}", timeout=10).read()
        phone = screenshot(server.base_url + "/", tmp_path / "status-phone.png", 390, 844)
        desk = screenshot(server.base_url + "/", tmp_path / "status-desk.png", 1200, 800)
    # a phone gets cards, one column: no table wider than the screen (the right edge is
    # page background, nothing cut off there)
    assert share_near(phone[:, -4:], numpy.array([0xFA, 0xFA, 0xFA]) / 255, 0.02) > 0.9
    # the table headers' background (#eef2f6) shows on the desktop, not on the phone
    header = numpy.array([0xEE, 0xF2, 0xF6]) / 255
    assert share_near(desk, header, 0.01) > share_near(phone, header, 0.01)
