"""Adversarial probe of machines.toml (inventory.load): hostile values in every field, key
files that escape or never end, huge and deeply nested files, duplicate MACs in other
spellings and TOML's odd corners. Every bad input is one located line (a UserError naming
the file and the key), never a traceback, a hang or a value that changes what dnsmasq, iPXE
or the operator's terminal does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from plasmaboot.errors import UserError
from plasmaboot.inventory.load import Inventory, load_inventory
from plasmaboot.profiles.store import ProfileStore

PLASMABOOT = [sys.executable, "-m", "plasmaboot"]
MACHINE = '[machines.a]\nprofile = "worker"\nmac = "52:54:00:12:34:01"\n'
OTHER = '[machines.b]\nprofile = "worker"\nmac = "52:54:00:12:34:02"\n'


def write(directory: Path, text: str | bytes) -> Path:
    path = directory / "machines.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def load(path: Path) -> Inventory:
    return load_inventory(path, ProfileStore())


def refused(path: Path) -> str:
    """The one line a bad inventory gets."""
    with pytest.raises(UserError) as caught:
        load(path)
    message = caught.value.message
    assert "\n" not in message and len(message) < 600, message
    assert "machines.toml" in message
    return message


def load_within(path: Path, seconds: float) -> str:
    """load_inventory in a thread: its outcome, or "hung" (the test unblocks it after)."""
    outcome: list[str] = []

    def attempt() -> None:
        try:
            load(path)
            outcome.append("loaded")
        except UserError as exc:
            outcome.append(exc.message)
        except BaseException as exc:  # what the probe is after: anything but a UserError
            outcome.append(f"{type(exc).__name__}: {exc}")

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    return outcome[0] if outcome else "hung"


# ------------------------------------------------------------------------------------------
# injected characters, field by field


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # host names: newline, look-alike letters, bidi controls, shell and iPXE syntax
        (MACHINE + 'hostname = "a\\nb"\n', ["machines.a.hostname", '"a\\nb"']),
        (MACHINE + 'hostname = "ab\\n"\n', ["machines.a.hostname", '"ab\\n"']),
        (MACHINE + 'hostname = "\u0430b"\n', ["machines.a.hostname", "\\u0430"]),
        (MACHINE + 'hostname = "a\u202eb"\n', ["machines.a.hostname", "\\u202e"]),
        (MACHINE + 'hostname = "a;b"\n', ["machines.a.hostname"]),
        (MACHINE + 'hostname = "${x}"\n', ["machines.a.hostname"]),
        (MACHINE + 'hostname = "a\\u0000b"\n', ["machines.a.hostname", "\\u0000"]),
        # machine names are host name labels too
        (MACHINE.replace("machines.a", 'machines."a\\nb"'), ['machines."a\\nb"']),
        (MACHINE.replace("machines.a", 'machines."a b"'), ['machines."a b"']),
        (MACHINE.replace("machines.a", 'machines."../x"'), ['machines."../x"']),
        # MACs: trailing newline, full-width digits, other notations
        (MACHINE.replace('01"', '01\\n"'), ["machines.a.mac", "expected a MAC address"]),
        (MACHINE.replace('"52:', '"\uff152:'), ["machines.a.mac", "\\uff15"]),
        (MACHINE.replace("52:54:00:12:34:01", "525400123401"), ["machines.a.mac"]),
        (MACHINE.replace("52:54:00:12:34:01", "5254.0012.3401"), ["machines.a.mac"]),
        (MACHINE.replace("52:54:00:12:34:01", "ff:ff:ff:ff:ff:ff"), ["unicast"]),
        (MACHINE.replace('"52:54:00:12:34:01"', "[]"), ["at least one MAC"]),
        # profile and variant names that are paths
        (MACHINE.replace('"worker"', '"../profiles/worker"'), ["unknown profile"]),
        (MACHINE.replace('"worker"', '"/etc/passwd"'), ["unknown profile"]),
        (MACHINE.replace('"worker"', '"worker\\n"'), ["unknown profile", '"worker\\n"']),
        (MACHINE.replace('"worker"', '"debug"'), ["unknown profile"]),  # a variant
        (MACHINE + 'variant = "../variants/debug"\n', ["unknown variant"]),
        (MACHINE + 'variant = "worker"\n', ["unknown variant"]),  # a profile
        # kernel parameters: every character iPXE or a shell reads
        (MACHINE + 'kernel_params = ["${x}"]\n', ["kernel_params[0]", "'$'"]),
        (MACHINE + 'kernel_params = ["a||b"]\n', ["kernel_params[0]", "'|'"]),
        (MACHINE + 'kernel_params = ["a&&b"]\n', ["kernel_params[0]", "'&'"]),
        (MACHINE + 'kernel_params = ["a;b"]\n', ["kernel_params[0]", "';'"]),
        (MACHINE + 'kernel_params = ["a b"]\n', ["kernel_params[0]", "' '"]),
        (MACHINE + 'kernel_params = ["a\\nboot"]\n', ["kernel_params[0]", "'\\n'"]),
        (MACHINE + 'kernel_params = ["a\\u0000"]\n', ["kernel_params[0]", "'\\x00'"]),
        (MACHINE + 'kernel_params = ["a\\"b"]\n', ["kernel_params[0]", "'\"'"]),
        (MACHINE + 'kernel_params = ["#x"]\n', ["kernel_params[0]", "'#'"]),
        (MACHINE + 'kernel_params = ["a\u202eb"]\n', ["kernel_params[0]", "\\u202e"]),
        (MACHINE + 'kernel_params = ["\u00e9"]\n', ["kernel_params[0]"]),
        (MACHINE + f'kernel_params = ["{"x" * 2000}"]\n', ["2000 characters"]),
        (MACHINE + 'kernel_params = ["initrd=evil"]\n', ["initrd is set by plasmaboot"]),
        (MACHINE + 'kernel_params = ["ip=dhcp"]\n', ["ip is set by plasmaboot"]),
        (MACHINE + 'kernel_params = ["systemd.hostname=x"]\n', ["systemd.hostname is set"]),
        (MACHINE + 'kernel_params = "a=b"\n', ["kernel_params: expected a list"]),
        # addresses
        (MACHINE + 'ipv4 = "10.0.0.1/24\\n"\n', ["machines.a.ipv4"]),
        (MACHINE + 'ipv4 = "\u0661\u0660.0.0.1/24"\n', ["machines.a.ipv4"]),
        (MACHINE + 'ipv4 = "010.0.0.1/24"\n', ["machines.a.ipv4"]),
        (MACHINE + 'ipv4 = "10.0.0.1/24;x"\n', ["machines.a.ipv4"]),
        (MACHINE + 'ipv4 = " 10.0.0.1/24"\n', ["machines.a.ipv4"]),
        (MACHINE + 'ipv4 = "10.0.0.0/24"\n', ["the network address"]),
        (MACHINE + 'ipv4 = "127.0.0.1/8"\n', ["expected a host address"]),
        (MACHINE + 'ipv4 = "224.0.0.1/24"\n', ["expected a host address"]),
        (MACHINE + 'ipv4 = "169.254.1.1/16"\n', ["expected a host address"]),
        (MACHINE + 'ipv4 = "255.255.255.255/32"\n', ["expected a host address"]),
        # labels: printed by `machines list|show`, so nothing that drives a terminal
        (MACHINE + 'labels = { rack = "a\\nb" }\n', ["labels.rack", "printable"]),
        (MACHINE + 'labels = { rack = "\\u001b[31mred" }\n', ["labels.rack", "\\u001b"]),
        (MACHINE + 'labels = { rack = "a\\u0000b" }\n', ["labels.rack", "printable"]),
        (MACHINE + 'labels = { rack = "a\u202eb" }\n', ["labels.rack", "\\u202e"]),
        (MACHINE + 'labels = { rack = "a\u2028b" }\n', ["labels.rack", "printable"]),
        ('[defaults]\nlabels = { rack = "a\\u0007" }\n' + MACHINE, ["labels.rack"]),
        (MACHINE + f'labels = {{ rack = "{"x" * 300}" }}\n', ["labels.rack", "256"]),
        (MACHINE + 'labels = { "Rack" = "x" }\n', ["labels.Rack"]),
        (MACHINE + "labels = { rack = 1 }\n", ["labels.rack: expected a string"]),
    ],
)
def test_a_hostile_value_is_one_located_line(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    message = refused(write(tmp_path, text))
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("hostname", "reads_as"),
    [
        ("ignore", "never answer the machine"),
        ("infinite", "an infinite lease"),
        ("600", "a lease of 600 s"),
        ("1h", "a lease of an hour"),
        ("30m", "a lease of 30 min"),
        ("10.77.0.55", "a static address"),
        ("rack1.42", "(an all-numeric top label: no host name per RFC 1123)"),
    ],
)
def test_a_host_name_dnsmasq_would_read_as_something_else_is_refused(
    tmp_path: Path, hostname: str, reads_as: str
) -> None:
    """dnsmasq's dhcp-host line has no quoting: measured with dnsmasq 2.90, a machine named
    `ignore` got no offer at all, `600` a 10-minute lease and no name, `10.77.0.55` that
    address. So such a name must never reach the hosts file."""
    message = refused(write(tmp_path, MACHINE + f'hostname = "{hostname}"\n'))
    assert f'machines.a.hostname: "{hostname}" is not usable as a host name' in message, reads_as


def test_a_machine_named_like_a_dnsmasq_word_needs_its_own_hostname(tmp_path: Path) -> None:
    path = write(tmp_path, MACHINE.replace("machines.a", "machines.ignore"))
    with pytest.raises(UserError) as caught:
        load(path)
    assert "machines.ignore.hostname" in caught.value.message
    assert caught.value.hint is not None and "set hostname" in caught.value.hint
    write(tmp_path, MACHINE.replace("machines.a", "machines.ignore") + 'hostname = "n1"\n')
    assert load(path).machines["ignore"].hostname == "n1"


# ------------------------------------------------------------------------------------------
# duplicates in other spellings


@pytest.mark.parametrize(
    ("second", "fragment"),
    [
        (OTHER.replace("52:54:00:12:34:02", "52-54-00-12-34-01"), 'mac: "52:54:00:12:34:01"'),
        (OTHER.replace("52:54:00:12:34:02", "52:54-00:12-34:01"), 'mac: "52:54:00:12:34:01"'),
        (OTHER.replace('"52:54:00:12:34:02"', '["52:54:00:aa:00:01", "52-54-00-12-34-01"]'), "mac"),
        (OTHER + 'hostname = "a"\n', 'hostname: "a" is already machines.a\'s'),
        (OTHER + 'ipv4 = "10.0.0.1/16"\n', 'ipv4: "10.0.0.1" is already'),
        (OTHER + 'ipv4 = "10.0.0.1/255.255.0.0"\n', 'ipv4: "10.0.0.1" is already'),
    ],
)
def test_a_duplicate_in_another_spelling_is_refused(
    tmp_path: Path, second: str, fragment: str
) -> None:
    message = refused(write(tmp_path, MACHINE + 'ipv4 = "10.0.0.1/24"\n' + second))
    assert "machines.b." in message and fragment in message, message


def test_an_uppercase_mac_and_its_lowercase_twin_are_one(tmp_path: Path) -> None:
    upper = MACHINE.replace("12:34:01", "AB:CD:01")
    message = refused(write(tmp_path, upper + OTHER.replace("12:34:02", "ab:cd:01")))
    assert '"52:54:00:ab:cd:01" is already machines.a\'s' in message


def test_one_machine_listing_its_mac_twice_is_one_mac(tmp_path: Path) -> None:
    text = MACHINE.replace('"52:54:00:12:34:01"', '["52:54:00:12:34:01", "52-54-00-12-34-01"]')
    assert load(write(tmp_path, text)).machines["a"].macs == ("52:54:00:12:34:01",)


# ------------------------------------------------------------------------------------------
# TOML's odd corners


@pytest.mark.parametrize(
    "text",
    [
        'machines.a.mac = "52:54:00:12:34:01"\nmachines.a.profile = "worker"\n',  # dotted keys
        'machines = { a = { mac = "52:54:00:12:34:01", profile = "worker" } }\n',  # inline
        MACHINE.replace("\n", "\r\n"),  # CRLF line ends
        "[defaults]\nprofile = 'worker'\n[machines.a]\nmac = '52:54:00:12:34:01'\n",  # literal
    ],
)
def test_equivalent_toml_spellings_load_alike(tmp_path: Path, text: str) -> None:
    machine = load(write(tmp_path, text)).machines["a"]
    assert machine.macs == ("52:54:00:12:34:01",) and machine.profile == "worker"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[machines]]\nmac = "52:54:00:12:34:01"\n', "machines: expected a table"),
        ('[[machines.a]]\nmac = "52:54:00:12:34:01"\n', "machines.a: expected a table"),
        ('[[defaults]]\nprofile = "worker"\n', "defaults: expected a table"),
        ("defaults = 5\n", "defaults: expected a table"),
        ("machines = 5\n", "machines: expected a table"),
        (MACHINE.replace('"52:54:00:12:34:01"', "2024-01-01T00:00:00Z"), "machines.a.mac"),
        (MACHINE.replace('"worker"', "2024-01-01"), "machines.a.profile: expected a string"),
        (MACHINE + "labels = { x = 07:32:00 }\n", "labels.x: expected a string"),
        (MACHINE + "hostname = nan\n", "hostname: expected a string"),
        (MACHINE + "hostname = 1.5\n", "hostname: expected a string"),
        ('[defaults]\nmac = "52:54:00:12:34:01"\n', "defaults.mac: unknown key"),
        ("nodes = 1\n", "nodes: unknown key"),
        (MACHINE + "macs = []\n", "machines.a.macs: unknown key"),
        ("\ufeff" + MACHINE, "line 1"),  # a byte order mark
        ("x = " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        ("x = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
        (MACHINE + "labels = {a=" + "[" * 3000 + "]" * 3000 + "}\n", "nested too deeply"),
        ("x." * 5000 + "y = 1\n", "x: unknown key"),  # deep, but flat for the parser
        ("[" + ".".join(["a"] * 5000) + "]\n", "a: unknown key"),
    ],
)
def test_a_toml_oddity_is_one_located_line(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in refused(write(tmp_path, text))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (MACHINE.encode() + b"# \xff\n", "line 4: expected UTF-8 text"),
        (MACHINE.encode() + b"#\x00\n", "line 4"),
    ],
)
def test_bytes_that_are_not_toml_text(tmp_path: Path, raw: bytes, fragment: str) -> None:
    assert fragment in refused(write(tmp_path, raw))


def test_an_empty_inventory_is_valid_and_boots_nothing(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")).machines == {}


# ------------------------------------------------------------------------------------------
# the inventory file itself: things that are not a file, or never end


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
        (lambda p: p.symlink_to("/dev/urandom"), "not a regular file"),
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: p.symlink_to(p.name), "Too many levels of symbolic links"),
        (lambda p: None, "No such file or directory"),
    ],
    ids=["fifo", "dev-zero", "dev-urandom", "directory", "symlink-loop", "missing"],
)
def test_an_inventory_that_is_no_file_is_refused_at_once(
    tmp_path: Path, make: object, fragment: str
) -> None:
    path = tmp_path / "machines.toml"
    make(path)  # type: ignore[operator]
    outcome = load_within(path, 10)
    if outcome == "hung" and path.is_fifo():
        with open(path, "wb"):  # a writer lets the blocked reader go
            pass
    assert fragment in outcome, outcome


def test_a_file_over_16_mib_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "machines.toml"
    with path.open("wb") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GiB of nothing
    started = time.monotonic()
    assert "larger than 16 MiB" in refused(path)
    assert time.monotonic() - started < 5


def test_a_symlinked_inventory_is_read_through_its_link(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text(MACHINE)
    (tmp_path / "machines.toml").symlink_to(real)
    assert list(load(tmp_path / "machines.toml").machines) == ["a"]


def test_an_unreadable_inventory_is_one_line() -> None:
    """Run as an unprivileged user (root reads anything), in a directory it can enter."""
    directory = Path(tempfile.mkdtemp(prefix="plasmaboot-adversarial-"))
    try:
        directory.chmod(0o755)
        path = write(directory, MACHINE)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *PLASMABOOT]
        argv += ["machines", "check", "--inventory", str(path)]
        readable = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert readable.returncode == 0, readable.stderr  # the user can read it when allowed
        path.chmod(0)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    finally:
        shutil.rmtree(directory)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "is not readable" in proc.stderr  # click's check of --inventory, exit 2


# ------------------------------------------------------------------------------------------
# ssh_keys: relative to the inventory, inside its directory, regular files only


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", directory / "ops"], check=True
    )
    return directory


def sparse(path: Path) -> Path:
    path.touch()
    return path


def with_key(ref: str) -> str:
    """`ref` as a TOML basic string: its escapes (\\n, \\u0000) are TOML's."""
    return MACHINE + f'ssh_keys = ["{ref}"]\n'


