"""The two kinds of failure plasmaboot reports: bad input (exit 2) and failed work (exit 1)."""

from __future__ import annotations


class PlasmabootError(Exception):
    """Base class: a message for people and an optional hint saying what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UserError(PlasmabootError):
    """The input is wrong (profile, argument, file): exit 2, nothing was written."""

    exit_code = 2


class WorkError(PlasmabootError):
    """The input was fine but the work failed (a tool, a check, a boot): exit 1."""

    exit_code = 1
