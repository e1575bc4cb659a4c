"""A NixOS store image seen as the system it boots sees it. The squashfs holds store paths
(`<hash>-name`) at its top; the system `/nix/store/<system>` links `etc` to the store path
the activation script links /etc to. `StoreTree` puts the store under nix/store and lays
that `etc` out at etc/ (directories reached through links are walked, every other entry is
a link into the store), so the checks of a Debian image read /etc/ssh/sshd_config or
/etc/systemd/system the same way. The accounts are not in /etc: the activation script
makes them from the `users-groups.json` it names (`NixAccounts`)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmaboot.formats import FormatError
from plasmaboot.run import run
from plasmaboot.verify.tree import ImageEntry, ImageTree, unsquashfs_error

STORE = "nix/store"
DIRECTORY = ImageEntry("d", 0, None)
STORE_READ_MAX = 1 << 20  # files of the system's /etc larger than this are not extracted
SINGLE_FILE_SCAN_MAX = 64 << 10  # single-file store paths read for private keys
VIEW_MAX_ENTRIES = 100_000  # a hostile etc of links to links cannot make the view explode
USERS_SPEC = re.compile(r"/nix/store/([0-9a-z]{32}-users-groups\.json)")


class StoreTree(ImageTree):
    """The store under nix/store, the system's etc/ laid out at etc/, and the files a
    check reads (the system's /etc, its activate script, single-file store paths) extracted."""

    scanned_where = "of the system's /etc and the single-file store paths"
    unread_reason = "not extracted (only the system's /etc and small single-file store paths are)"

    def __init__(self, entries: dict[str, ImageEntry], extracted: Path) -> None:
        super().__init__(entries, extracted)
        self.extracted_files: set[str] = set()

    def readable(self, resolved: str) -> bool:
        return resolved in self.extracted_files

    @classmethod
    def read_store(
        cls, squashfs: Path, extract_to: Path, system: str, store: dict[str, ImageEntry]
    ) -> StoreTree:
        """The view of `system` (the store path's name) in the store image `squashfs`,
        whose listing is `store`; a FormatError when the system has no etc/ or the files
        cannot be extracted."""
        entries = {"nix": DIRECTORY, STORE: DIRECTORY}
        entries.update({f"{STORE}/{path}": entry for path, entry in store.items()})
        tree = cls(entries, extract_to)
        etc = tree.resolve(f"{STORE}/{system}/etc")
        if etc is None or entries[etc].kind != "d":
            raise FormatError(f"/{STORE}/{system}/etc is missing: the system has no /etc")
        children: dict[str, list[str]] = defaultdict(list)
        for path in entries:
            parent, _, name = path.rpartition("/")
            children[parent].append(name)
        view: dict[str, ImageEntry] = {"etc": DIRECTORY}
        tree.lay_out(etc, "etc", children, view, ancestors=(etc,))
        entries.update(view)
        tree.extract(squashfs, tree.files_to_read(view, system))
        return tree

    def lay_out(
        self,
        source: str,
        target: str,
        children: dict[str, list[str]],
        view: dict[str, ImageEntry],
        ancestors: tuple[str, ...],
    ) -> None:
        """Lay the store directory `source` out at `target`, as the activation script's
        links make /etc: a directory (or a link to one) becomes a directory, anything else
        a link to the store path it resolves to."""
        for name in sorted(children.get(source, [])):
            path, at = f"{source}/{name}", f"{target}/{name}"
            if len(view) >= VIEW_MAX_ENTRIES:
                raise FormatError(f"the system's /etc has more than {VIEW_MAX_ENTRIES} entries")
            resolved = self.resolve(path)
            if resolved is None:  # dangling: keep the link as it is
                view[at] = self.entries[path]
            elif self.entries[resolved].kind == "d" and resolved not in ancestors:
                view[at] = DIRECTORY
                self.lay_out(resolved, at, children, view, (*ancestors, resolved))
            else:
                view[at] = ImageEntry("l", 0, f"/{resolved}")

    def files_to_read(self, view: dict[str, ImageEntry], system: str) -> list[str]:
        """The regular files the checks read: those the system's /etc leads to, its
        activate script, and the small single-file store paths (a key copied into the
        store by a path like ./ssh_host_ed25519_key is one)."""
        wanted = {self.resolve(path) for path in view}
        wanted.add(self.resolve(f"{STORE}/{system}/activate"))
        files = {
            path
            for path in wanted
            if path is not None
            and self.entries[path].kind == "-"
            and self.entries[path].size <= STORE_READ_MAX
        }
        files.update(
            path
            for path, entry in self.entries.items()
            if entry.kind == "-"
            and path.count("/") == 2
            and path.startswith(f"{STORE}/")
            and entry.size <= SINGLE_FILE_SCAN_MAX
        )
        return sorted(path for path in files if "\n" not in path)

    def extract(self, squashfs: Path, files: list[str]) -> None:
        if not files:
            return
        (self.extracted / "nix").mkdir(parents=True, exist_ok=True)  # unsquashfs makes store/
        listing = self.extracted.parent / "extract-list"
        listing.write_text("".join(f"{path.removeprefix(STORE + '/')}\n" for path in files))
        result = run(
            ["unsquashfs", "-n", "-no-xattrs", "-no-wildcards", "-d", self.extracted / STORE,
             "-ef", listing, squashfs],
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise FormatError(unsquashfs_error(result.stdout))
        self.extracted_files = {path for path in files if (self.extracted / path).is_file()}


@dataclass(frozen=True)
class NixAccounts:
    """The accounts the activation script makes: users-groups.json's `users`."""

    path: str  # the spec, as /nix/store/...-users-groups.json
    users: list[dict[str, Any]]


def read_accounts(tree: StoreTree, system: str) -> NixAccounts | None:
    """The users-groups.json the system's activate script names; None if it names none
    (accounts made another way, e.g. systemd-sysusers); a FormatError if it is unreadable."""
    activate = tree.read_text(f"{STORE}/{system}/activate")
    if activate is None:
        raise FormatError(f"/{STORE}/{system}/activate is missing")
    match = USERS_SPEC.search(activate)
    if match is None:
        return None
    path = f"{STORE}/{match[1]}"
    text = tree.read_text(path)
    if text is None:
        raise FormatError(f"/{path} (named by the activate script) is not in the store image")
    try:
        spec = json.loads(text)
        users = spec["users"]
        if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
            raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"/{path}: not a users-groups.json (no list of users)") from exc
    return NixAccounts(f"/{path}", users)


def first_password(user: dict[str, Any]) -> tuple[str, str]:
    """What update-users-groups.pl gives a new account (a netboot node has no /etc/shadow
    yet): (the option it comes from, its value); a password file or a clear-text password
    wins over a hash, a hash over an initial one; ("none", "!") when none is set."""
    for option in ("hashedPasswordFile", "passwordFile", "password"):
        if user.get(option) is not None:
            return option, str(user[option])
    for option in ("hashedPassword", "initialPassword", "initialHashedPassword"):
        if user.get(option) is not None:
            return option, str(user[option])
    return "none", "!"
