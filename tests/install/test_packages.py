"""install.packages: which .debs the node needs, from control fields, offline."""

from __future__ import annotations

import io
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from plasmaboot.errors import UserError, WorkError
from plasmaboot.install.debian import UNPACK_DEBS
from plasmaboot.install.packages import (
    Deb,
    ar_members,
    closure,
    parse_control,
    parse_relations,
    unpacked_debs,
)


def deb(name: str, depends: str = "", provides: str = "") -> Deb:
    return Deb(
        Path(f"{name}_1_amd64.deb"),
        name,
        parse_relations(depends),
        tuple(g[0] for g in parse_relations(provides)),
    )


def test_relations_keep_names_and_alternatives() -> None:
    assert parse_relations("a (>= 1.2), b | c:any, d [amd64], ") == (("a",), ("b", "c"), ("d",))


def test_control_fields_are_read_with_continuations() -> None:
    text = (
        "Package: grub-common\nVersion: 2.06\nDepends: libc6 (>= 2.34),\n libfuse3-3\n"
        "Pre-Depends: dpkg\n"
    )
    parsed = parse_control(Path("x.deb"), text)
    assert parsed.package == "grub-common"
    assert parsed.depends == (("dpkg",), ("libc6",), ("libfuse3-3",))


def test_the_closure_skips_what_the_node_has_and_orders_dependencies_first() -> None:
    available = {
        d.package: d
        for d in (
            deb("grub-pc-bin", "grub-common"),
            deb("grub-common", "libc6, libfuse3-3 | fuse-alt, gettext-base"),
            deb("libfuse3-3", "libc6"),
            deb("gettext-base"),
            deb("libc6"),
        )
    }
    chosen = [d.package for d in closure(["grub-pc-bin"], available, {"libc6", "gettext-base"})]
    assert chosen == ["libfuse3-3", "grub-common", "grub-pc-bin"]


def test_a_virtual_package_is_satisfied_by_its_provider() -> None:
    available = {d.package: d for d in (deb("a", "awk"), deb("mawk", provides="awk"))}
    assert [d.package for d in closure(["a"], available, set())] == ["mawk", "a"]
    assert [d.package for d in closure(["a"], available, {"awk"})] == ["a"]


def test_what_neither_side_has_is_named() -> None:
    with pytest.raises(UserError) as caught:
        closure(["grub-pc-bin"], {"grub-pc-bin": deb("grub-pc-bin", "grub-common")}, set())
    assert caught.value.message.startswith("the deb cache lacks grub-common")
    assert caught.value.hint is not None and "--fetch-debs" in caught.value.hint


def test_the_node_needs_the_tools_of_the_layouts_filesystems() -> None:
    from plasmaboot.install.layout import load_layout
    from plasmaboot.install.packages import node_packages

    assert node_packages(load_layout(Path("layouts/default.toml"))) == [
        "gdisk", "parted", "dosfstools", "e2fsprogs",
    ]  # fmt: skip
    assert "xfsprogs" in node_packages(load_layout(Path("layouts/control-plane.toml")))


def test_the_installed_system_gets_the_xfs_tools_the_image_lacks() -> None:
    """base leaves xfsprogs out of the netboot image (python3 and libicu come with it): an
    XFS layout gets it on the disk too, beside the boot loader; other layouts do not."""
    from plasmaboot.install.layout import load_layout
    from plasmaboot.install.packages import BOOT_PACKAGES, FETCHED, system_packages

    xfs = system_packages(load_layout(Path("layouts/control-plane.toml")))
    assert xfs == [*BOOT_PACKAGES, "xfsprogs"]
    assert system_packages(load_layout(Path("layouts/default.toml"))) == list(BOOT_PACKAGES)
    assert "xfsprogs" in FETCHED  # --fetch-debs brings it and its dependencies


def test_the_kernel_config_comes_from_the_kernels_deb(tmp_path: Path) -> None:
    import subprocess

    from plasmaboot.install.packages import kernel_config

    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: linux-image-6.1.0-9-amd64\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: t <t@t.invalid>\nDescription: t\n"
    )
    (root / "boot/config-6.1.0-9-amd64").write_text("CONFIG_RD_GZIP=y\n")
    deb = tmp_path / "linux-image-6.1.0-9-amd64_1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", root, deb], check=True, capture_output=True
    )
    available = {"linux-image-6.1.0-9-amd64": Deb(deb, "linux-image-6.1.0-9-amd64", (), ())}
    assert kernel_config(available, "6.1.0-9-amd64") == b"CONFIG_RD_GZIP=y\n"
    with pytest.raises(UserError, match=r"lacks linux-image-6\.1\.0-10-amd64"):
        kernel_config(available, "6.1.0-10-amd64")


