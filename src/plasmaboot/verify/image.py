"""What the root image holds, read with unsquashfs (verify.tree): no private or host keys,
root's password locked, sshd key-only, root's authorized_keys, and each service of the
built profile present and enabled exactly as the profile says. A NixOS store image holds
store paths, not a root filesystem: there only the system the kernel boots is looked for."""

from __future__ import annotations

import fnmatch
import re
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from plasmaboot.artifacts.layout import NIX_STORE_SQUASHFS, ROOT_SQUASHFS
from plasmaboot.artifacts.manifest import Manifest
from plasmaboot.checks import Check, count, failed, passed, skipped
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats import FormatError
from plasmaboot.formats.sshkeys import public_key_type
from plasmaboot.profiles.model import ResolvedService
from plasmaboot.verify.initrd import RootImage
from plasmaboot.verify.sshd import LOGIN_KEYWORDS, SSHD_DEFAULTS, read_sshd_config
from plasmaboot.verify.tree import EXTRACTED_PREFIXES, ImageEntry, ImageTree, list_squashfs

KEY_SCAN_MAX_SIZE = 64 << 10
PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"
SHOWN = 5
# The values of SSHD_DEFAULTS' keywords that leave login to keys alone.
SSHD_KEY_ONLY = {
    "permitrootlogin": {"prohibit-password", "without-password", "no"},
    "passwordauthentication": {"no"},
    "kbdinteractiveauthentication": {"no"},
}
NIX_INIT = re.compile(r"^init=/nix/store/([^/\s]+)/init$")
NOT_IN_STORE_IMAGE = (
    "NixOS image: /etc, /root and the units are made at boot by the activation script from "
    "the system closure, so they are not in the store squashfs to read"
)


