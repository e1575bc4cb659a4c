"""Hostile cases against `publish` (issue 15, "Boot chain integrity"): a file swapped while
it is published, labels that are paths, a set published into its own output directory, and
a static server of the PXE directory that must never hand out two builds' files at once."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from plasmaboot.artifacts.layout import (
    BOOT_FILES,
    INITRD,
    IPXE,
    KERNEL,
    MANIFEST,
    SETS_DIR,
    commit_set,
    sha256_file,
    staging_dir,
)
from plasmaboot.artifacts.manifest import FileRecord, Manifest, file_records, write_manifest
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.cli import main
from plasmaboot.errors import UserError
from plasmaboot.formats.ipxe import BOOT_SERVER, render_netboot_script
from plasmaboot.profiles.store import ProfileStore

from conftest import plasmaboot


def tree(directory: Path) -> dict[str, str]:
    """Every path under `directory` with its content hash or link target."""
    result: dict[str, str] = {}
    if not directory.exists():
        return result
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            result[key] = "-> " + os.readlink(path)
        elif path.is_file():
            result[key] = sha256_file(path)
        else:
            result[key] = "dir"
    return result


def write_files(directory: Path, label: str, marker: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / KERNEL).write_bytes(f"kernel {marker}\n".encode() * 2000)
    (directory / INITRD).write_bytes(f"initrd {marker}\n".encode() * 2000)
    (directory / IPXE).write_text(render_netboot_script(label, [f"marker={marker}"]))
    return directory


def built_set(artifacts: Path, label: str, marker: str) -> Path:
    """A set as a build leaves it: artifacts/<label> -> .sets/<label>-<id>/, with a manifest."""
    staged = write_files(staging_dir(artifacts, label), label, marker)
    manifest = Manifest(
        profile="worker", label=label, content_hash="x", cache_key="y", backend="debian",
        distro="debian bookworm", kernel_version="6.1", kernel_params=[f"marker={marker}"],
        files=file_records(staged, BOOT_FILES), packages={}, services={}, steps={},
        built_at="2026-11-25T00:00:00+00:00", plasmaboot_version="0.1.0",
        resolved_profile=ProfileStore().resolve("worker"),
    )  # fmt: skip
    write_manifest(staged, manifest)
    commit_set(staged, artifacts, label, (*BOOT_FILES, MANIFEST))
    return artifacts / label


def records(directory: Path) -> dict[str, FileRecord]:
    return file_records(directory, BOOT_FILES)


# --------------------------------------------------------------------------------------
# copy once, hash what was copied


def test_a_file_swapped_while_publishing_is_never_published(tmp_path: Path) -> None:
    """A thread swaps the initrd between the recorded file and another one (a link to it, or
    the file itself renamed in) while publishes run: each publish either puts the recorded
    bytes or refuses, and a refusal leaves what was published before."""
    source = write_files(tmp_path / "src", "worker", "good")
    expected = records(source)
    keep = tmp_path / "good-initrd"
    os.link(source / INITRD, keep)
    evil = tmp_path / "evil-initrd"
    evil.write_bytes(b"X" * (source / INITRD).stat().st_size)  # same size, other bytes
    pxe = tmp_path / "pxe"
    publish_atomically(source, pxe, "worker", BOOT_FILES, expected)
    stop = threading.Event()

    def swap() -> None:
        temp = source / ".swap"
        while not stop.is_set():
            for make in (lambda: os.link(keep, temp), lambda: temp.symlink_to(evil),
                         lambda: os.link(evil, temp)):  # fmt: skip
                if temp.is_symlink() or temp.exists():
                    temp.unlink()  # rename() between two links of one file does nothing
                make()
                os.replace(temp, source / INITRD)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = {"published": 0, "refused": 0}
    try:
        for _ in range(60):
            before = tree(pxe)
            try:
                publish_atomically(source, pxe, "worker", BOOT_FILES, expected)
                outcomes["published"] += 1
            except UserError as exc:
                assert "refusing to publish" in exc.message or "cannot read" in exc.message
                assert tree(pxe) == before  # untouched
                outcomes["refused"] += 1
            published = pxe / "worker" / INITRD
            assert sha256_file(published) == expected[INITRD].sha256
    finally:
        stop.set()
        swapper.join()
    assert outcomes["refused"] > 0, outcomes  # the swap was seen


@pytest.mark.parametrize("name", [KERNEL, INITRD, IPXE])
@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "other-bytes", "longer"])
def test_a_damaged_file_is_refused_and_nothing_changes(
    tmp_path: Path, name: str, kind: str
) -> None:
    pxe = tmp_path / "pxe"
    publish_atomically(write_files(tmp_path / "old", "worker", "old"), pxe, "worker", BOOT_FILES)
    source = write_files(tmp_path / "src", "worker", "new")
    expected = records(source)
    path = source / name
    content = path.read_bytes()
    path.unlink()
    if kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(content)
        path.symlink_to(tmp_path / "elsewhere")  # even to the very same bytes: not a file
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "other-bytes":
        path.write_bytes(content.replace(b"new", b"bad"))
    else:
        path.write_bytes(content + b"\n")
    before = tree(pxe)
    with pytest.raises(UserError):
        publish_atomically(source, pxe, "worker", BOOT_FILES, expected)
    assert tree(pxe) == before


# --------------------------------------------------------------------------------------
# labels


GOOD_LABELS = ["worker", "w", "control-plane-debug", "0", "a-1"]
BAD_LABELS = [".sets", "a/b", "../x", "", ".", "..", "Worker", "-x", "a b", "a\nb", "x/",
              "/abs", "sets", "a_b", "wörker", "a.b", "a\x00b"]  # fmt: skip


@pytest.mark.parametrize("label", GOOD_LABELS)
def test_labels_by_the_name_rule_are_published(tmp_path: Path, label: str) -> None:
    pxe = tmp_path / "pxe"
    final = publish_atomically(write_files(tmp_path / "s", label, "x"), pxe, label, BOOT_FILES)
    assert (pxe / label).resolve() == final and final.parent == pxe / SETS_DIR


@pytest.mark.parametrize("label", BAD_LABELS)
def test_labels_that_are_not_names_are_refused_leaving_nothing(tmp_path: Path, label: str) -> None:
    pxe = tmp_path / "pxe"
    publish_atomically(write_files(tmp_path / "old", "worker", "old"), pxe, "worker", BOOT_FILES)
    before = tree(tmp_path)
    with pytest.raises(UserError, match="label"):
        publish_atomically(write_files(tmp_path / "s", "worker", "x"), pxe, label, BOOT_FILES)
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("s/") and k != "s"} == before


def forge_label(set_dir: Path, label: str) -> None:
    data = json.loads((set_dir / MANIFEST).read_text())
    data["label"] = label
    (set_dir / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize("label", BAD_LABELS)
def test_publish_command_refuses_a_manifest_label_that_is_not_a_name(
    tmp_path: Path, label: str
) -> None:
    artifacts = tmp_path / "artifacts"
    directory = built_set(artifacts, "worker", "v1")
    pxe = tmp_path / "pxe"
    assert (
        CliRunner().invoke(main, ["publish", str(directory), "--pxe-dir", str(pxe)]).exit_code == 0
    )
    forge_label(directory, label)
    before = tree(tmp_path)
    result = CliRunner().invoke(main, ["publish", str(directory), "--pxe-dir", str(pxe)])
    assert result.exit_code == 2, result.output
    assert "label" in result.output and "Traceback" not in result.output
    assert tree(tmp_path) == before


def test_publish_command_label_error_is_one_line(tmp_path: Path) -> None:
    directory = built_set(tmp_path / "artifacts", "worker", "v1")
    forge_label(directory, "../x")
    proc = plasmaboot("publish", str(directory), "--pxe-dir", str(tmp_path / "pxe"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "label" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------
# into its own output directory


@pytest.mark.parametrize("where", ["artifacts", "artifacts/.sets", "artifacts/worker", "."])
def test_a_set_is_not_published_into_its_own_output_directory(tmp_path: Path, where: str) -> None:
    artifacts = tmp_path / "artifacts"
    directory = built_set(artifacts, "worker", "v1")
    before = tree(artifacts)
    target = tmp_path / where
    result = CliRunner().invoke(main, ["publish", str(directory), "--pxe-dir", str(target)])
    assert result.exit_code == 2, result.output
    assert "own output directory" in result.output
    assert tree(artifacts) == before
    assert (artifacts / "worker" / MANIFEST).is_file()


def test_a_set_published_elsewhere_still_works(tmp_path: Path) -> None:
    directory = built_set(tmp_path / "artifacts", "worker", "v1")
    result = CliRunner().invoke(
        main, ["publish", str(directory), "--pxe-dir", str(tmp_path / "pxe")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pxe" / "worker" / KERNEL).read_bytes() == (directory / KERNEL).read_bytes()


# --------------------------------------------------------------------------------------
# a static server of the PXE directory


def test_the_published_script_names_its_own_set(tmp_path: Path) -> None:
    pxe = tmp_path / "pxe"
    final = publish_atomically(
        write_files(tmp_path / "s", "worker", "m"), pxe, "worker", BOOT_FILES
    )
    script = (pxe / "worker" / IPXE).read_text()
    base = f"{BOOT_SERVER}/{SETS_DIR}/{final.name}"
    assert script == (
        "#!ipxe\n"
        "# plasmaboot: worker\n"
        f"kernel {base}/bzImage initrd=initrd marker=m\n"
        f"initrd --name initrd {base}/initrd\n"
        "boot\n"
    )


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain static file server (no plasmaboot in it) of a PXE directory."""
    pxe = tmp_path / "pxe"
    pxe.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(pxe)))
    thread = threading.Thread(target=httpd.serve_forever)
    thread.start()
    try:
        yield pxe, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


def test_a_static_server_never_mixes_two_builds(
    tmp_path: Path, static_server: tuple[Path, str]
) -> None:
    """Nodes boot from a static server of --pxe-dir while builds are published: each node
    fetches the script, then the kernel and initrd it names; a publish happens between."""
    pxe, base = static_server
    publish_atomically(write_files(tmp_path / "s0", "worker", "build0"), pxe, "worker", BOOT_FILES)
    for number in range(1, 31):
        script = fetch(f"{base}/worker/{IPXE}").decode().replace(BOOT_SERVER, base)
        marker = script.split("marker=")[1].split()[0]
        source = write_files(tmp_path / f"s{number}", "worker", f"build{number}")
        publish_atomically(source, pxe, "worker", BOOT_FILES)  # between the node's downloads
        kernel_url = script.splitlines()[2].split()[1]
        initrd_url = script.splitlines()[3].split()[-1]
        assert fetch(kernel_url).startswith(f"kernel {marker}\n".encode())
        assert fetch(initrd_url).startswith(f"initrd {marker}\n".encode())
