"""Enabled services on a booted node (slow): a profile enables flashdns on its catalog port
53 (below 1024: its unit gets CAP_NET_BIND_SERVICE, and resolved's stub listener gives the
port up) and iam on 8080, each from a stand-in package that really binds its ports. The
image is built by the real Debian backend and PXE-booted by `plasmaboot boot-test`, whose
checks say both services are active and that nothing but sshd and they listen."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from conftest import make_keypair, make_service_deb, plasmaboot

pytestmark = pytest.mark.slow

PROFILE = "dns-node"


def write_profile(directory: Path, public_key: Path, debs: list[Path]) -> None:
    (directory / "keys").mkdir()
    (directory / "keys/ci.pub").write_bytes(public_key.read_bytes())
    (directory / "debs").mkdir()
    for deb in debs:
        (directory / "debs" / deb.name).write_bytes(deb.read_bytes())
    (directory / f"{PROFILE}.toml").write_text(
        textwrap.dedent(
            f"""\
            description = "CI: a DNS service on port 53 and an unprivileged one"
            extends = "control-plane"

            [ssh]
            authorized_keys = ["keys/ci.pub"]

            [services.flashdns]
            enable = true
            package = "debs/{debs[0].name}"

            [services.iam]
            enable = true
            package = "debs/{debs[1].name}"
            """
        )
    )


def test_a_dns_service_and_an_unprivileged_one_are_active_and_listening(tmp_path: Path) -> None:
    identity = make_keypair(tmp_path)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    debs = [make_service_deb(tmp_path, "flashdns"), make_service_deb(tmp_path, "iam")]
    write_profile(profiles, identity.with_suffix(".pub"), debs)
    artifacts = tmp_path / "artifacts"
    cache = os.environ.get("PLASMABOOT_TEST_CACHE") or str(tmp_path / "cache")
    common = ["--profiles-dir", str(profiles)]
    build = plasmaboot(
        *common,
        "build",
        "--profile",
        PROFILE,
        "--backend",
        "debian",
        "--output-dir",
        str(artifacts),
        env={"PLASMABOOT_CACHE": cache},
    )
    assert build.returncode == 0, build.stderr[-4000:]
    report_path = tmp_path / "report.json"
    boot = plasmaboot(
        *common,
        "boot-test",
        PROFILE,
        "--artifacts",
        str(artifacts),
        "--identity",
        str(identity),
        "--memory",
        "1024",
        "--report",
        str(report_path),
    )
    report = json.loads(report_path.read_text())
    results = {c["name"]: (c["result"], c["detail"]) for c in report["checks"]}
    failed = {name: row for name, row in results.items() if row[0] != "pass"}
    assert boot.returncode == 0, f"{failed}\n{boot.stderr[-3000:]}"
    for service in ("flashdns", "iam"):
        result, detail = results[f"service {service}"]
        assert result == "pass" and "ActiveState=active" in detail, detail
    result, detail = results["listening sockets"]
    assert result == "pass"
    assert detail == "sshd 22/tcp, flashdns 53/tcp, flashdns 53/udp, iam 8080/tcp, iam 8080/udp"
    assert results["no failed units"][0] == "pass"