def shown(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(f"/{p}" for p in paths[:SHOWN]) + more


def check_private_keys(name: str, tree: ImageTree) -> Check:
    by_name = [
        p for p in tree.entries if fnmatch.fnmatchcase(p.rpartition("/")[2], "ssh_host_*_key")
    ]
    scanned = [
        path
        for path, entry in tree.entries.items()
        if entry.kind == "-"
        and path.startswith(EXTRACTED_PREFIXES)
        and entry.size <= KEY_SCAN_MAX_SIZE
    ]
    by_content = [p for p in scanned if PRIVATE_KEY_MARKER in tree.read_regular(p)]
    found = sorted({*by_name, *by_content})
    if found:
        return failed(name, f"private keys in the image: {shown(found)}")
    return passed(name, f"none in {len(scanned)} small files under /etc, /root, /home")


def check_host_keys(name: str, tree: ImageTree) -> Check:
    keys = sorted(p for p in tree.entries if p.startswith("etc/ssh/ssh_host_"))
    if keys:
        return failed(name, f"baked SSH host keys: {shown(keys)}")
    return passed(name, "none in /etc/ssh (generated at each boot)")


def password_locked(field: str) -> bool:
    """`*`, `!`, `!*`, or `!` before a hash: no password can match."""
    return field == "*" or field.startswith("!")


def check_root_password(name: str, tree: ImageTree) -> Check:
    shadow = tree.read_text("etc/shadow")
    if shadow is None:
        return failed(name, "/etc/shadow is missing")
    root = [line.split(":") for line in shadow.splitlines() if line.startswith("root:")]
    if not root or len(root[0]) < 2:
        return failed(name, "/etc/shadow has no root entry")
    field = root[0][1]
    if field == "":
        return failed(name, "root has an empty password in /etc/shadow")
    if not password_locked(field):
        return failed(name, f"root has a password hash in /etc/shadow ({field[:3]}...)")
    passwd = tree.read_text("etc/passwd") or ""
    for line in passwd.splitlines():
        fields = line.split(":")
        # "x" sends login to /etc/shadow; anything else in passwd is used as the hash
        if (
            fields[0] == "root"
            and len(fields) > 1
            and not (fields[1] == "x" or password_locked(fields[1]))
        ):
            return failed(name, "root has a password in /etc/passwd")
    return passed(name, f"root password locked ({field[:2]!r})")


def check_sshd(name: str, tree: ImageTree) -> Check:
    config = read_sshd_config(tree)
    problems = []
    effective = {**SSHD_DEFAULTS, **config.settings}
    for keyword, allowed in SSHD_KEY_ONLY.items():
        if effective[keyword] not in allowed:
            source = "" if keyword in config.settings else " (sshd's default)"
            problems.append(f"{keyword} {effective[keyword]}{source}")
    problems += [
        f"{keyword} {value} in a Match block of /{path}"
        for path, keyword, value in config.in_match
        if keyword not in LOGIN_KEYWORDS and value not in SSHD_KEY_ONLY[keyword]
    ]
    if problems:
        return failed(name, "not key-only: " + "; ".join(problems))
    settings = ", ".join(f"{k} {effective[k]}" for k in SSHD_KEY_ONLY)
    return passed(name, f"{settings} (from {len(config.files)} files)")


# contracts C2: a machine's own keys (its per-node layer) add to the image's keys.
NODE_KEYS_FILES = [".ssh/authorized_keys", "/etc/plasmaboot/node/authorized_keys"]


def check_sshd_node_keys(name: str, tree: ImageTree) -> Check:
    """sshd reads root's keys and then the machine's own, from its per-node layer."""
    files = read_sshd_config(tree).authorized_keys_files
    expected = " ".join(NODE_KEYS_FILES)
    if files != NODE_KEYS_FILES:
        found = "not set" if files is None else " ".join(files)
        return failed(name, f"AuthorizedKeysFile is {found}, expected {expected}")
    return passed(name, f"AuthorizedKeysFile {expected}")


def check_authorized_keys(name: str, tree: ImageTree) -> Check:
    path = "root/.ssh/authorized_keys"
    text = tree.read_text(path)
    if text is None:
        return failed(name, f"/{path} is missing")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return failed(name, f"/{path} holds no keys")
    types = [public_key_type(line) for line in lines]
    bad = [number for number, key_type in enumerate(types, start=1) if key_type is None]
    if bad:
        return failed(name, f"/{path}: key lines {bad} are not valid public keys")
    return passed(name, f"{count(lines, 'key')} ({', '.join(sorted({t or '' for t in types}))})")


def check_service(name: str, tree: ImageTree, service: ResolvedService) -> Check:
    unit = f"{service.name}.service"
    if tree.resolve(f"etc/systemd/system/{unit}") is None:
        return failed(name, f"/etc/systemd/system/{unit} is missing")
    links = sorted(
        path
        for path, entry in tree.entries.items()
        if entry.kind == "l" and fnmatch.fnmatchcase(path, f"etc/systemd/system/*.wants/{unit}")
    )
    dangling = [link for link in links if tree.resolve(link) is None]
    if dangling:
        return failed(name, f"enabled through a dangling link: {shown(dangling)}")
    if service.enable and not links:
        return failed(name, "the built profile enables it, but no *.wants/ link does")
    if not service.enable and links:
        return failed(name, f"the built profile does not enable it, but {shown(links)} does")
    wants = ", ".join(link.split("/")[-2] for link in links)
    return passed(name, f"unit present, {'enabled in ' + wants if links else 'not enabled'}")


# What the image's sshd config may say about key files (contract C2): root's own keys and
# the per-node layer's; sshd's default (unset) also reads only files under ~/.ssh.
AUTHORIZED_KEYS_FILE = ".ssh/authorized_keys /etc/plasmaboot/node/authorized_keys"
SSHD_UNITS = ("ssh.service", "sshd.service", "ssh@.service", "ssh.socket")
GETTY_AUTOLOGIN = re.compile(r"(--autologin|\s-a\s)")
SSHD_OTHER_CONFIG = re.compile(r"[\s\"'=]-[fo]\s*\S")


def check_login_paths(name: str, tree: ImageTree) -> Check:
    """No way in but root's keys: sshd reads no other key file or key command, no second
    uid-0 account, no empty password, no getty logs in by itself, no sshd unit runs
    another config."""
    problems = sshd_login_problems(tree) + account_problems(tree) + unit_problems(tree)
    if problems:
        return failed(name, "; ".join(problems))
    return passed(name, "only root's authorized_keys lead in")


def sshd_login_problems(tree: ImageTree) -> list[str]:
    config = read_sshd_config(tree)
    login = config.login
    problems = [
        f"sshd {keyword} {value}"
        for keyword, value in login.items()
        if keyword != "authorizedkeysfile" and value.lower() != "none"
    ]
    problems += [
        f"sshd {keyword} {value} in a Match block of /{path}"
        for path, keyword, value in config.in_match
        if keyword in LOGIN_KEYWORDS
    ]
    keys_file = login.get("authorizedkeysfile")
    if keys_file is not None and keys_file != AUTHORIZED_KEYS_FILE:
        problems.append(f"sshd AuthorizedKeysFile {keys_file} (expected {AUTHORIZED_KEYS_FILE})")
    return problems


def account_problems(tree: ImageTree) -> list[str]:
    problems = []
    for line in (tree.read_text("etc/passwd") or "").splitlines():
        fields = line.split(":")
        if len(fields) < 4:
            continue
        if fields[0] != "root" and fields[2].strip() == "0":
            problems.append(f"{fields[0]!r} has uid 0 in /etc/passwd")
        if fields[1] == "" and fields[0] != "root":  # root: image.root-password
            problems.append(f"{fields[0]!r} has an empty password in /etc/passwd")
    for line in (tree.read_text("etc/shadow") or "").splitlines():
        fields = line.split(":")
        if len(fields) > 1 and fields[1] == "" and fields[0] != "root":
            problems.append(f"{fields[0]!r} has an empty password in /etc/shadow")
    return problems


def unit_problems(tree: ImageTree) -> list[str]:
    problems = []
    for path, entry in sorted(tree.entries.items()):
        if not path.startswith("etc/systemd/system/") or entry.kind not in ("-", "l"):
            continue
        unit = path.removeprefix("etc/systemd/system/").split("/")[0].removesuffix(".d")
        is_getty = "getty" in unit
        is_sshd = unit.split("/")[0] in SSHD_UNITS
        if not (is_getty or is_sshd):
            continue
        resolved = tree.resolve(path)
        if resolved is None or not resolved.startswith(EXTRACTED_PREFIXES):
            continue  # the distribution's own unit (an enabling link into /usr/lib)
        text = tree.read_text(resolved) or ""
        exec_lines = [line for line in text.splitlines() if line.strip().startswith("ExecStart")]
        if is_getty and any(GETTY_AUTOLOGIN.search(f" {line} ") for line in exec_lines):
            problems.append(f"/{path} logs in without a password (autologin)")
        if is_sshd and any(SSHD_OTHER_CONFIG.search(line) for line in exec_lines):
            problems.append(f"/{path} runs sshd with another config (-f/-o)")
    for line in (tree.read_text("etc/default/ssh") or "").splitlines():
        if line.strip().startswith("SSHD_OPTS") and SSHD_OTHER_CONFIG.search(f" {line} "):
            problems.append("/etc/default/ssh gives sshd another config (SSHD_OPTS -f/-o)")
    return problems


TreeCheck = Callable[[str, ImageTree], Check]
TREE_CHECKS: dict[str, TreeCheck] = {
    "image.private-keys": check_private_keys,
    "image.host-keys": check_host_keys,
    "image.root-password": check_root_password,
    "image.sshd": check_sshd,
    "image.authorized-keys": check_authorized_keys,
    "image.login-paths": check_login_paths,
}


def image_checks(manifest: Manifest | None) -> dict[str, TreeCheck]:
    """The checks of the image's contents: the fixed ones, then one per service of the
    profile the image was built from."""
    checks = dict(TREE_CHECKS)
    if manifest is not None and manifest.layers:  # images made before layers predate C2
        checks["image.sshd-node-keys"] = check_sshd_node_keys
    services = manifest.resolved_profile.services if manifest is not None else {}
    for name, service in services.items():
        checks[f"image.service:{name}"] = partial(check_service, service=service)
    return checks


def check_image(root: RootImage | None, manifest: Manifest | None) -> Iterator[Check]:
    checks = image_checks(manifest)
    if root is None:
        for name in ("image.read", *checks):
            yield skipped(name, "no readable root squashfs")
        return
    if root.name == NIX_STORE_SQUASHFS:
        yield from check_store_image(root, manifest, checks)
        return
    with tempfile.TemporaryDirectory(prefix="plasmaboot-verify-") as temp:
        image_path = Path(temp) / ROOT_SQUASHFS
        image_path.write_bytes(root.data)
        try:
            tree = ImageTree.read(image_path, Path(temp) / "root")
            tree.stack(root.layers)
        except (FormatError, WorkError, UserError) as exc:
            yield failed("image.read", str(exc))
            for name in checks:
                yield skipped(name, "the image could not be read")
            return
        stacked = f" (with {', '.join(layer.name for layer in root.layers)} above)"
        yield passed(
            "image.read", f"{len(tree.entries)} entries" + (stacked if root.layers else "")
        )
        for name, check in checks.items():
            try:
                yield check(name, tree)
            except (FormatError, OSError) as exc:
                # a file that links out of the extracted trees, or cannot be read
                yield failed(name, str(exc))


def check_store_image(
    root: RootImage, manifest: Manifest | None, checks: dict[str, TreeCheck]
) -> Iterator[Check]:
    """A NixOS store image holds store paths, not a root filesystem: check that the system
    the kernel line boots (`init=/nix/store/<system>/init`) is in it; the root-filesystem
    checks do not apply."""
    with tempfile.TemporaryDirectory(prefix="plasmaboot-verify-") as temp:
        image_path = Path(temp) / NIX_STORE_SQUASHFS
        image_path.write_bytes(root.data)
        try:
            entries = list_squashfs(image_path)
        except (FormatError, WorkError, UserError) as exc:
            yield failed("image.read", str(exc))
            yield skipped("image.init", "the image could not be read")
        else:
            yield passed("image.read", f"{len(entries)} entries in the Nix store image")
            yield check_store_init(entries, manifest)
    for name in checks:
        yield skipped(name, NOT_IN_STORE_IMAGE)


def check_store_init(entries: dict[str, ImageEntry], manifest: Manifest | None) -> Check:
    name = "image.init"
    if manifest is None:
        return skipped(name, "no manifest to name the init")
    matches = [m for m in map(NIX_INIT.match, manifest.kernel_params) if m is not None]
    if not matches:
        return failed(name, "manifest.json kernel_params has no init=/nix/store/<system>/init")
    system = matches[-1][1]
    init = entries.get(f"{system}/init")
    if init is None or init.kind not in ("-", "l"):
        return failed(name, f"/nix/store/{system}/init is not in the store image")
    return passed(name, f"/nix/store/{system}/init is in the store image")
