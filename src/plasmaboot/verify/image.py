"""What the root image holds, read with unsquashfs (verify.tree): no private or host keys,
root's password locked, sshd key-only, root's authorized_keys, and each service of the
built profile present and enabled exactly as the profile says. A NixOS store image holds
store paths, not a root filesystem: there the system the kernel boots is looked for, and
the same rules are applied to the /etc and accounts it activates (verify.store)."""

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
from plasmaboot.verify.sshd import (
    LOGIN_KEYWORDS,
    SSHD_DEFAULTS,
    read_sshd_config,
    sshd_arguments,
)
from plasmaboot.verify.store import NixAccounts, StoreTree, first_password, read_accounts
from plasmaboot.verify.tree import ImageEntry, ImageTree, list_squashfs

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
STORE_HASH = re.compile(r"^[0-9a-z]{32}-")


def shown(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(f"/{p}" for p in paths[:SHOWN]) + more


def file_name(path: str) -> str:
    """The last part of a path; of a top-level store path, without its hash."""
    name = path.rpartition("/")[2]
    return STORE_HASH.sub("", name) if path.startswith("nix/store/") else name


def check_private_keys(name: str, tree: ImageTree) -> Check:
    by_name = [p for p in tree.entries if fnmatch.fnmatchcase(file_name(p), "ssh_host_*_key")]
    scanned = [
        path
        for path, entry in tree.entries.items()
        if entry.kind == "-" and tree.readable(path) and entry.size <= KEY_SCAN_MAX_SIZE
    ]
    by_content = [p for p in scanned if PRIVATE_KEY_MARKER in tree.read_regular(p)]
    found = sorted({*by_name, *by_content})
    if found:
        return failed(name, f"private keys in the image: {shown(found)}")
    return passed(name, f"none in {len(scanned)} small files {tree.scanned_where}")


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


def check_authorized_keys(
    name: str, tree: ImageTree, path: str = "root/.ssh/authorized_keys"
) -> Check:
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


def check_service(
    name: str, tree: ImageTree, service: ResolvedService, disabled_unit: bool = True
) -> Check:
    """`disabled_unit`: the unit is in the image even when the profile does not enable it
    (Debian; a NixOS service module makes no unit when disabled)."""
    unit = f"{service.name}.service"
    if tree.resolve(f"etc/systemd/system/{unit}") is None and (service.enable or disabled_unit):
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
    if tree.resolve(f"etc/systemd/system/{unit}") is None:
        return passed(name, "no unit, not enabled (the built profile does not enable it)")
    return passed(name, f"unit present, {'enabled in ' + wants if links else 'not enabled'}")


# What the image's sshd config may say about key files (contract C2): root's own keys and
# the per-node layer's; sshd's default (unset) also reads only files under ~/.ssh.
AUTHORIZED_KEYS_FILE = ".ssh/authorized_keys /etc/plasmaboot/node/authorized_keys"
SSHD_UNITS = ("ssh.service", "sshd.service", "ssh@.service", "ssh.socket")
GETTY_AUTOLOGIN = re.compile(r"(--autologin|\s-a\s)")
SSHD_OPTION = re.compile(r"[\s\"'=]-(?P<flag>[fo])\s*(?P<value>[^\s\"']*)")
SSHD_CONFIG = "/etc/ssh/sshd_config"  # NixOS's sshd.service names it with -f


def runs_other_config(line: str) -> bool:
    """An sshd command line with -o, or -f with another file than the one verify reads."""
    return any(
        m["flag"] == "o" or m["value"] != SSHD_CONFIG for m in SSHD_OPTION.finditer(f" {line}")
    )


def check_login_paths(name: str, tree: ImageTree) -> Check:
    """No way in but root's keys: sshd reads no other key file or key command, no second
    uid-0 account, no empty password, no getty logs in by itself, no sshd unit runs
    another config."""
    problems = sshd_login_problems(tree) + account_problems(tree) + unit_problems(tree)
    if problems:
        return failed(name, "; ".join(problems))
    return passed(name, "only root's authorized_keys lead in")


def debian_keys_file(value: str) -> bool:
    return value == AUTHORIZED_KEYS_FILE


def sshd_login_problems(
    tree: ImageTree,
    keys_file_ok: Callable[[str], bool] = debian_keys_file,
    expected: str = AUTHORIZED_KEYS_FILE,
) -> list[str]:
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
    if keys_file is not None and not keys_file_ok(keys_file):
        problems.append(f"sshd AuthorizedKeysFile {keys_file} (expected {expected})")
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
        is_getty = "getty" in unit or "autovt" in unit
        is_sshd = unit.split("/")[0] in SSHD_UNITS
        if not (is_getty or is_sshd):
            continue
        resolved = tree.resolve(path)
        if resolved is None:
            continue
        if not tree.readable(resolved):
            if isinstance(tree, StoreTree):  # the whole /etc of a NixOS system is its own
                problems.append(f"/{path} was not read ({tree.unread_reason})")
            continue  # the distribution's own unit (an enabling link into /usr/lib)
        text = tree.read_text(resolved) or ""
        exec_lines = [line for line in text.splitlines() if line.strip().startswith("ExecStart")]
        if is_getty and any(GETTY_AUTOLOGIN.search(f" {line} ") for line in exec_lines):
            problems.append(f"/{path} logs in without a password (autologin)")
        if is_sshd and any(runs_other_config(line) for line in exec_lines):
            problems.append(f"/{path} runs sshd with another config (-f/-o)")
    for line in (tree.read_text("etc/default/ssh") or "").splitlines():
        if line.strip().startswith("SSHD_OPTS") and runs_other_config(line):
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
        yield from check_store_image(root, manifest)
        return
    with tempfile.TemporaryDirectory(prefix="plasmaboot-verify-") as temp:
        image_path = Path(temp) / ROOT_SQUASHFS
        root.write(image_path)
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


NIX_STEPS = "image.system"


def check_store_image(root: RootImage, manifest: Manifest | None) -> Iterator[Check]:
    """A NixOS store image holds store paths, not a root filesystem: check that the system
    the kernel line boots (`init=/nix/store/<system>/init`) is in it, then lay out that
    system's /etc (verify.store) and run the image checks on what it holds."""
    nix_checks = store_checks(manifest)
    with tempfile.TemporaryDirectory(prefix="plasmaboot-verify-") as temp:
        image_path = Path(temp) / NIX_STORE_SQUASHFS
        root.write(image_path)
        try:
            entries = list_squashfs(image_path)
        except (FormatError, WorkError, UserError) as exc:
            yield failed("image.read", str(exc))
            for name in ("image.init", NIX_STEPS, *nix_checks):
                yield skipped(name, "the image could not be read")
            return
        yield passed("image.read", f"{len(entries)} entries in the Nix store image")
        init = check_store_init(entries, manifest)
        yield init
        if manifest is None or init.result != "pass":
            for name in (NIX_STEPS, *nix_checks):
                yield skipped(name, "no system to read: the kernel line's init is not in the image")
            return
        system = booted_system(manifest)
        try:
            tree = StoreTree.read_store(image_path, Path(temp) / "store", system, entries)
        except (FormatError, WorkError, UserError) as exc:
            yield failed(NIX_STEPS, str(exc))
            for name in nix_checks:
                yield skipped(name, "the system's /etc could not be read")
            return
        laid_out = sum(1 for path in tree.entries if path.startswith("etc/"))
        yield passed(
            NIX_STEPS,
            f"/nix/store/{system}/etc laid out at /etc ({laid_out} entries), "
            f"{len(tree.extracted_files)} files read",
        )
        for name, check in nix_checks.items():
            try:
                yield check(name, tree, system)
            except (FormatError, OSError) as exc:
                yield failed(name, str(exc))


StoreCheck = Callable[[str, StoreTree, str], Check]


def store_checks(manifest: Manifest | None) -> dict[str, StoreCheck]:
    """The image checks of a NixOS system: the Debian image's rules, read where NixOS puts
    the data (root's keys in /etc/ssh/authorized_keys.d/root, the accounts in the
    users-groups.json the activation script applies); no per-node layer, so no
    image.sshd-node-keys."""
    checks: dict[str, StoreCheck] = {
        "image.private-keys": lambda name, tree, _: check_private_keys(name, tree),
        "image.host-keys": lambda name, tree, _: check_host_keys(name, tree),
        "image.root-password": check_nix_root_password,
        "image.sshd": lambda name, tree, _: check_sshd(name, tree),
        "image.authorized-keys": lambda name, tree, _: check_authorized_keys(
            name, tree, NIX_ROOT_KEYS
        ),
        "image.login-paths": check_nix_login_paths,
    }
    services = manifest.resolved_profile.services if manifest is not None else {}
    for service_name, service in services.items():
        checks[f"image.service:{service_name}"] = partial(nix_service, service=service)
    return checks


def nix_service(name: str, tree: StoreTree, system: str, service: ResolvedService) -> Check:
    return check_service(name, tree, service, disabled_unit=False)


NIX_ROOT_KEYS = "etc/ssh/authorized_keys.d/root"  # users.users.root.openssh.authorizedKeys
# NixOS's AuthorizedKeysFile: the user's own ~/.ssh files and the generated keys per user.
NIX_KEYS_FILE = re.compile(r"^((%h/)?\.ssh/authorized_keys2?|/etc/ssh/authorized_keys\.d/%u)$")
NIX_KEYS_FILE_EXPECTED = "~/.ssh/authorized_keys and /etc/ssh/authorized_keys.d/%u only"
NO_ACCOUNTS = "names no users-groups.json (accounts made another way), so they are not checked"


def nix_keys_file(value: str) -> bool:
    return all(NIX_KEYS_FILE.match(part) for part in sshd_arguments(value))


def check_nix_root_password(name: str, tree: StoreTree, system: str) -> Check:
    accounts = read_accounts(tree, system)
    if accounts is None:
        return skipped(name, f"/nix/store/{system}/activate {NO_ACCOUNTS}")
    roots = [user for user in accounts.users if user.get("name") == "root"]
    if not roots:
        return failed(name, f"{accounts.path} has no root account")
    option, value = first_password(roots[0])
    if option in ("hashedPasswordFile", "passwordFile"):
        return failed(name, f"root's password comes from {value} ({accounts.path})")
    if value == "":
        return failed(name, f"root has an empty password ({option} in {accounts.path})")
    if option in ("password", "initialPassword"):
        return failed(name, f"root has a clear-text password ({option} in {accounts.path})")
    if not password_locked(value):
        return failed(name, f"root has a password hash ({option} in {accounts.path})")
    return passed(name, f"root password locked ({value!r}, {option} in {accounts.path})")


def nix_account_problems(accounts: NixAccounts) -> list[str]:
    problems = []
    for user in accounts.users:
        user_name = str(user.get("name"))
        if user_name == "root":
            continue  # image.root-password
        if user.get("uid") == 0:
            problems.append(f"{user_name!r} has uid 0 in {accounts.path}")
        option, value = first_password(user)
        if value == "":
            problems.append(f"{user_name!r} has an empty password ({option} in {accounts.path})")
    return problems


def check_nix_login_paths(name: str, tree: StoreTree, system: str) -> Check:
    """As check_login_paths, with NixOS's key files and accounts."""
    problems = sshd_login_problems(tree, nix_keys_file, NIX_KEYS_FILE_EXPECTED)
    accounts = read_accounts(tree, system)
    if accounts is not None:
        problems += nix_account_problems(accounts)
    problems += unit_problems(tree)
    if problems:
        return failed(name, "; ".join(problems))
    if accounts is None:
        return passed(name, f"sshd and units hold no other way in; activate {NO_ACCOUNTS}")
    return passed(name, "only root's authorized_keys lead in")


def booted_system(manifest: Manifest) -> str:
    """The store path name of the system `init=/nix/store/<system>/init` boots."""
    matches = [m for m in map(NIX_INIT.match, manifest.kernel_params) if m is not None]
    return matches[-1][1]


def check_store_init(entries: dict[str, ImageEntry], manifest: Manifest | None) -> Check:
    name = "image.init"
    if manifest is None:
        return skipped(name, "no manifest to name the init")
    if not any(map(NIX_INIT.match, manifest.kernel_params)):
        return failed(name, "manifest.json kernel_params has no init=/nix/store/<system>/init")
    system = booted_system(manifest)
    init = entries.get(f"{system}/init")
    if init is None or init.kind not in ("-", "l"):
        return failed(name, f"/nix/store/{system}/init is not in the store image")
    return passed(name, f"/nix/store/{system}/init is in the store image")
