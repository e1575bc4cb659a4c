"""The one model of a check and a report of checks, shared by `verify` and `boot-test`, and
their one rendering: a check has a name and passes, fails or is skipped (with a detail that
says what was seen, or why it was skipped); a report is ok when no check failed. Both
commands print the same table and the same JSON for their checks."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from rich.table import Table
from rich.text import Text


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"

    def style(self) -> str:
        return {Outcome.PASS: "green", Outcome.FAIL: "bold red", Outcome.SKIP: "yellow"}[self]

    def shown(self) -> str:
        """As a table shows it: a failure stands out."""
        return "FAIL" if self is Outcome.FAIL else str(self)


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    result: Outcome
    detail: str

    @property
    def passed(self) -> bool:
        return self.result is Outcome.PASS

    @property
    def failed(self) -> bool:
        return self.result is Outcome.FAIL


def passed(name: str, detail: str) -> Check:
    return Check(name=name, result=Outcome.PASS, detail=detail)


def failed(name: str, detail: str) -> Check:
    return Check(name=name, result=Outcome.FAIL, detail=detail)


def skipped(name: str, detail: str) -> Check:
    return Check(name=name, result=Outcome.SKIP, detail=detail)


def judged(name: str, ok: bool, detail: str) -> Check:
    """A check that passes or fails on one condition, with the same detail either way."""
    return Check(name=name, result=Outcome.PASS if ok else Outcome.FAIL, detail=detail)


class Report(BaseModel):
    """Checks in the order they ran; `ok` when none failed, first in the JSON (derived from
    the checks, never read back). A command's report adds its own fields (boot-test: boots,
    accelerator, memory, ...)."""

    model_config = ConfigDict(frozen=True)

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    @model_serializer(mode="wrap")
    def verdict_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields: dict[str, Any] = handler(self)
        return {"ok": self.ok, **fields}

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.failed]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def render_checks(title: str, checks: Iterable[Check]) -> Table:
    """The table both commands print: check, result, detail. Details are plain text (they
    quote files such as "[Service]", which rich would take for markup)."""
    table = Table(title=Text(title))
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in checks:
        result = Text(check.result.shown(), style=check.result.style())
        table.add_row(Text(check.name), result, Text(check.detail))
    return table


def count(items: Sized, noun: str) -> str:
    """`1 key`, `3 keys`: a number of things in a detail."""
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
