"""formats.ipxe: the script the build writes, read back (render -> parse is the identity),
and every other shape refused with the first line that differs, hostile ones included."""

from __future__ import annotations

import re

import pytest

from plasmaboot.formats import FormatError
from plasmaboot.formats.ipxe import NetbootScript, parse_netboot_script, render_netboot_script

PARAMS = ["console=ttyS0,115200", "console=tty0", "loglevel=4", "net.ifnames=0"]
GOOD = render_netboot_script("worker", PARAMS)


def test_render_writes_the_five_lines() -> None:
    assert GOOD.splitlines() == [
        "#!ipxe",
        "# plasmaboot: worker",
        "kernel ${boot-server}/worker/bzImage initrd=initrd console=ttyS0,115200 console=tty0 "
        "loglevel=4 net.ifnames=0",
        "initrd --name initrd ${boot-server}/worker/initrd",
        "boot",
    ]
    assert GOOD.endswith("boot\n")


@pytest.mark.parametrize(
    ("label", "params"),
    [
        ("worker", PARAMS),
        ("control-plane-debug", ["plasmaboot.debug_shell=1", "init=/nix/store/abc-nixos/init"]),
        ("all-in-one", []),
    ],
)
def test_parse_reads_back_what_render_writes(label: str, params: list[str]) -> None:
    script = parse_netboot_script(render_netboot_script(label, params))
    assert script == NetbootScript(label, tuple(params))
    assert render_netboot_script(script.label, script.kernel_params) == render_netboot_script(
        label, params
    )


def lines(text: str) -> list[str]:
    return text.split("\n")


def join(lines: list[str]) -> str:
    return "\n".join(lines)


def edited(number: int, line: str | None, extra: str | None = None) -> str:
    """GOOD with line `number` (1-based) replaced (or removed with None), and `extra`
    inserted after it."""
    result = lines(GOOD)
    replacement = ([] if line is None else [line]) + ([] if extra is None else [extra])
    result[number - 1 : number] = replacement
    return join(result)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a second kernel line: the last one wins in iPXE
        (
            edited(3, GOOD.splitlines()[2], "kernel http://elsewhere/bzImage"),
            "line 4: 'kernel http://elsewhere/bzImage', expected "
            "`initrd --name initrd ${boot-server}/worker/initrd`",
        ),
        # an extra initrd: one more segment the kernel would unpack over the image
        (
            edited(4, GOOD.splitlines()[3], "initrd http://elsewhere/evil.cpio"),
            "line 5: 'initrd http://elsewhere/evil.cpio', expected `boot`",
        ),
        # a chain to another script, before or after boot
        (
            edited(5, "chain http://elsewhere/next.ipxe"),
            "line 5: 'chain http://elsewhere/next.ipxe', expected `boot`",
        ),
        (
            GOOD + "chain http://elsewhere/next.ipxe\n",
            "line 6: 'chain http://elsewhere/next.ipxe' after `boot`, expected the end of the "
            "script",
        ),
        # a chain hidden on the kernel line behind a terminator, or a comment
        (
            GOOD.replace("net.ifnames=0", "net.ifnames=0 || chain http://elsewhere/x"),
            "line 3: kernel parameter '||': '|' is not allowed in a kernel parameter",
        ),
        (
            GOOD.replace("net.ifnames=0", "net.ifnames=0 ; chain http://elsewhere/x"),
            "line 3: kernel parameter ';': ';' is not allowed in a kernel parameter",
        ),
        (
            GOOD.replace("loglevel=4", "#loglevel=4"),
            "line 3: kernel parameter '#loglevel=4': '#' is not allowed in a kernel parameter",
        ),
        (
            GOOD.replace("loglevel=4", "root=${root-path}"),
            "line 3: kernel parameter 'root=${root-path}': '$' is not allowed",
        ),
        # not #!ipxe at byte 0
        (" " + GOOD, "line 1: ' #!ipxe', expected '#!ipxe' at byte 0"),
        ("\n" + GOOD, "line 1: '', expected '#!ipxe' at byte 0"),
        ("\ufeff" + GOOD, "line 1: unprintable character '\\ufeff' at column 1"),
        ("#!gpxe" + GOOD[6:], "line 1: '#!gpxe', expected '#!ipxe' at byte 0"),
        ("", "line 1: missing, expected `#!ipxe`"),
        ("kernel http://elsewhere/x\nboot", "line 1: 'kernel http://elsewhere/x', expected"),
        # CRLF, a NUL, a tab
        (GOOD.replace("\n", "\r\n"), "line 1: unprintable character '\\r' at column 7"),
        (
            GOOD.replace("loglevel=4", "log\0level=4"),
            "line 3: unprintable character '\\x00' at column 89",
        ),
        (
            GOOD.replace("initrd --name", "initrd\t--name"),
            "line 4: unprintable character '\\t' at column 7",
        ),
        # the rest of the shape
        (GOOD.rstrip("\n"), "line 5: 'boot' does not end with a newline"),
        (
            edited(2, "# built by hand"),
            "line 2: '# built by hand', expected `# plasmaboot: <label>`",
        ),
        (edited(2, None), "line 2: 'kernel ${boot-server}/worker/bzImage "),
        (
            GOOD.replace("/worker/bzImage", "/other/bzImage"),
            "line 3: 'kernel ${boot-server}/other/bzImage initrd=initrd ",
        ),
        (
            GOOD.replace("initrd=initrd ", ""),
            "line 3: 'kernel ${boot-server}/worker/bzImage console=ttyS0,115200 co', "
            "expected `kernel ${boot-server}/worker/bzImage initrd=initrd <params>`",
        ),
        (GOOD.replace("loglevel=4 ", "loglevel=4  "), "line 3: kernel parameter '': an empty"),
        (join(lines(GOOD)[:3]) + "\n", "line 4: missing, expected `initrd --name initrd "),
        (GOOD.replace("boot\n", "boot  \n"), "line 5: 'boot  ', expected `boot`"),
        # the first unexpected line is named, whatever comes after it
        (
            edited(2, "# hand-made").replace("initrd --name", "initrd\r--name"),
            "line 2: '# hand-made', expected `# plasmaboot: <label>`",
        ),
        (edited(2, "# hand-made") + "boot", "line 2: '# hand-made', expected"),
    ],
)
def test_other_shapes_are_refused_at_their_first_unexpected_line(text: str, message: str) -> None:
    with pytest.raises(FormatError) as refused:
        parse_netboot_script(text)
    assert str(refused.value).startswith(message), str(refused.value)


