"""The build's two checks. Its input, before any work starts, so bad input leaves nothing
behind (exit 2, the file or option named); its output, before a set is committed, so a
broken set is never published. Both apply the rules of formats/, as verify does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, ensure_writable_dir
from plasmaboot.errors import UserError, WorkError
from plasmaboot.formats import FormatError
from plasmaboot.formats.bzimage import check_kernel_size, read_kernel_header
from plasmaboot.formats.cpio import Compression
from plasmaboot.formats.sshkeys import read_public_keys
from plasmaboot.image.backend import Backend
from plasmaboot.paths import cache_dir
from plasmaboot.profiles.located_errors import display_path
from plasmaboot.profiles.model import Profile

INITRD_SIZE_RANGE = (4 << 20, 2 << 30)
DEB_MAGIC = b"!<arch>\ndebian-binary"

# --------------------------------------------------------------------------------------
# Input


def check_inputs(
    profiles: Sequence[Profile],
    backend: Backend,
    ssh_keys: Sequence[Path],
    directories: Sequence[tuple[Path, str]],
    allow_no_keys: bool = False,
) -> None:
    """Everything that can be wrong before a build starts: the backend's options, its
    tools, every key and package file, the (directory, option) pairs to write, and an
    image nobody could log into (no key at all, unless `allow_no_keys`)."""
    backend.check_options()
    if ssh_keys and not backend.takes_ssh_keys:
        raise UserError(
            f"--ssh-key {ssh_keys[0]}: the {backend.name} backend does not take --ssh-key "
            "(its image gets root's keys only from the profile's ssh.authorized_keys)",
            hint="put the key file in the profile's ssh.authorized_keys, or use --backend debian",
        )
    backend.check_available()
    for path in ssh_keys:
        check_public_key(path, "--ssh-key")
    for profile in profiles:
        for key in profile.ssh.authorized_keys:
            check_public_key(Path(key), f"{profile.sources[-1]}: ssh.authorized_keys:")
        check_service_packages(profile)
    for directory, option in directories:
        check_creatable_dir(directory, option)
    check_output_places(directories, cache_dir())
    if not allow_no_keys:
        check_some_key(profiles, ssh_keys)


def check_some_key(profiles: Sequence[Profile], ssh_keys: Sequence[Path]) -> None:
    """An image with no authorized key is one nobody can log into: refused unless asked
    for (`--no-ssh-key`)."""
    if ssh_keys:
        return
    keyless = [profile.label for profile in profiles if not profile.ssh.authorized_keys]
    if keyless:
        raise UserError(
            f"{keyless[0]}: no SSH key: neither --ssh-key nor the profile's "
            "ssh.authorized_keys gives one, so nobody could log into the image",
            hint="pass --ssh-key ~/.ssh/id_ed25519.pub, or --no-ssh-key to build it anyway",
        )


def check_output_places(directories: Sequence[tuple[Path, str]], cache: Path) -> None:
    """Each directory the build writes is a directory of its own: not the filesystem's
    root, not inside the cache (which the build prunes), and not equal to or inside
    another one (publishing into the output directory would repoint a set's own link at
    a copy with no manifest)."""
    places = [(real_path(directory), directory, option) for directory, option in directories]
    cache_real = real_path(cache)
    for real, directory, option in places:
        if real.parent == real:
            raise UserError(
                f"{option} {directory}: expected a directory of its own, got the filesystem's root",
                hint="choose a directory such as ./artifacts or /srv/pxe",
            )
        if real.is_relative_to(cache_real):
            raise UserError(
                f"{option} {directory}: expected a directory outside the build cache "
                f"{display_path(cache)}, which the build manages",
                hint="choose a directory such as ./artifacts, or move the cache (PLASMABOOT_CACHE)",
            )
    for index, (real, directory, option) in enumerate(places):
        for other_real, other, other_option in places[index + 1 :]:
            if real.is_relative_to(other_real) or other_real.is_relative_to(real):
                raise UserError(
                    f"{other_option} {other}: expected a directory apart from {option} "
                    f"{directory}, got the same directory or one inside the other",
                    hint="publish to a directory of its own, e.g. /srv/pxe/assets",
                )


def real_path(directory: Path) -> Path:
    """Where `directory` is, through its links (a part that does not exist yet is taken
    as written)."""
    return Path(os.path.realpath(directory.absolute()))


def check_public_key(path: Path, where: str) -> None:
    """A public key file by the one rule (formats.sshkeys): readable, every line a valid
    OpenSSH public key, and no private key in it."""
    try:
        read_public_keys(path)
    except OSError as exc:
        raise UserError(
            f"{where} {display_path(path)}: cannot read ({exc.strerror})",
            hint="pass an existing public key file such as ~/.ssh/id_ed25519.pub",
        ) from exc
    except FormatError as exc:
        private = "private key" in str(exc)
        problem = (
            f"{exc}; refusing to put it in an image"
            if private
            else (f"expected OpenSSH public keys (ssh-ed25519 AAAA...), but {exc}")
        )
        raise UserError(
            f"{where} {display_path(path)}: {problem}",
            hint=f"pass the public half instead ({display_path(path)}.pub)"
            if private
            else "generate one with ssh-keygen -t ed25519 and pass the .pub file",
        ) from exc


def check_service_packages(profile: Profile) -> None:
    for service in profile.services.values():
        if service.package_file is None:
            continue
        path = Path(service.package_file)
        where = f"{profile.sources[-1]}: services.{service.name}.package"
        if not path.is_file():
            raise UserError(f"{where}: {display_path(path)} does not exist")
        with path.open("rb") as handle:
            if handle.read(len(DEB_MAGIC)) != DEB_MAGIC:
                raise UserError(
                    f"{where}: {display_path(path)} is not a .deb package",
                    hint="build one with dpkg-deb --build, or drop the key",
                )


def check_creatable_dir(directory: Path, option: str) -> None:
    """`directory` exists and is writable, or could be created: without creating it."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"{option} {directory}: cannot write there ({display_path(probe)} is not a "
            "writable directory)",
            hint="choose a directory you can write, or fix its permissions",
        )


def create_output_dirs(directories: Sequence[tuple[Path, str]]) -> None:
    """Create the checked directories, and prove each takes files (after every check, so
    bad input creates nothing)."""
    for directory, option in directories:
        ensure_writable_dir(directory, option)


# --------------------------------------------------------------------------------------
# Output


def check_outputs(staged: Path) -> None:
    """The seed's artifact checks, by the same rules verify uses: files exist, bzImage is a
    Linux kernel of a sane size, initrd starts with a compressed cpio segment. A failed
    check fails the build."""
    kernel, initrd = staged / KERNEL, staged / INITRD
    for path in (kernel, initrd, staged / IPXE):
        if not path.is_file() or path.stat().st_size == 0:
            raise WorkError(f"build produced no {path.name}")
    try:
        check_kernel_size(kernel.stat().st_size, read_kernel_header(kernel))
    except FormatError as exc:
        raise WorkError(f"{KERNEL}: {exc}") from exc
    with initrd.open("rb") as handle:
        head = handle.read(8)
    if Compression.detect(head) in (None, Compression.NONE):
        raise WorkError(f"{INITRD} does not start with a compressed cpio segment")
    size = initrd.stat().st_size
    low, high = INITRD_SIZE_RANGE
    if not low <= size <= high:
        raise WorkError(f"{INITRD} is {size} bytes, outside the sane range {low}-{high}")
