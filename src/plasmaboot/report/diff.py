"""`plasmaboot diff SET_A SET_B`: what changed between two sets, from their manifests only:
packages added, removed, upgraded or downgraded (Debian's version order), the size change of
each package, the settings that changed (the resolved profiles, one dotted key per leaf),
the kernel, and the sizes of the set's files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plasmaboot.artifacts.layout import MANIFEST
from plasmaboot.artifacts.manifest import Manifest, read_manifest
from plasmaboot.errors import UserError


def load_set(directory: Path, argument: str) -> Manifest:
    """A set's manifest, or one line saying why the argument is not a set."""
    if not (directory / MANIFEST).is_file():
        raise UserError(
            f"{argument} {directory}: no {MANIFEST}, so this is not an artifact set",
            hint="give a directory a build wrote, e.g. artifacts/worker or artifacts/.sets/<id>",
        )
    try:
        return read_manifest(directory)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        problem = f"{exc.error_count()} problem(s), the first: {where}: {first['msg']}"
    except (ValueError, OSError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise UserError(
        f"{argument} {directory / MANIFEST}: not a manifest plasmaboot can read: {problem}"[:400],
        hint="an older plasmaboot may have written it: rebuild the set, or give another one",
    )


# --------------------------------------------------------------------------------------
# Debian version order (deb-version(7)): epoch, upstream version, revision; `~` sorts first.


def split_version(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
    return (int(epoch) if epoch.isdigit() else 0, upstream, revision)


DIGITS = "0123456789"


def char_order(char: str) -> int:
    """dpkg's order of a non-digit character: `~` first, then the end of the part (and
    digits), then letters, then everything else."""
    if char == "~":
        return -1
    if char in DIGITS:
        return 0
    if char.isascii() and char.isalpha():
        return ord(char)
    return ord(char) + 256


def compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate runs of non-digits (by char_order) and numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and a[i] not in DIGITS) or (j < len(b) and b[j] not in DIGITS):
            ac = char_order(a[i]) if i < len(a) else 0
            bc = char_order(b[j]) if j < len(b) else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i, j = i + 1, j + 1
        na = re.match(r"[0-9]*", a[i:])
        nb = re.match(r"[0-9]*", b[j:])
        da, db = (na.group() if na else ""), (nb.group() if nb else "")
        i, j = i + len(da), j + len(db)
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `dpkg --compare-versions a lt/eq/gt b` would say."""
    ea, ua, ra = split_version(a)
    eb, ub, rb = split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return compare_part(ua, ub) or compare_part(ra, rb)


# --------------------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"dotted.key": leaf}; lists are leaves."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def diff_settings(a: Manifest, b: Manifest) -> list[dict[str, Any]]:
    before = flatten(a.resolved_profile.model_dump(mode="json"))
    after = flatten(b.resolved_profile.model_dump(mode="json"))
    return [
        {"setting": key, "from": before.get(key), "to": after.get(key)}
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key) or (key in before) != (key in after)
    ]


def diff_packages(a: Manifest, b: Manifest) -> dict[str, list[dict[str, Any]]]:
    added = sorted(b.packages.keys() - a.packages.keys())
    removed = sorted(a.packages.keys() - b.packages.keys())
    upgraded: list[dict[str, Any]] = []
    downgraded: list[dict[str, Any]] = []
    for name in sorted(a.packages.keys() & b.packages.keys()):
        old, new = a.packages[name], b.packages[name]
        if old == new:
            continue
        change = {"package": name, "from": old, "to": new}
        (upgraded if compare_versions(old, new) < 0 else downgraded).append(change)
    return {
        "added": [{"package": n, "version": b.packages[n]} for n in added],
        "removed": [{"package": n, "version": a.packages[n]} for n in removed],
        "upgraded": upgraded,
        "downgraded": downgraded,
    }


def diff_package_sizes(a: Manifest, b: Manifest) -> list[dict[str, Any]]:
    """Packages whose installed size changed (added and removed ones too), largest first."""
    changes = []
    for name in a.package_sizes.keys() | b.package_sizes.keys():
        old, new = a.package_sizes.get(name, 0), b.package_sizes.get(name, 0)
        if old != new:
            changes.append({"package": name, "from": old, "to": new, "change": new - old})
    return sorted(changes, key=lambda c: (-abs(c["change"]), c["package"]))


def diff_sets(a: Manifest, b: Manifest) -> dict[str, Any]:
    files = {
        name: {
            "from": a.files[name].size if name in a.files else None,
            "to": b.files[name].size if name in b.files else None,
        }
        for name in sorted(a.files.keys() | b.files.keys())
    }
    return {
        "a": {"label": a.label, "content_hash": a.content_hash, "built_at": a.built_at},
        "b": {"label": b.label, "content_hash": b.content_hash, "built_at": b.built_at},
        "kernel": {"from": a.kernel_version, "to": b.kernel_version},
        "packages": diff_packages(a, b),
        "package_sizes": diff_package_sizes(a, b),
        "package_sizes_known": bool(a.package_sizes and b.package_sizes),
        "settings": diff_settings(a, b),
        "files": files,
    }


def signed_size(change: int) -> str:
    sign = "+" if change >= 0 else "-"
    size = abs(change)
    if size >= 1 << 20:
        return f"{sign}{size / (1 << 20):.1f} MiB"
    if size >= 1 << 10:
        return f"{sign}{size / (1 << 10):.1f} KiB"
    return f"{sign}{size} B"


def diff_lines(diff: dict[str, Any], top: int = 20) -> list[str]:
    """The diff as plain lines for people (every line whole, no table to truncate)."""
    a, b = diff["a"], diff["b"]
    lines = [f"a: {a['label']} (content {a['content_hash'][:12]}, built {a['built_at']})"]
    lines.append(f"b: {b['label']} (content {b['content_hash'][:12]}, built {b['built_at']})")
    kernel = diff["kernel"]
    if kernel["from"] == kernel["to"]:
        lines.append(f"kernel: {kernel['from']} (unchanged)")
    else:
        lines.append(f"kernel: {kernel['from']} -> {kernel['to']}")
    for name, sizes in diff["files"].items():
        old, new = sizes["from"], sizes["to"]
        if old != new:
            change = signed_size((new or 0) - (old or 0))
            lines.append(f"file {name}: {old if old is not None else '-'} -> "
                         f"{new if new is not None else '-'} bytes ({change})")  # fmt: skip
    packages = diff["packages"]
    for entry in packages["added"]:
        lines.append(f"+ {entry['package']} {entry['version']}")
    for entry in packages["removed"]:
        lines.append(f"- {entry['package']} {entry['version']}")
    for kind in ("upgraded", "downgraded"):
        for entry in packages[kind]:
            lines.append(f"{kind} {entry['package']}: {entry['from']} -> {entry['to']}")
    if not any(packages.values()):
        lines.append("packages: unchanged")
    sizes = diff["package_sizes"]
    if sizes:
        lines.append(f"size changes by package (largest {min(top, len(sizes))} of {len(sizes)}):")
        for entry in sizes[:top]:
            lines.append(f"  {entry['package']}: {signed_size(entry['change'])}")
    elif not diff["package_sizes_known"]:
        lines.append("size changes by package: not known (a manifest has no package sizes)")
    settings = diff["settings"]
    for entry in settings:
        lines.append(f"setting {entry['setting']}: {entry['from']!r} -> {entry['to']!r}")
    if not settings:
        lines.append("settings: unchanged")
    return lines
