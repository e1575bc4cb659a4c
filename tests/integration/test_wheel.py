"""The built wheel, not the editable install: it holds every module, the stage-1 script and
the data plasmaboot reads (profiles, catalog, the Nix flake, under plasmaboot/_data), and
`plasmaboot` runs from it in a fresh environment. An editable install hides a package
left out of the wheel (an unanchored `build/` ignore line once dropped the then `build/`
package); this test does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src" / "plasmaboot"
DATA = ("profiles", "catalog", "nix", "flake.nix")  # pyproject's force-include


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from this checkout (hatchling from the dev extras: offline)."""
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(out), str(REPO)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stderr}\n(is hatchling installed? pip install -e '.[dev]')"
    (built,) = out.glob("plasmaboot-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (not editable). Its dependencies come from this
    environment's site-packages through a .pth line: nothing is downloaded, and the
    checkout's own source is not on the path (a .pth inside that directory is not read)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    host = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "host-dependencies.pth").write_text("".join(f"{path}\n" for path in host))
    return venv


def run_installed(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True, text=True, check=False, cwd=cwd, env=env,
    )  # fmt: skip


def test_the_wheel_holds_every_module_the_stage1_script_and_the_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"plasmaboot/{p.relative_to(SRC).as_posix()}" for p in SRC.rglob("*.py")}
    assert {"plasmaboot/image/pipeline.py", "plasmaboot/image/backends/debian/hook.py"} <= modules
    assert sorted(modules - names) == []
    assert "plasmaboot/image/backends/debian/stage1/init" in names
    assert "plasmaboot/py.typed" in names
    for top in DATA:
        source = REPO / top
        files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        expected = {f"plasmaboot/_data/{p.relative_to(REPO).as_posix()}" for p in files}
        assert expected and sorted(expected - names) == [], top


def test_no_ignore_line_can_drop_a_package() -> None:
    """An unanchored `build/` (or `image/`, ...) line in .gitignore would match a package
    folder at any depth, and hatchling leaves ignored files out of the wheel."""
    packages = {p.name for p in SRC.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    for line in (REPO / ".gitignore").read_text().splitlines():
        pattern = line.strip()
        if pattern and not pattern.startswith("#") and not pattern.startswith("/"):
            assert pattern.rstrip("/") not in packages, f".gitignore: {pattern!r} is unanchored"


def test_plasmaboot_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    where = run_installed(
        installed,
        "python",
        "-c",
        "import plasmaboot.paths as p, plasmaboot.image.backends.debian.backend as d; "
        "print(p.__file__); print(p.data_dir()); print(d.STAGE1_INIT.is_file())",
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    module, data, stage1 = where.stdout.splitlines()
    assert module.startswith(str(installed)) and data.startswith(str(installed))
    assert stage1 == "True"

    profiles = run_installed(installed, "plasmaboot", "profiles", "list", "--json", cwd=tmp_path)
    assert profiles.returncode == 0, profiles.stderr
    names = {entry["name"] for entry in json.loads(profiles.stdout)["profiles"]}
    assert {"base", "control-plane", "worker", "all-in-one"} <= names

    schema = run_installed(installed, "plasmaboot", "schema", cwd=tmp_path)
    assert schema.returncode == 0, schema.stderr
    assert "properties" in json.loads(schema.stdout)

    # the build command, the backend registry and the input checks load from the wheel too
    build = run_installed(
        installed, "plasmaboot", "build", "-p", "base", "--backend", "debian",
        "--mirror", "ftp://mirror/debian", "--output-dir", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 2, build.stderr
    assert build.stderr.startswith("error: --mirror: expected an http(s):// or file:// URL")
    assert not (tmp_path / "out").exists()
