"""The contract between the Debian backend and its mmdebstrap hook: the plan survives the
trip through a file, and the outputs are read back whole, or refused naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from plasmaboot.errors import WorkError
from plasmaboot.image.backends.debian.contract import (
    ACCOUNT_FILES,
    OPTIONAL_OUTPUTS,
    HookOutputs,
    HookPlan,
    Output,
    UnitInstall,
)
from plasmaboot.profiles.store import ProfileStore

from conftest import make_kernel


def test_the_plan_round_trips(tmp_path: Path) -> None:
    profile = ProfileStore().resolve("control-plane", "debug")
    plan = HookPlan.for_profile(profile, squashfs_level=15)
    plan.write(tmp_path / "plan.json")
    again = HookPlan.read(tmp_path / "plan.json")
    assert again == plan
    assert again.include_modules == tuple(profile.kernel.include_modules)
    assert again.documentation == profile.system.documentation


def test_the_plan_holds_only_what_the_package_layer_depends_on() -> None:
    """A port, a sysctl, a key: none of them is in the plan, so none changes the layer."""
    profile = ProfileStore().resolve("control-plane")
    changed = profile.model_copy(update={"sysctl": {"vm.swappiness": 1}})
    assert HookPlan.for_profile(changed, 9) == HookPlan.for_profile(profile, 9)
    assert set(HookPlan.model_fields) == {
        "documentation",
        "include_modules",
        "exclude_modules",
        "squashfs_level",
        "squashfs_compression",
        "squashfs_block_size",
    }


@pytest.mark.parametrize("text", ["not json", '{"authorized_keys": "", "squashfs_level": 9}'])
def test_a_bad_plan_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(WorkError, match=r"hook plan .*plan\.json: not a valid plan"):
        HookPlan.read(tmp_path / "plan.json")


def written_outputs(directory: Path) -> HookOutputs:
    """Outputs as the hook leaves them, written with the hook's own methods."""
    outputs = HookOutputs(directory)
    directory.mkdir()
    make_kernel(outputs.path(Output.KERNEL))
    outputs.write_kernel_version("6.1.0-99-amd64")
    outputs.path(Output.ROOT_SQUASHFS).write_bytes(b"hsqs" + bytes(100))
    for name in ("loop.ko", "squashfs.ko"):
        (outputs.stage1_dir() / name).write_bytes(b"\x7fELF")
    outputs.write_stage1_order(["squashfs.ko", "loop.ko"])
    outputs.write_packages({"systemd": "252.30-1"})
    outputs.write_steps({"configure_ssh": 0.25})
    outputs.write_units({"ssh.service": UnitInstall(path="/usr/lib/systemd/system/ssh.service")})
    for name in ACCOUNT_FILES:
        (outputs.accounts_dir() / name).write_text(f"root:x:0:0 ({name})\n")
    return outputs


def test_the_outputs_round_trip(tmp_path: Path) -> None:
    result = written_outputs(tmp_path / "out").read()
    assert result.kernel == tmp_path / "out" / "bzImage"
    assert result.kernel_version == "6.1.0-99-amd64"
    assert result.root_squashfs.name == "root.squashfs"
    assert [p.name for p in result.stage1_modules] == ["squashfs.ko", "loop.ko"]  # load order
    assert result.stage1_order.read_text() == "squashfs.ko\nloop.ko\n"
    assert result.packages == {"systemd": "252.30-1"}
    assert result.steps == {"configure_ssh": 0.25}
    assert result.units["ssh.service"].path == "/usr/lib/systemd/system/ssh.service"
    assert result.accounts["gshadow"] == "root:x:0:0 (gshadow)\n"


@pytest.mark.parametrize("output", [o for o in Output if o not in OPTIONAL_OUTPUTS])
def test_a_missing_output_is_named(tmp_path: Path, output: Output) -> None:
    outputs = written_outputs(tmp_path / "out")
    path = outputs.path(output)
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(WorkError, match=f"the mmdebstrap hook left no {output}"):
        outputs.read()


def test_the_installed_initramfs_is_optional_but_never_empty(tmp_path: Path) -> None:
    """An older cache entry has none (install then makes one on the node); one the hook
    left must hold bytes."""
    outputs = written_outputs(tmp_path / "out")
    assert outputs.read().installed_initrd is None
    outputs.path(Output.INSTALLED_INITRD).write_bytes(b"")
    with pytest.raises(WorkError, match="hook's installed-initrd is not valid: it is empty"):
        outputs.read()
    outputs.path(Output.INSTALLED_INITRD).write_bytes(b"\x1f\x8b")
    assert outputs.read().installed_initrd == outputs.path(Output.INSTALLED_INITRD)


@pytest.mark.parametrize(
    ("output", "content", "problem"),
    [
        (Output.KERNEL, b"", "is empty"),
        (Output.KERNEL_VERSION, b"../../etc\n", "is not a kernel version"),
        (Output.STAGE1_ORDER, b"squashfs.ko\nzstd.ko\n", "lists zstd.ko, which is not there"),
        (Output.PACKAGES, b'{"systemd": 252}', "valid string"),
        (Output.STEPS, b"[1, 2]", "should be an object"),
    ],
)
def test_an_invalid_output_is_named(
    tmp_path: Path, output: Output, content: bytes, problem: str
) -> None:
    outputs = written_outputs(tmp_path / "out")
    outputs.path(output).write_bytes(content)
    with pytest.raises(WorkError) as caught:
        outputs.read()
    assert caught.value.message.startswith(f"the mmdebstrap hook's {output} is not valid: ")
    assert problem in caught.value.message


def test_sizes_are_optional_and_checked(tmp_path: Path) -> None:
    outputs = written_outputs(tmp_path / "out")
    assert outputs.read().package_sizes == {}  # an older hook's outputs still read
    outputs.write_sizes({"bash": 7 << 20}, {"drivers/net": 1 << 20})
    result = outputs.read()
    assert (result.package_sizes, result.module_sizes) == (
        {"bash": 7 << 20},
        {"drivers/net": 1 << 20},
    )
    (tmp_path / "out" / "sizes.json").write_text('{"packages": {"bash": "big"}}')
    with pytest.raises(WorkError, match=r"sizes\.json is not valid"):
        outputs.read()
