"""Artifact sets for tests, made with the real tools (mksquashfs, the cpio writer, the
iPXE renderer) the way a good Debian build leaves them: a small root tree, its squashfs,
an initrd of a stage-1 segment and a root segment, a crafted kernel, the script and a
manifest whose resolved profile has two services, x (enabled) and y (not); and
`plasmaboot verify` run on them as users run it."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from plasmaboot.artifacts.layout import HASHED_FILES, INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.manifest import Manifest, file_records, read_manifest, write_manifest
from plasmaboot.cli import main
from plasmaboot.formats.cpio import Compression, Entry, concatenate, write_segment
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.profiles.model import Profile
from plasmaboot.profiles.store import ProfileStore

from conftest import KERNEL_RELEASE, make_kernel

LABEL = "worker"
KERNEL_PARAMS = ["console=ttyS0", "quiet"]
SSHD_MAIN = "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n"
SSHD_DROP_IN = (
    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
)
SERVICES = {"x": True, "y": False}  # name: enabled


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def make_tree(root: Path, public_key: str) -> Path:
    """A small root filesystem as a good build leaves it."""
    write_files(
        root,
        {
            "etc/shadow": "root:!*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
            "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
            "etc/ssh/sshd_config": SSHD_MAIN,
            "etc/ssh/sshd_config.d/plasmaboot.conf": SSHD_DROP_IN,
            "root/.ssh/authorized_keys": public_key,
            "etc/systemd/system/x.service": "[Service]\nExecStart=/bin/true\n",
            "etc/systemd/system/y.service": "[Service]\nExecStart=/bin/true\n",
        },
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "x.service").symlink_to("/etc/systemd/system/x.service")
    return root


def make_squashfs(tree: Path, image: Path) -> Path:
    subprocess.run(
        ["mksquashfs", tree, image, "-comp", "zstd", "-all-root", "-quiet", "-no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return image


# A stage-1 module as the Debian build leaves it: plain ELF, built for the set's kernel.
STAGE1_MODULE = b"\x7fELF" + f"\0vermagic={KERNEL_RELEASE} SMP mod_unload\0".encode()


def make_initrd(directory: Path, squashfs: Path) -> Path:
    """As the build writes it: gzip stage-1 (with /init), then an uncompressed root squashfs."""
    stage1 = directory / "stage1.cpio.gz"
    write_segment(
        [
            Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\nexec switch_root\n"),
            Entry("etc/stage1-modules", stat.S_IFREG | 0o644, data=b"squashfs.ko\n"),
            Entry("lib/modules/squashfs.ko", stat.S_IFREG | 0o644, data=STAGE1_MODULE),
        ],
        stage1,
        Compression.GZIP,
    )
    root = directory / "root.cpio"
    write_segment([Entry("root.squashfs", stat.S_IFREG | 0o644, source=squashfs)], root,
                  Compression.NONE)  # fmt: skip
    concatenate([stage1, root], directory / INITRD)
    stage1.unlink()
    root.unlink()
    return directory / INITRD


def make_ipxe(directory: Path, label: str = LABEL, params: list[str] = KERNEL_PARAMS) -> Path:
    (directory / IPXE).write_text(render_netboot_script(label, params))
    return directory / IPXE


def profile_with_services(services: dict[str, bool]) -> Profile:
    """The worker profile with the services the test tree holds, made from one of its own
    (so the services have every field a resolved one has)."""
    worker = ProfileStore().resolve(LABEL)
    template = next(iter(worker.services.values()))
    resolved = {
        name: template.model_copy(update={"name": name, "enable": enable})
        for name, enable in services.items()
    }
    return worker.model_copy(update={"services": resolved})


def rehash(directory: Path) -> None:
    """Record the files' current sizes and hashes, as if the build had made them so."""
    files = file_records(directory, HASHED_FILES)
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory).model_copy(update={"files": files})
    else:
        profile = profile_with_services(SERVICES)
        manifest = Manifest(
            profile=LABEL,
            label=LABEL,
            content_hash=profile.content_hash(),
            cache_key="0" * 16,
            backend="debian",
            distro="bookworm",
            kernel_version=KERNEL_RELEASE,
            kernel_params=KERNEL_PARAMS,
            files=files,
            packages={"openssh-server": "1:9.2p1-2"},
            steps={"squashfs": 1.0},
            built_at="2024-01-01T00:00:00Z",
            plasmaboot_version="0.1.0",
            resolved_profile=profile,
        )
    write_manifest(directory, manifest)


