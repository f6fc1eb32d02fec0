"""Validate a decoded scenario file (the dict ``tomllib`` gives) into a :class:`Scenario`.

Everything is checked here, at load time, so a reply never fails half-way through a
conversation: unknown keys, wrong types, bad regexes, two matchers in one rule, a step
with neither text nor tool, ``input`` without ``tool``, unknown template placeholders, a
check without ``say``. Each problem is a :class:`ScenarioError` naming the file, the rule
or check (1-based, with its name), the key, and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emulator.model.schema import (
    DEFAULT_CHUNK_CHARS,
    ApiError,
    Check,
    JsonValue,
    Rule,
    Scenario,
    ScenarioError,
    Step,
)
from emulator.model.templates import TemplateError, check_template

MAX_DELAY_MS = 600_000
"""Longest ``delay_ms`` a step may ask for: the CLI's default API timeout."""

MAX_CHUNK_CHARS = 100_000
"""Largest ``chunk_chars`` a step may ask for."""
MAX_CHUNK_DELAY_MS = 10_000
"""Longest pause between two deltas a step may ask for."""

MAX_INPUT_DEPTH = 32
"""Deepest nesting of tables and arrays a tool ``input`` may have."""

_TOP_KEYS = ("rule", "check")
_RULE_KEYS = ("name", "match", "contains", "turn", "step")
_MATCHERS = ("match", "contains", "turn")
_STEP_KEYS = ("text", "tool", "input", "delay_ms", "chunk_chars", "chunk_delay_ms", "error")
_ERROR_KEYS = ("status", "type", "message", "should_retry")
_CHECK_KEYS = ("name", "say", "expect_tools", "expect_reply")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
"""The Anthropic error ``type`` a step's ``error`` gets by default for each status."""


def parse_scenario(data: Mapping[str, Any], path: Path) -> Scenario:
    """Validate decoded TOML ``data`` read from ``path``; raise :class:`ScenarioError`."""
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{path}: must be a TOML document of [[rule]] and [[check]] tables.")
    _check_keys(data, _TOP_KEYS, f"{path}", "top-level key")
    rules = tuple(
        _parse_rule(table, path, f"rule {n}")
        for n, table in enumerate(_tables(data, "rule", f"{path}", "[[rule]]"), start=1)
    )
    checks = tuple(
        _parse_check(table, path, f"check {n}")
        for n, table in enumerate(_tables(data, "check", f"{path}", "[[check]]"), start=1)
    )
    return Scenario(path=path, rules=rules, checks=checks)


def _tables(data: Mapping[str, Any], key: str, where: str, written: str) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise ScenarioError(
            f'{where}: "{key}" must be an array of tables, written {written}; '
            f"got {_describe(value)}."
        )
    return value


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str, what: str) -> None:
    for key in table:
        if key not in allowed:
            raise ScenarioError(
                f'{where}: unknown {what} "{key}"; allowed keys are {", ".join(allowed)}.'
            )


def _where(table: Mapping[str, Any], path: Path, label: str) -> str:
    name = table.get("name")
    return (
        f"{path}: {label} ({_quote(name)})"
        if isinstance(name, str) and name
        else f"{path}: {label}"
    )


def _parse_rule(table: Mapping[str, Any], path: Path, label: str) -> Rule:
    where = _where(table, path, label)
    _check_keys(table, _RULE_KEYS, where, "key")
    name = _optional_str(table, "name", where) or label
    present = [key for key in _MATCHERS if key in table]
    if len(present) > 1:
        raise ScenarioError(
            f"{where}: has both {' and '.join(repr(k) for k in present)}; a rule takes at most "
            f"one of {', '.join(_MATCHERS)} (none makes it a fallback that always matches)."
        )
    pattern = _optional_str(table, "match", where)
    regex = None
    if pattern is not None:
        try:
            regex = re.compile(pattern, re.IGNORECASE)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise ScenarioError(
                f'{where}: "match" is not a valid Python regular expression ({exc}); '
                "escape backslashes in TOML (\"\\\\d\") or use a literal string ('\\d')."
            ) from exc
    contains = _optional_str(table, "contains", where)
    if contains == "":
        raise ScenarioError(f'{where}: "contains" must not be empty; drop it to match everything.')
    turn = _optional_int(table, "turn", where, low=1, high=None)
    steps_data = _tables(table, "step", where, "[[rule.step]]")
    if not steps_data:
        raise ScenarioError(f"{where}: has no steps; add at least one [[rule.step]] table.")
    steps = tuple(
        _parse_step(step, f"{where}, step {n}") for n, step in enumerate(steps_data, start=1)
    )
    return Rule(
        name=name,
        steps=steps,
        match=regex,
        contains=contains,
        turn=turn,
        origin=where,
    )