def test_debs_are_unpacked_into_one_tar_stream(tmp_path: Path) -> None:
    """Each package's files, one data tar after the other: `tar -x -i` unpacks all of them."""
    debs = []
    for name in ("alpha", "beta"):
        root = tmp_path / name
        (root / "DEBIAN").mkdir(parents=True)
        (root / f"usr/share/{name}").mkdir(parents=True)
        (root / f"usr/share/{name}/file").write_text(f"{name}\n")
        if name == "alpha":
            (root / "bin").mkdir()
            (root / "bin/alpha").write_text("a\n")
        (root / "DEBIAN/control").write_text(
            f"Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t.invalid>\n"
            "Description: test\n"
        )
        path = tmp_path / f"{name}_1_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(root), str(path)],
            check=True,
            capture_output=True,
        )
        debs.append(Deb(path, name, (), ()))
    target = tmp_path / "target"
    (target / "usr/bin").mkdir(parents=True)
    (target / "bin").symlink_to("usr/bin")  # merged /usr, as on every Debian image
    target.chmod(0o755)
    subprocess.run(["tar", *UNPACK_DEBS, "-C", str(target)], input=unpacked_debs(debs), check=True)
    # the installed root keeps its mode (GNU tar left it 0700 after a package's "./" entry:
    # no service user could reach anything, the network never came up)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert (target / "usr/share/alpha/file").read_text() == "alpha\n"
    assert (target / "usr/share/beta/file").read_text() == "beta\n"
    # a package's ./bin/ lands in usr/bin through the link, which stays a link
    assert (target / "bin").is_symlink() and (target / "usr/bin/alpha").read_text() == "a\n"


def forged_deb(directory: Path, member: str) -> Path:
    """A .deb (ar: debian-binary, control.tar.gz, data.tar) whose data holds `member`:
    dpkg-deb --build never writes one, a damaged or forged cache entry may."""
    control, data = io.BytesIO(), io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:gz") as archive:
        body = b"Package: forged\nVersion: 1\nArchitecture: all\nDescription: x\n"
        info = tarfile.TarInfo("./control")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    with tarfile.open(fileobj=data, mode="w") as archive:
        info = tarfile.TarInfo(member)
        info.size = 2
        archive.addfile(info, io.BytesIO(b"x\n"))
    (directory / "debian-binary").write_bytes(b"2.0\n")
    (directory / "control.tar.gz").write_bytes(control.getvalue())
    (directory / "data.tar").write_bytes(data.getvalue())
    path = directory / "forged_1_all.deb"
    subprocess.run(
        ["ar", "rc", str(path), "debian-binary", "control.tar.gz", "data.tar"],
        cwd=directory,
        check=True,
    )
    return path


@pytest.mark.parametrize("member", ["./../../etc/cron.d/x", "/etc/shadow", "usr/../../x"])
def test_a_deb_member_that_leaves_the_tree_is_refused(tmp_path: Path, member: str) -> None:
    path = forged_deb(tmp_path, member)
    with pytest.raises(WorkError, match=r"forged_1_all\.deb: the member .* leaves the package"):
        unpacked_debs([Deb(path, "forged", (), ())])


def built_deb(directory: Path, package: str, control: str, *compression: str) -> Path:
    """A .deb made by dpkg-deb (-Z: its data's compression; the control's follows)."""
    root = directory / package
    (root / "DEBIAN").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1\nArchitecture: amd64\n{control}"
        "Maintainer: t <t@t.invalid>\nDescription: t\n more text\n"
    )
    (root / "boot/config-6.1.0-9-amd64").write_text("CONFIG_RD_GZIP=y\n")
    path = directory / f"{package}_1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", *compression, "-b", root, path],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("compression", [(), ("-Zgzip",), ("-Znone",), ("-Zzstd",)])
def test_control_fields_read_here_are_dpkg_debs(tmp_path: Path, compression: tuple[str]) -> None:
    """Read in-process (xz, gzip, none) or by dpkg-deb (zstd, which tarfile lacks): the
    same Deb either way, and the kernel config from the data tar's start."""
    from plasmaboot.install.packages import DEB_FIELDS, control_text, kernel_config, read_debs

    fields = "Depends: libc6 (>= 2.36), a | b\nPre-Depends: dpkg\nProvides: c (= 1)\n"
    path = built_deb(tmp_path, "linux-image-6.1.0-9-amd64", fields, *compression)
    text = subprocess.run(
        ["dpkg-deb", "-f", path, *DEB_FIELDS], capture_output=True, text=True, check=True
    ).stdout
    expected = parse_control(path, text)
    assert expected.depends == (("dpkg",), ("libc6",), ("a", "b")) and expected.provides == ("c",)
    assert read_debs(tmp_path) == {expected.package: expected}
    assert (control_text(path) is None) == (compression == ("-Zzstd",))
    assert kernel_config(read_debs(tmp_path), "6.1.0-9-amd64") == b"CONFIG_RD_GZIP=y\n"


def test_a_file_that_is_no_deb_is_left_to_dpkg_deb(tmp_path: Path) -> None:
    from plasmaboot.install.packages import control_text

    (tmp_path / "x.deb").write_bytes(b"!<arch>\nnot an ar header at all")
    (tmp_path / "y.deb").write_bytes(b"plain text")
    assert control_text(tmp_path / "x.deb") is None
    assert control_text(tmp_path / "y.deb") is None


@pytest.mark.parametrize("size", [b"-60", b"+1", b"1e3", b"99999999", b""])
def test_an_ar_member_size_that_is_not_a_size_inside_the_file_is_no_archive(
    tmp_path: Path, size: bytes
) -> None:
    # "-60" would seek back onto the same header: an endless loop before this check
    header = b"debian-binary/  " + b"0" * 32 + size.ljust(10) + b"`\n"
    path = tmp_path / "forged.deb"
    path.write_bytes(b"!<arch>\n" + header + b"2.0\n")
    assert len(header) == 60
    assert ar_members(path) == {}
    good = tmp_path / "good.deb"
    good.write_bytes(b"!<arch>\n" + header[:48] + b"4".ljust(10) + b"`\n" + b"2.0\n")
    assert ar_members(good) == {"debian-binary": (68, 4)}