def run_verify(directory: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """`plasmaboot verify DIR --json`: exit code, parsed JSON, stderr."""
    result = CliRunner().invoke(main, ["verify", str(directory), "--json", *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout), result.stderr


def failures(directory: Path) -> set[str]:
    """The names of the checks that fail, after checking that exit code, `ok` and the
    error line agree with them."""
    code, report, stderr = run_verify(directory)
    failed = {c["name"] for c in report["checks"] if c["result"] == "fail"}
    assert code == (1 if failed else 0)
    assert report["ok"] is (not failed)
    for name in failed:
        assert name in stderr.replace("\n", "")
    return failed


def check_of(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The one check called `name` in a JSON report."""
    (check,) = [c for c in report["checks"] if c["name"] == name]
    return check


def squashfs_offset(directory: Path) -> int:
    return (directory / INITRD).read_bytes().index(b"hsqs")


def overwrite_initrd(directory: Path, offset: int, data: bytes) -> None:
    with (directory / INITRD).open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def damage_superblock(directory: Path) -> None:
    overwrite_initrd(directory, squashfs_offset(directory), b"\xde\xad\xbe\xef" * 4)


NIX_SYSTEM = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-worker-24.05.20240101.abcdef"
NIX_SSHD_CONFIG = (
    "UsePAM yes\nAuthorizedKeysFile %h/.ssh/authorized_keys /etc/ssh/authorized_keys.d/%u\n"
    "KbdInteractiveAuthentication no\nPasswordAuthentication no\n"
    "PermitRootLogin prohibit-password\n"
)
NIX_USERS = [
    {"name": "root", "uid": 0, "initialHashedPassword": "!", "hashedPassword": None},
    {"name": "nixos", "uid": None, "initialHashedPassword": "!", "password": None},
    {"name": "x", "uid": None, "isSystemUser": True, "hashedPassword": None},
]


def store_path(name: str) -> str:
    """A store path name: a 32-character hash of `name`, then the name."""
    return f"{hashlib.md5(name.encode()).hexdigest()}-{name}"


def public_key_line() -> str:
    blob = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big")
    return f"ssh-ed25519 {base64.b64encode(blob + bytes(32)).decode()} operator@test\n"


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def make_nix_store(store: Path, users: list[dict[str, Any]] | None = None) -> None:
    """A NixOS system closure as nixpkgs lays it out: the system links etc to the etc
    derivation, whose files link to their store paths (etc/systemd/system to the units
    derivation); activate names the users-groups.json it applies. Service x is enabled; y
    is disabled, so (as a NixOS module makes it) it has no unit at all."""
    system, etc = store / NIX_SYSTEM, store / store_path("etc") / "etc"
    units = store / store_path("system-units")
    spec = store_path("users-groups.json")
    write_files(
        store,
        {
            f"{NIX_SYSTEM}/init": "#!/bin/sh\nexec systemd\n",
            f"{NIX_SYSTEM}/activate": "#!/bin/sh\n# users\n"
            f"/nix/store/{store_path('perl')}/bin/perl -w update-users-groups.pl "
            f"/nix/store/{spec}\n",
            spec: json.dumps({"mutableUsers": True, "users": users or NIX_USERS, "groups": []}),
            store_path("sshd.conf-final"): NIX_SSHD_CONFIG,
            store_path("root-authorized_keys"): public_key_line(),
            f"{store_path('unit-x.service')}/x.service": "[Service]\nExecStart=/bin/x\n",
            f"{store_path('unit-sshd.service')}/sshd.service": "[Service]\nExecStart="
            f"/nix/store/{store_path('openssh')}/bin/sshd -D -f /etc/ssh/sshd_config\n",
            f"{store_path('systemd')}/example/systemd/system/getty@.service": "[Service]\n"
            "ExecStart=-/sbin/agetty -o '-p -- \\\\u' --noclear - $TERM\n",
            f"{store_path('unit-getty-.service')}/getty@.service": "[Service]\nExecStart=\n"
            "ExecStart=@/bin/agetty agetty --login-program /bin/login --noclear %I $TERM\n",
            "registration": "",
        },
    )
    link(system / "etc", f"/nix/store/{etc.parent.name}/etc")
    link(etc / "ssh/sshd_config", f"/nix/store/{store_path('sshd.conf-final')}")
    link(etc / "ssh/authorized_keys.d/root", f"/nix/store/{store_path('root-authorized_keys')}")
    write_files(etc, {"ssh/authorized_keys.d/root.mode": "0444\n"})
    link(etc / "systemd/system", f"/nix/store/{units.name}")
    link(units / "x.service", f"/nix/store/{store_path('unit-x.service')}/x.service")
    link(units / "multi-user.target.wants/x.service", "../x.service")
    link(units / "sshd.service", f"/nix/store/{store_path('unit-sshd.service')}/sshd.service")
    link(units / "multi-user.target.wants/sshd.service", "../sshd.service")
    upstream = f"/nix/store/{store_path('systemd')}/example/systemd/system"
    link(units / "getty@.service", f"{upstream}/getty@.service")
    link(units / "autovt@.service", "getty@.service")
    override = f"/nix/store/{store_path('unit-getty-.service')}/getty@.service"
    link(units / "getty@.service.d/overrides.conf", override)


NixEdit = Callable[[Path], None]


def make_nix_set(
    tmp_path: Path, init_system: str = NIX_SYSTEM, edit: NixEdit | None = None
) -> Path:
    """As nixpkgs' netbootRamdisk lays it out: stage-1 with /init, then a zstd segment with
    the store squashfs (store paths at its top, as make-squashfs.nix writes them); `edit`
    changes the store before it is squashed."""
    store = tmp_path / "store"
    make_nix_store(store)
    if edit is not None:
        edit(store)
    squashfs = make_squashfs(store, tmp_path / "nix-store.squashfs")
    directory = tmp_path / "set"
    directory.mkdir()
    stage1, stores = tmp_path / "stage1.cpio.gz", tmp_path / "store.cpio.zst"
    write_segment([Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n")], stage1,
                  Compression.GZIP)  # fmt: skip
    write_segment([Entry("nix-store.squashfs", stat.S_IFREG | 0o644, source=squashfs)], stores,
                  Compression.ZSTD)  # fmt: skip
    concatenate([stage1, stores], directory / INITRD)
    make_kernel(directory / KERNEL)
    params = ["console=ttyS0", f"init=/nix/store/{init_system}/init"]
    make_ipxe(directory, params=params)
    rehash(directory)
    manifest = read_manifest(directory).model_copy(
        update={"backend": "nix", "distro": "nixos 24.05", "kernel_params": params}
    )
    write_manifest(directory, manifest)
    return directory