def test_a_key_file_beside_the_inventory_is_taken(tmp_path: Path, keys: Path) -> None:
    inventory = load(write(tmp_path, with_key("keys/ops.pub")))
    assert inventory.machines["a"].ssh_keys == (str((keys / "ops.pub").resolve()),)
    inventory = load(write(tmp_path, with_key("keys/../keys/ops.pub")))
    assert inventory.machines["a"].ssh_keys == (str((keys / "ops.pub").resolve()),)


@pytest.mark.parametrize(
    ("make", "ref", "fragment"),
    [
        (None, "../outside.pub", "expected a path inside"),
        (None, "/etc/ssh/ssh_host_ed25519_key.pub", "expected a path relative to"),
        (lambda k: (k / "out.pub").symlink_to(k.parent.parent / "outside.pub"), "keys/out.pub",
         "expected a path inside"),
        (lambda k: (k / "passwd.pub").symlink_to("/etc/passwd"), "keys/passwd.pub",
         "expected a path inside"),
        (lambda k: os.mkfifo(k / "fifo.pub"), "keys/fifo.pub", "not a regular file"),
        (lambda k: (k / "zero.pub").symlink_to("/dev/zero"), "keys/zero.pub", "inside"),
        (lambda k: (k / "dir.pub").mkdir(), "keys/dir.pub", "not a regular file"),
        (lambda k: (k / "loop.pub").symlink_to("loop.pub"), "keys/loop.pub", "cannot resolve"),
        (lambda k: os.truncate(sparse(k / "big.pub"), 1 << 30), "keys/big.pub", "1 MiB"),
        (None, "keys/ops", "this is a private key"),
        (None, "keys/missing.pub", "No such file or directory"),
        (None, "", "expected a path relative to"),
        (None, "keys/ops.pub\\u0000", "expected a path relative to"),
        (None, "keys/ops.pub\\n", "expected a path relative to"),
        (None, "keys/\\u001b[2Jops.pub", "expected a path relative to"),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-passwd", "fifo", "dev-zero", "dir",
         "symlink-loop", "sparse-1g", "private", "missing", "empty", "nul", "newline", "escape"],
)  # fmt: skip
def test_a_bad_key_file_is_one_located_line(
    tmp_path: Path, keys: Path, make: object, ref: str, fragment: str
) -> None:
    (tmp_path.parent / "outside.pub").write_text((keys / "ops.pub").read_text())
    if make is not None:
        make(keys)  # type: ignore[operator]
    path = write(tmp_path, with_key(ref))
    outcome = load_within(path, 10)
    if outcome == "hung":
        with open(keys / "fifo.pub", "wb"):
            pass
    assert "machines.a.ssh_keys[0]" in outcome and fragment in outcome, outcome


# ------------------------------------------------------------------------------------------
# size


def test_a_profile_name_longer_than_a_file_name_is_unknown(tmp_path: Path) -> None:
    message = refused(write(tmp_path, MACHINE.replace('"worker"', f'"{"x" * 100_000}"')))
    assert "unknown profile" in message and "100002 characters" in message


def test_ten_thousand_machines_load(tmp_path: Path) -> None:
    lines = ['[defaults]\nprofile = "worker"\n']
    for i in range(10_000):
        mac = f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        lines.append(f'[machines.m{i}]\nmac = "{mac}"\nipv4 = "10.{i >> 8}.{i & 255}.1/8"\n')
    inventory = load(write(tmp_path, "".join(lines)))
    assert len(inventory.by_mac) == 10_000