@pytest.mark.parametrize(
    ("label", "params", "message"),
    [
        ("Worker", [], "label 'Worker' is not a name"),
        ("../etc", [], "label '../etc' is not a name"),
        ("worker", ["a b"], "kernel parameter 'a b': ' ' is not allowed"),
        ("worker", ["||"], "kernel parameter '||': '|' is not allowed"),
        ("worker", ["x=${y}"], "kernel parameter 'x=${y}': '$' is not allowed"),
        ("worker", [""], "kernel parameter '': an empty kernel parameter"),
    ],
)
def test_render_refuses_what_the_script_cannot_carry(
    label: str, params: list[str], message: str
) -> None:
    with pytest.raises(FormatError, match=re.escape(message)):
        render_netboot_script(label, params)


def test_a_served_script_names_one_exact_set() -> None:
    script = render_netboot_script(
        "worker", ["console=ttyS0"], set_url="http://10.0.0.1:8080/sets/worker-0123"
    )
    assert script.splitlines()[2:4] == [
        "kernel http://10.0.0.1:8080/sets/worker-0123/bzImage initrd=initrd console=ttyS0",
        "initrd --name initrd http://10.0.0.1:8080/sets/worker-0123/initrd",
    ]


@pytest.mark.parametrize(
    "set_url",
    [
        "http://h/sets/x y",
        "http://h/sets/x\nchain http://evil",
        "http://h/${x}",
        "ftp://h/sets/x",
        "http://h/sets/../x",
        "http://h/.hidden",
    ],
)
def test_a_set_url_the_script_cannot_carry_is_refused(set_url: str) -> None:
    with pytest.raises(FormatError, match="set URL"):
        render_netboot_script("worker", [], set_url=set_url)


def test_a_kernel_line_past_the_kernels_limit_is_refused_not_cut() -> None:
    fits = [f"p{i}={'x' * 400}" for i in range(4)]
    render_netboot_script("worker", fits)
    with pytest.raises(FormatError, match="the kernel takes 2048"):
        render_netboot_script("worker", [*fits, "q=" + "y" * 450])
