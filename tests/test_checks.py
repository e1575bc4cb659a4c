"""plasmaboot.checks: the one check and report model verify and boot-test share, its JSON
and its table."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from rich.console import Console

from plasmaboot.checks import (
    Check,
    Outcome,
    Report,
    count,
    failed,
    judged,
    passed,
    render_checks,
    skipped,
)


def test_a_report_is_ok_until_a_check_fails() -> None:
    checks = (passed("a", "fine"), skipped("b", "does not apply"))
    assert Report(checks=checks).ok
    report = Report(checks=(*checks, failed("c", "broken")))
    assert not report.ok
    assert [c.name for c in report.failures] == ["c"]
    assert Report(checks=()).ok


def test_the_json_shape_is_ok_and_checks_of_name_result_detail() -> None:
    report = Report(checks=(passed("a", "fine"), failed("b", "broken"), skipped("c", "n/a")))
    data = json.loads(report.to_json())
    assert data == {
        "checks": [
            {"name": "a", "result": "pass", "detail": "fine"},
            {"name": "b", "result": "fail", "detail": "broken"},
            {"name": "c", "result": "skip", "detail": "n/a"},
        ],
        "ok": False,
    }
    assert list(data) == ["ok", "checks"]  # the verdict first
    assert Report.model_validate_json(report.to_json()) == report  # `ok` is derived, not read


def test_checks_and_reports_are_frozen_and_validated() -> None:
    check = passed("a", "fine")
    with pytest.raises(ValidationError):
        check.result = Outcome.FAIL  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Check.model_validate({"name": "a", "result": "passed", "detail": ""})
    report = Report(checks=(check,))
    with pytest.raises(ValidationError):
        report.checks = ()  # type: ignore[misc]


def test_judged_passes_or_fails_on_its_condition() -> None:
    assert judged("a", True, "seen").result is Outcome.PASS
    assert judged("a", False, "seen") == failed("a", "seen")
    assert passed("a", "x").passed and not passed("a", "x").failed
    assert not skipped("a", "x").passed and not skipped("a", "x").failed


def test_the_table_shows_each_check_and_its_result() -> None:
    console = Console(record=True, width=120)
    checks = [passed("kernel command line", "console=ttyS0"), failed("unit", "[Service] bad")]
    console.print(render_checks("verify artifacts/worker", [*checks, skipped("later", "n/a")]))
    text = console.export_text()
    assert "verify artifacts/worker" in text
    assert "kernel command line" in text and "pass" in text
    assert "FAIL" in text and "[Service] bad" in text  # details are text, not markup
    assert "skip" in text


def test_count_says_one_or_many() -> None:
    assert count(["k"], "key") == "1 key"
    assert count([], "key") == "0 keys"
    assert count("abc", "member") == "3 members"
