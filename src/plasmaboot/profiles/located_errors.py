"""Errors for people from data files: a TOML syntax error or a pydantic validation error
becomes one line naming the file, the key path, what was expected and what was found
(`profiles/edge.toml: network.mtu: expected a number at most 9216, got 10000`).

Nothing here knows about profiles: any TOML file checked against a pydantic model (profiles
today; machine inventories and disk layouts next) reports its errors this way.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from plasmaboot.errors import UserError

Model = TypeVar("Model", bound=BaseModel)

ERROR_TEMPLATES: dict[str, str] = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
}


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


MAX_SHOWN = 200  # characters of a value an error line shows


def render_value(value: object) -> str:
    """A value as it would be written in a file: `"abc"`, `5`, `true`, `["a"]`; a long one
    cut at MAX_SHOWN characters, so an error stays one readable line."""
    text = json.dumps(value, default=str)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


def suggestion(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_loc(loc: Iterable[object]) -> str:
    """A key path as written in the file: `services.iam.port`, `kernel.params[1]`,
    `sysctl."Net..ipv4"`."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            text = str(part)
            parts.append(text if re.match(r"^[A-Za-z0-9_-]+$", text) else render_value(text))
    return ".".join(parts)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's data; unreadable files, bad UTF-8 and bad syntax are UserErrors naming
    the file and the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{display_path(path)}: cannot read: {exc.strerror}") from exc
    return parse_toml(raw, path)


def parse_toml(raw: bytes, path: Path) -> dict[str, Any]:
    """The data of a TOML file's bytes (already read from `path`, which errors name)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{display_path(path)}: line {line}: expected UTF-8 text, "
            f"got the byte {raw[exc.start]:#04x}"
        ) from exc
    try:
        return tomllib.loads(text)
    except RecursionError as exc:  # tomllib recurses into nested arrays and inline tables
        raise UserError(
            f"{display_path(path)}: invalid TOML: arrays or inline tables nested too deeply",
            hint="a plasmaboot file nests a few levels at most; check the file",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        if at:
            position = f"line {at[1]}, column {at[2]}"
            message = message[: at.start()]
        else:  # "(at end of document)": the problem shows at the last line
            position = f"line {max(text.count(chr(10)) + (not text.endswith(chr(10))), 1)}"
            message = message.removesuffix(" (at end of document)") + " at the end of the file"
        raise UserError(
            f"{display_path(path)}: {position}: invalid TOML: {message}",
            hint="fix the syntax there (TOML reference: https://toml.io)",
        ) from exc


def validate_data(
    model: type[Model], data: Any, where: str, expectations: Mapping[str, str] = {}
) -> Model:
    """`data` checked against `model`; the first problem is a UserError `where: key: ...`.

    `expectations` says in words what a regex pattern of the model means, for messages
    ("expected a size like 512M, got ...").
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = describe_validation_error(exc, data, model, expectations)
        raise UserError(f"{where}: {error.message}", hint=error.hint) from exc


def describe_validation_error(
    exc: ValidationError,
    data: Any,
    model: type[BaseModel],
    expectations: Mapping[str, str] = {},
) -> UserError:
    """The most specific problem of a validation error, as `key.path: expected ..., got ...`.

    Of the errors under the first bad key, the deepest wins; a value that fails every member
    of a union (a name or a list of names) gets all of their expectations.
    """
    located = [(data_loc(error["loc"], data), error) for error in exc.errors()]
    top = located[0][0][:1]
    under_top = [(loc, error) for loc, error in located if loc[:1] == top]
    deepest = max(len(loc) for loc, _ in under_top)
    candidates = [(loc, error) for loc, error in under_top if len(loc) == deepest]
    loc, error = next(
        ((loc, e) for loc, e in candidates if e["type"] not in ERROR_TEMPLATES), candidates[0]
    )
    where = format_loc(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = field_names_at(model, loc[:-1])
        return UserError(
            f"{where}: unknown key{suggestion(str(loc[-1]), allowed)}",
            hint=f"known keys here: {', '.join(allowed)}",
        )
    got = f", got {render_value(error.get('input'))}"
    ctx = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return UserError(f"{where}: expected {expectations.get(pattern, pattern)}{got}")
    if kind in {"greater_than_equal", "less_than_equal"}:
        bound = ctx.get("ge", ctx.get("le"))
        relation = "at least" if kind == "greater_than_equal" else "at most"
        return UserError(f"{where}: expected a number {relation} {bound}{got}")
    if kind in ERROR_TEMPLATES:
        expected = dict.fromkeys(
            ERROR_TEMPLATES[e["type"]].removeprefix("expected ")
            for _, e in candidates
            if e["type"] in ERROR_TEMPLATES
        )
        return UserError(f"{where}: expected {' or '.join(expected)}{got}")
    return UserError(f"{where}: {error['msg'].lower()}{got}")


def data_loc(loc: Iterable[object], data: Any) -> tuple[object, ...]:
    """The part of a pydantic error location that is a real path in the file's data.

    pydantic adds names of union members (`constrained-str`, `int`) and `[key]` (an invalid
    dict key) to locations; they are not keys of the file, so they are dropped.
    """
    path: list[object] = []
    current = data
    for part in loc:
        in_table = isinstance(current, dict) and isinstance(part, str) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_table or in_list:
            current = current[part]
            path.append(part)
    return tuple(path)


def field_names_at(model: type[BaseModel], loc: tuple[object, ...]) -> list[str]:
    """The keys allowed at `loc` inside `model` (for close-match suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not isinstance(current, type):
            continue
        if not issubclass(current, BaseModel):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            # a dict key (e.g. a service name): descend into the value type
            continue
        current = unwrap_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside `X`, `X | None` or `dict[str, X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", None) or ():
        found = unwrap_model(arg)
        if found is not None:
            return found
    return None
