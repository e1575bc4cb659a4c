"""verify: the readers on artifacts made here with the real tools (mksquashfs, zstd, xz,
lz4, ssh-keygen), then whole sets, good and damaged, through the command line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from plasmaboot.artifacts.layout import HASHED_FILES, INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.manifest import Manifest, file_records, read_manifest, write_manifest
from plasmaboot.cli import main
from plasmaboot.formats.cpio import (
    Compression,
    Entry,
    SegmentError,
    concatenate,
    read_segments,
    write_cpio,
    write_segment,
)
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.verify import (
    FormatError,
    ImageTree,
    read_kernel_header,
    read_squashfs_superblock,
    read_sshd_config,
    verify_set,
)

from conftest import KERNEL_RELEASE, KERNEL_VERSION, CiImage, make_kernel

LABEL = "worker"
SSHD_MAIN = "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n"
SSHD_DROP_IN = (
    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
)
SERVICES = {"x": {"enable": True, "ports": {}}, "y": {"enable": False, "ports": {}}}


# --------------------------------------------------------------------------------------
# making artifacts


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A real ed25519 key pair from ssh-keygen: (public line, private key file text)."""
    key = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    return key.with_suffix(".pub").read_text(), key.read_text()


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


def make_initrd(directory: Path, squashfs: Path) -> Path:
    """As the build writes it: gzip stage-1 (with /init), then an uncompressed root squashfs."""
    stage1 = directory / "stage1.cpio.gz"
    write_segment(
        [
            Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\nexec switch_root\n"),
            Entry("lib/modules/squashfs.ko", stat.S_IFREG | 0o644, data=b"\x7fELF"),
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


def make_ipxe(directory: Path, label: str = LABEL) -> Path:
    (directory / IPXE).write_text(
        "#!ipxe\n"
        f"kernel ${{boot-server}}/{label}/bzImage initrd=initrd console=ttyS0 quiet\n"
        f"initrd --name initrd ${{boot-server}}/{label}/initrd\n"
        "boot\n"
    )
    return directory / IPXE


def rehash(directory: Path) -> None:
    """Record the files' current sizes and hashes, as if the build had made them so."""
    files = file_records(directory, HASHED_FILES)
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory).model_copy(update={"files": files})
    else:
        manifest = Manifest(
            profile=LABEL,
            label=LABEL,
            content_hash="0" * 16,
            cache_key="0" * 16,
            backend="debian",
            distro="bookworm",
            kernel_version=KERNEL_RELEASE,
            kernel_params=["console=ttyS0", "quiet"],
            files=files,
            packages={"openssh-server": "1:9.2p1-2"},
            services=SERVICES,
            steps={"squashfs": 1.0},
            built_at="2024-01-01T00:00:00Z",
            plasmaboot_version="0.1.0",
            resolved_profile=ProfileStore().resolve(LABEL),
        )
    write_manifest(directory, manifest)


TreeEdit = Callable[[Path], None]


@pytest.fixture
def make_set(tmp_path: Path, keypair: tuple[str, str]) -> Callable[..., Path]:
    """Build a complete artifact set; `edit` changes the root tree before it is squashed."""

    def build(edit: TreeEdit | None = None) -> Path:
        directory = tmp_path / "set"
        directory.mkdir()
        tree = make_tree(tmp_path / "tree", keypair[0])
        if edit is not None:
            edit(tree)
        make_initrd(directory, make_squashfs(tree, tmp_path / "root.squashfs"))
        make_kernel(directory / KERNEL)
        make_ipxe(directory)
        rehash(directory)
        return directory

    return build


def run_verify(directory: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """`plasmaboot verify DIR --json`: exit code, parsed JSON, stderr."""
    result = CliRunner().invoke(main, ["verify", str(directory), "--json", *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout), result.stderr


def failures(directory: Path) -> set[str]:
    code, report, stderr = run_verify(directory)
    failed = {c["name"] for c in report["checks"] if c["result"] == "fail"}
    assert code == (1 if failed else 0)
    assert report["ok"] is (not failed)
    for name in failed:
        assert name in stderr.replace("\n", "")
    return failed


# --------------------------------------------------------------------------------------
# readers


def test_kernel_header_of_a_crafted_bzimage(tmp_path: Path) -> None:
    header = read_kernel_header(make_kernel(tmp_path / KERNEL))
    assert header.version == KERNEL_VERSION
    assert header.protocol == (2, 15)
    assert header.loaded_high
    assert header.setup_size + header.payload_size == 1 << 20


def test_kernel_header_rejects_text_and_short_files(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.write_text("this is not a kernel\n" * 100)
    with pytest.raises(FormatError, match="HdrS"):
        read_kernel_header(text)
    short = tmp_path / "short"
    short.write_bytes(b"MZ")
    with pytest.raises(FormatError, match="too short"):
        read_kernel_header(short)


def test_kernel_header_needs_a_terminated_version_string(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path / KERNEL)
    data = bytearray(kernel.read_bytes())
    data[0x400:0x1000] = b"A" * (0x1000 - 0x400)
    del data[0x1000:]
    kernel.write_bytes(data)
    with pytest.raises(FormatError, match="not NUL-terminated"):
        read_kernel_header(kernel)


def lz4_legacy_segment(entries: list[Entry], path: Path) -> None:
    cpio = path.with_suffix(".cpio")
    with cpio.open("wb") as out:
        write_cpio(entries, out)
    subprocess.run(["lz4", "-q", "-l", "-f", cpio, path], check=True)


@pytest.mark.parametrize(
    "compression", [Compression.GZIP, Compression.XZ, Compression.ZSTD, Compression.LZ4]
)
def test_segments_split_and_list_each_compression(tmp_path: Path, compression: Compression) -> None:
    entries = [Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n" * 500)]
    first = tmp_path / "first"
    if compression is Compression.LZ4:
        lz4_legacy_segment(entries, first)
    else:
        write_segment(entries, first, compression)
    # zero padding after a compressed segment, which the kernel skips
    with first.open("ab") as out:
        out.write(b"\0" * 64)
    second = tmp_path / "second"
    write_segment([Entry("root.squashfs", stat.S_IFREG | 0o644, data=b"hsqs")], second,
                  Compression.NONE)  # fmt: skip
    concatenate([first, second], tmp_path / INITRD)

    segments = read_segments(tmp_path / INITRD)

    assert [s.compression for s in segments] == [compression, Compression.NONE]
    init = segments[0].members[0]
    assert init.name == "init" and init.is_executable
    assert segments[0].payload[init.offset : init.offset + init.size] == b"#!/bin/sh\n" * 500
    assert [m.name for m in segments[1].members] == ["root.squashfs"]
    assert segments[0].end <= segments[1].offset


def test_segments_of_a_truncated_initrd_fail(tmp_path: Path) -> None:
    squashfs = make_squashfs(make_tree(tmp_path / "tree", "ssh-ed25519 AAAA x\n"), tmp_path / "i")
    initrd = make_initrd(tmp_path, squashfs)
    data = initrd.read_bytes()
    initrd.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegmentError, match=r"truncated data of 'root\.squashfs'"):
        read_segments(initrd)
    initrd.write_bytes(data[:40])
    with pytest.raises(SegmentError, match="gzip segment at offset 0 is truncated"):
        read_segments(initrd)
    initrd.write_bytes(b"junk" + data)
    with pytest.raises(SegmentError, match="unknown segment format"):
        read_segments(initrd)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.XZ, Compression.ZSTD])
def test_segments_with_overwritten_bytes_fail(tmp_path: Path, compression: Compression) -> None:
    segment = tmp_path / "segment"
    entries = [Entry("init", stat.S_IFREG | 0o755, data=os.urandom(20000))]
    write_segment(entries, segment, compression)
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    segment.write_bytes(data)
    with pytest.raises(SegmentError, match=f"{compression} segment at offset 0"):
        read_segments(segment)


def test_squashfs_superblock_of_mksquashfs_output(tmp_path: Path) -> None:
    image = make_squashfs(make_tree(tmp_path / "tree", "k\n"), tmp_path / "img")
    data = image.read_bytes()
    superblock = read_squashfs_superblock(data, len(data))
    assert superblock.compressor == "zstd"
    assert superblock.version == (4, 0)
    assert superblock.bytes_used <= len(data) < superblock.bytes_used + 4096
    with pytest.raises(FormatError, match="bytes used"):
        read_squashfs_superblock(data, superblock.bytes_used - 1)
    with pytest.raises(FormatError, match="magic"):
        read_squashfs_superblock(b"hsqx" + data[4:], len(data))


def image_tree(tmp_path: Path, edit: TreeEdit) -> ImageTree:
    tree = make_tree(tmp_path / "tree", "k\n")
    edit(tree)
    image = make_squashfs(tree, tmp_path / "img")
    return ImageTree.read(image, tmp_path / "extracted")


def test_image_tree_resolves_links_inside_the_image(tmp_path: Path) -> None:
    def edit(tree: Path) -> None:
        (tree / "etc/shadow").rename(tree / "etc/shadow.real")
        (tree / "etc/shadow").symlink_to("/etc/shadow.real")
        (tree / "etc/ssh/loop").symlink_to("loop")

    tree = image_tree(tmp_path, edit)
    assert tree.resolve("etc/shadow") == "etc/shadow.real"
    assert tree.read_text("etc/shadow") == (tmp_path / "tree/etc/shadow.real").read_text()
    assert tree.resolve("etc/systemd/system/multi-user.target.wants/x.service") == (
        "etc/systemd/system/x.service"
    )
    assert tree.resolve("etc/ssh/loop") is None
    assert tree.glob("/etc/ssh/sshd_config.d/*.conf") == ["etc/ssh/sshd_config.d/plasmaboot.conf"]


def test_sshd_first_match_wins_across_includes(tmp_path: Path) -> None:
    def edit(tree: Path) -> None:
        # the drop-in is included first, so its "no" wins over the later "yes"
        (tree / "etc/ssh/sshd_config").write_text(SSHD_MAIN + "PasswordAuthentication yes\n")

    config = read_sshd_config(image_tree(tmp_path, edit))
    assert config.settings["passwordauthentication"] == "no"
    assert config.files == ["etc/ssh/sshd_config", "etc/ssh/sshd_config.d/plasmaboot.conf"]


def test_sshd_match_blocks_are_kept_apart(tmp_path: Path) -> None:
    def edit(tree: Path) -> None:
        (tree / "etc/ssh/sshd_config").write_text(
            SSHD_MAIN + "Match Address 10.0.0.0/8\n  PasswordAuthentication yes\n"
        )

    config = read_sshd_config(image_tree(tmp_path, edit))
    assert config.settings["passwordauthentication"] == "no"
    assert config.in_match == [("etc/ssh/sshd_config", "passwordauthentication", "yes")]


# --------------------------------------------------------------------------------------
# whole sets through the command line


def test_a_good_set_passes(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    code, report, _ = run_verify(directory)
    assert code == 0 and report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["result"] == "pass" for c in checks.values()), checks
    for name in (
        "manifest",
        "file:bzImage",
        "file:initrd",
        "file:netboot.ipxe",
        "bzImage.header",
        "bzImage.version",
        "bzImage.size",
        "initrd.segments",
        "initrd.init",
        "initrd.squashfs",
        "image.read",
        "image.private-keys",
        "image.host-keys",
        "image.root-password",
        "image.sshd",
        "image.authorized-keys",
        "image.service:x",
        "image.service:y",
        "ipxe.header",
        "ipxe.files",
        "ipxe.kernel-line",
        "ipxe.boot",
    ):
        assert name in checks
    assert "zstd" in checks["initrd.squashfs"]["detail"]
    assert checks["bzImage.version"]["detail"] == KERNEL_VERSION
    assert "enabled in multi-user.target.wants" in checks["image.service:x"]["detail"]
    assert "not enabled" in checks["image.service:y"]["detail"]


def test_the_installed_command_prints_a_table(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / IPXE).write_text("kernel http://elsewhere/bzImage\n")
    proc = subprocess.run(
        [sys.executable, "-m", "plasmaboot", "verify", str(directory)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "initrd.squashfs" in proc.stdout and "ipxe.header" in proc.stdout
    assert "checks failed: file:netboot.ipxe, ipxe.header, ipxe.files" in proc.stderr
    assert proc.stderr.count("\n") == 1


def truncate_initrd(directory: Path) -> None:
    data = (directory / INITRD).read_bytes()
    (directory / INITRD).write_bytes(data[: len(data) // 2])


def squashfs_offset(directory: Path) -> int:
    return (directory / INITRD).read_bytes().index(b"hsqs")


def overwrite(directory: Path, offset: int, data: bytes) -> None:
    with (directory / INITRD).open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def damage_superblock(directory: Path) -> None:
    overwrite(directory, squashfs_offset(directory), b"\xde\xad\xbe\xef" * 4)


def damage_tables(directory: Path) -> None:
    # the metadata (inodes, directories, ids) sits at the end of the image
    start = squashfs_offset(directory)
    data = (directory / INITRD).read_bytes()
    bytes_used = int.from_bytes(data[start + 40 : start + 48], "little")
    inode_table = int.from_bytes(data[start + 64 : start + 72], "little")
    overwrite(directory, start + inode_table, b"\xff" * (bytes_used - inode_table))


def text_kernel(directory: Path) -> None:
    (directory / KERNEL).write_text("#!/bin/sh\necho not a kernel\n" * 1000)


def remove_initrd(directory: Path) -> None:
    (directory / INITRD).unlink()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (truncate_initrd, {"initrd.segments"}),
        (damage_superblock, {"initrd.squashfs"}),
        (damage_tables, {"image.read"}),
        (text_kernel, {"bzImage.header"}),
        (remove_initrd, {"file:initrd", "initrd.segments", "ipxe.files"}),
    ],
)
def test_damage_is_a_named_failure(
    make_set: Callable[..., Path], damage: Callable[[Path], None], expected: set[str]
) -> None:
    directory = make_set()
    damage(directory)
    rehash(directory)  # so only the damage itself is reported, not the changed hash
    assert failures(directory) == expected


def test_a_wrong_hash_or_size_in_the_manifest_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][KERNEL]["sha256"] = "0" * 64
    manifest["files"][IPXE]["size"] += 1
    (directory / MANIFEST).write_text(json.dumps(manifest))
    assert failures(directory) == {"file:bzImage", "file:netboot.ipxe"}


def test_changed_bytes_without_a_new_manifest_fail_the_hash(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    damage_superblock(directory)
    assert failures(directory) == {"file:initrd", "initrd.squashfs"}


def test_a_manifest_that_does_not_parse_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    (directory / MANIFEST).write_text('{"label": 3}')
    code, report, _ = run_verify(directory)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and checks["manifest"]["result"] == "fail"
    assert checks["file:initrd"]["result"] == "skip"
    assert checks["image.sshd"]["result"] == "pass"


def add_private_key(tree: Path, private_key: str) -> None:
    write_files(tree, {"root/.ssh/id_ed25519": private_key})


def test_a_private_key_in_the_image_fails(
    make_set: Callable[..., Path], keypair: tuple[str, str]
) -> None:
    directory = make_set(lambda tree: add_private_key(tree, keypair[1]))
    assert failures(directory) == {"image.private-keys"}


def test_ssh_host_keys_in_the_image_fail(
    make_set: Callable[..., Path], keypair: tuple[str, str]
) -> None:
    def edit(tree: Path) -> None:
        write_files(
            tree,
            {
                "etc/ssh/ssh_host_ed25519_key": keypair[1],
                "etc/ssh/ssh_host_ed25519_key.pub": keypair[0],
            },
        )

    assert failures(make_set(edit)) == {"image.private-keys", "image.host-keys"}


@pytest.mark.parametrize(
    "shadow_root",
    ["root:$6$salt$hash:19000:0:99999:7:::", "root::19000:0:99999:7:::"],
)
def test_a_usable_root_password_fails(make_set: Callable[..., Path], shadow_root: str) -> None:
    directory = make_set(lambda tree: write_files(tree, {"etc/shadow": shadow_root + "\n"}))
    assert failures(directory) == {"image.root-password"}


def test_a_root_hash_in_passwd_fails(make_set: Callable[..., Path]) -> None:
    def edit(tree: Path) -> None:
        write_files(tree, {"etc/passwd": "root:$6$salt$hash:0:0:root:/root:/bin/bash\n"})

    assert failures(make_set(edit)) == {"image.root-password"}


@pytest.mark.parametrize(
    "drop_in",
    [
        SSHD_DROP_IN.replace("PasswordAuthentication no", "PasswordAuthentication yes"),
        SSHD_DROP_IN.replace("PasswordAuthentication no\n", ""),  # sshd's default is yes
        SSHD_DROP_IN.replace("prohibit-password", "yes"),
        SSHD_DROP_IN + "Match User root\n  PasswordAuthentication yes\n",
    ],
)
def test_sshd_that_allows_passwords_fails(make_set: Callable[..., Path], drop_in: str) -> None:
    def edit(tree: Path) -> None:
        write_files(tree, {"etc/ssh/sshd_config.d/plasmaboot.conf": drop_in})

    assert failures(make_set(edit)) == {"image.sshd"}


def test_missing_authorized_keys_fail(make_set: Callable[..., Path]) -> None:
    def edit(tree: Path) -> None:
        write_files(tree, {"root/.ssh/authorized_keys": "# no keys\nssh-ed25519 AAAAnotakey x\n"})

    assert failures(make_set(edit)) == {"image.authorized-keys"}


def test_services_must_be_enabled_as_the_manifest_says(make_set: Callable[..., Path]) -> None:
    def edit(tree: Path) -> None:
        wants = tree / "etc/systemd/system/multi-user.target.wants"
        (wants / "x.service").unlink()
        (wants / "y.service").symlink_to("/etc/systemd/system/y.service")

    assert failures(make_set(edit)) == {"image.service:x", "image.service:y"}


def test_a_missing_unit_fails(make_set: Callable[..., Path]) -> None:
    directory = make_set(lambda tree: (tree / "etc/systemd/system/y.service").unlink())
    assert failures(directory) == {"image.service:y"}


def test_ipxe_must_name_files_beside_it(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    make_ipxe(directory, label="other")
    (directory / IPXE).write_text(
        (directory / IPXE).read_text().replace("initrd=initrd ", "").replace("boot\n", "")
        + "initrd ${boot-server}/other/extra.img\n"
    )
    rehash(directory)
    code, report, _ = run_verify(directory)
    assert code == 1
    checks = {c["name"]: c for c in report["checks"]}
    assert {n for n, c in checks.items() if c["result"] == "fail"} == {
        "ipxe.files",
        "ipxe.kernel-line",
        "ipxe.boot",
    }
    assert "label 'other' is not 'worker'" in checks["ipxe.files"]["detail"]
    assert "extra.img is not beside it" in checks["ipxe.files"]["detail"]


def test_not_a_set_is_a_usage_error(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for path, message in [
        (tmp_path / "absent", "no such directory"),
        (tmp_path / "file", "not a directory"),
        (tmp_path / "empty", "no manifest.json"),
    ]:
        result = runner.invoke(main, ["verify", str(path)])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.stderr.split())
        assert result.stdout == ""


def test_verify_set_reads_a_published_symlink(make_set: Callable[..., Path]) -> None:
    directory = make_set()
    link = directory.parent / "current"
    link.symlink_to(directory.name)
    assert verify_set(link).ok


@pytest.mark.slow
def test_header_of_a_real_kernel(ci_image: CiImage) -> None:
    """Debian's kernel, as the session's CI image carries it."""
    kernel = ci_image.set_dir / "bzImage"
    header = read_kernel_header(kernel)
    assert header.protocol >= (2, 0) and header.loaded_high
    assert header.setup_size + header.payload_size <= kernel.stat().st_size
    assert header.version.split()[0][0].isdigit()
    assert header.version.split()[0] == read_manifest(ci_image.set_dir).kernel_version


# --------------------------------------------------------------------------------------
# a NixOS netboot set: the initrd holds /nix-store.squashfs, not a root filesystem

NIX_SYSTEM = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-worker-24.05.20240101.abcdef"


def make_nix_set(tmp_path: Path, init_system: str = NIX_SYSTEM) -> Path:
    """As nixpkgs' netbootRamdisk lays it out: stage-1 with /init, then a zstd segment with
    the store squashfs (store paths at its top, as make-squashfs.nix writes them)."""
    store = tmp_path / "store"
    write_files(store, {f"{NIX_SYSTEM}/init": "#!/bin/sh\nexec systemd\n", "registration": ""})
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
    make_ipxe(directory)
    rehash(directory)
    manifest = read_manifest(directory).model_copy(
        update={
            "backend": "nix",
            "distro": "nixos 24.05",
            "kernel_params": ["console=ttyS0", f"init=/nix/store/{init_system}/init"],
        }
    )
    write_manifest(directory, manifest)
    return directory


def test_a_nix_store_image_is_checked_for_its_init(tmp_path: Path) -> None:
    code, report, _ = run_verify(make_nix_set(tmp_path))
    assert code == 0, report
    results = {c["name"]: (c["result"], c["detail"]) for c in report["checks"]}
    assert results["initrd.squashfs"][0] == "pass"
    assert "/nix-store.squashfs: squashfs 4.0, zstd" in results["initrd.squashfs"][1]
    assert results["image.read"][0] == "pass"
    assert results["image.init"] == ("pass", f"/nix/store/{NIX_SYSTEM}/init is in the store image")
    # the root-filesystem checks do not apply to a store image, and say why
    for name in ("image.root-password", "image.sshd", "image.service:x"):
        assert results[name][0] == "skip"
        assert "activation script" in results[name][1]


def test_a_nix_set_whose_init_is_not_in_the_store_image_fails(tmp_path: Path) -> None:
    other = "zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-worker-24.05.20240101.abcdef"
    assert failures(make_nix_set(tmp_path, init_system=other)) == {"image.init"}


def test_an_initrd_without_either_squashfs_fails(tmp_path: Path) -> None:
    directory = make_nix_set(tmp_path)
    write_segment([Entry("init", stat.S_IFREG | 0o755, data=b"#!/bin/sh\n")],
                  directory / INITRD, Compression.GZIP)  # fmt: skip
    rehash(directory)
    code, report, _ = run_verify(directory)
    assert code == 1
    (squashfs,) = [c for c in report["checks"] if c["name"] == "initrd.squashfs"]
    assert squashfs["detail"] == "no /root.squashfs or /nix-store.squashfs in any segment"