def _parse_step(table: Mapping[str, Any], where: str) -> Step:
    _check_keys(table, _STEP_KEYS, where, "key")
    text = _optional_str(table, "text", where)
    tool = _optional_str(table, "tool", where)
    if tool == "":
        raise ScenarioError(f'{where}: "tool" must name a tool, e.g. "Bash" or "Skill".')
    error = None
    if "error" in table:
        if text is not None or tool is not None or "input" in table:
            raise ScenarioError(
                f'{where}: a step with "error" replies with that error only; '
                'move "text", "tool" and "input" to a step of their own.'
            )
        error = _parse_error(table["error"], f"{where}: error")
    elif text is None and tool is None:
        raise ScenarioError(f'{where}: has neither "text" nor "tool"; give it at least one.')
    if "input" in table and tool is None:
        raise ScenarioError(f'{where}: has "input" but no "tool"; add tool = "<ToolName>".')
    raw_input = table.get("input", {})
    if not isinstance(raw_input, Mapping):
        raise ScenarioError(
            f'{where}: "input" must be a table, e.g. input = {{ command = "ls" }}; '
            f"got {_describe(raw_input)}."
        )
    if text is not None:
        _check_template(text, where, "text")
    tool_input = {str(k): _json_value(v, where, f"input.{k}", 1) for k, v in raw_input.items()}
    return Step(
        text=text,
        tool=tool,
        input=tool_input,
        delay_ms=_optional_int(table, "delay_ms", where, low=0, high=MAX_DELAY_MS) or 0,
        chunk_chars=_optional_int(table, "chunk_chars", where, low=1, high=MAX_CHUNK_CHARS)
        or DEFAULT_CHUNK_CHARS,
        chunk_delay_ms=_optional_int(table, "chunk_delay_ms", where, low=0, high=MAX_CHUNK_DELAY_MS)
        or 0,
        error=error,
    )


def _parse_error(value: object, where: str) -> ApiError:
    if not isinstance(value, Mapping):
        raise ScenarioError(
            f"{where}: must be a table, e.g. "
            f'error = {{ status = 529, type = "overloaded_error" }}; got {_describe(value)}.'
        )
    _check_keys(value, _ERROR_KEYS, where, "key")
    status = _optional_int(value, "status", where, low=400, high=599)
    if status is None:
        raise ScenarioError(f"{where}: needs a status, e.g. status = 529.")
    kind = _optional_str(value, "type", where) or ERROR_TYPES.get(status, "api_error")
    message = _optional_str(value, "message", where) or f"Emulated {kind} ({status})."
    retry = value.get("should_retry", False)
    if not isinstance(retry, bool):
        raise ScenarioError(
            f'{where}: "should_retry" must be true or false, not {_describe(retry)}.'
        )
    return ApiError(status=status, type=kind, message=message, should_retry=retry)


def _parse_check(table: Mapping[str, Any], path: Path, label: str) -> Check:
    where = _where(table, path, label)
    _check_keys(table, _CHECK_KEYS, where, "key")
    name = _optional_str(table, "name", where) or label
    say = _optional_str(table, "say", where)
    if not say:
        raise ScenarioError(f'{where}: needs "say", the message to send, e.g. say = "hello".')
    reply = _optional_str(table, "expect_reply", where)
    tools = table.get("expect_tools")
    if tools is None:
        return Check(name=name, say=say, expect_tools=None, expect_reply=reply)
    if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
        raise ScenarioError(
            f'{where}: "expect_tools" must be an array of tool names, e.g. ["Skill", "Bash"]; '
            f"got {_describe(tools)}."
        )
    return Check(
        name=name,
        say=say,
        expect_tools=tuple(tools),
        expect_reply=reply,
    )


def _json_value(value: object, where: str, key: str, depth: int) -> JsonValue:
    """Check a tool input value is JSON-able, and that every string in it is a good template."""
    if depth > MAX_INPUT_DEPTH:
        raise ScenarioError(f'{where}: "{key}" nests deeper than {MAX_INPUT_DEPTH} levels.')
    if isinstance(value, str):
        _check_template(value, where, key)
        return value
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ScenarioError(f'{where}: "{key}" is {value}, which JSON cannot carry.')
        return value
    if isinstance(value, list):
        return [_json_value(item, where, f"{key}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, where, f"{key}.{k}", depth + 1) for k, v in value.items()}
    raise ScenarioError(
        f'{where}: "{key}" is {_describe(value)}; tool input holds strings, numbers, '
        "booleans, arrays and tables (quote dates and times)."
    )


def _check_template(template: str, where: str, key: str) -> None:
    try:
        check_template(template)
    except TemplateError as exc:
        raise ScenarioError(f'{where}: "{key}": {exc}.') from exc


def _optional_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ScenarioError(f'{where}: "{key}" must be a string, not {_describe(value)}.')


def _optional_int(
    table: Mapping[str, Any], key: str, where: str, *, low: int, high: int | None
) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ScenarioError(
            f'{where}: "{key}" must be a whole number {bounds}, not {_describe(value)}.'
        )
    if high is not None and value > high:
        raise ScenarioError(
            f'{where}: "{key}" must be a whole number {bounds}, not {_describe(value)}.'
        )
    return value


def _quote(text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _describe(value: object) -> str:
    if isinstance(value, str):
        return f"the string {_quote(value)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) > 10**30:
        return "a very large number"
    if isinstance(value, int | float):
        shown = repr(value)
        return shown if len(shown) <= 30 else shown[:27] + "..."
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"
