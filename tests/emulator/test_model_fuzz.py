"""Fuzz the scenario loader: it raises ScenarioError or nothing, and what loads always renders."""

from __future__ import annotations

import contextlib
import datetime
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.model import ScenarioError, load_scenario_file
from emulator.model.parse import parse_scenario
from emulator.model.replies import choose_reply

KEYS = st.sampled_from(
    [
        "rule", "check", "step", "name", "match", "contains", "turn", "text", "tool", "input",
        "delay_ms", "chunk_chars", "error", "status", "type", "message", "should_retry", "say",
        "expect_tools", "expect_reply", "command",
    ]
) | st.text(max_size=6)  # fmt: skip

PIECES = ["{user}", "{match[0]}", "{match[2]}", "{tool_result}", "{skill_dir}", "{{", "}}", "hi "]
TEMPLATES = st.lists(st.sampled_from([*PIECES, "{x}", "{", "}", "{0}"]), max_size=4).map("".join)
GOOD_TEMPLATES = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
SCALARS: st.SearchStrategy[Any] = (
    st.text(max_size=12)
    | TEMPLATES
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | st.booleans()
    | st.dates()
    | st.datetimes()
    | st.times()
    | st.just(datetime.datetime(1979, 5, 27, tzinfo=datetime.UTC))
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


def mostly(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a value of the right shape, sometimes anything at all."""
    return st.integers(0, 9).flatmap(lambda n: VALUES if n == 0 else right)


JSON: st.SearchStrategy[Any] = st.recursive(
    GOOD_TEMPLATES
    | st.integers()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
ERRORS = st.fixed_dictionaries(
    {"status": mostly(st.integers(390, 610))},
    optional={"type": mostly(st.text(max_size=8)), "should_retry": mostly(st.booleans())},
)
TOOL = st.fixed_dictionaries(
    {"tool": mostly(st.sampled_from(["Bash", "Skill", ""]))},
    optional={"input": mostly(st.dictionaries(st.text(max_size=4), JSON, max_size=3))},
)
STEP = st.builds(
    lambda kind, extras: {**kind, **extras},
    st.one_of(
        st.fixed_dictionaries({"text": mostly(GOOD_TEMPLATES)}),
        TOOL,
        st.builds(lambda tool, text: {**tool, "text": text}, TOOL, mostly(GOOD_TEMPLATES)),
        st.fixed_dictionaries({"error": mostly(ERRORS)}),
        st.dictionaries(st.sampled_from(["text", "tool", "input", "error"]), VALUES, max_size=2),
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "delay_ms": mostly(st.integers(-1, 3)),
            "chunk_chars": mostly(st.integers(0, 30)),
        },
    ),
)
MATCHERS = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"match": mostly(st.sampled_from(["order (\\d+)", "(a)|(b)", "[", "x{2,}", "(?P<n>y)"]))}
    ),
    st.fixed_dictionaries({"contains": mostly(st.text(max_size=3))}),
    st.fixed_dictionaries({"turn": mostly(st.integers(-1, 3))}),
    st.dictionaries(st.sampled_from(["match", "contains", "turn"]), st.text(max_size=2)),
)
RULE = st.builds(
    lambda matcher, rest: {**matcher, **rest},
    MATCHERS,
    st.fixed_dictionaries(
        {"step": mostly(st.lists(STEP, min_size=1, max_size=3))},
        optional={"name": mostly(st.text(max_size=8))},
    ),
)
CHECK = st.fixed_dictionaries(
    {"say": mostly(st.text(max_size=8))},
    optional={
        "name": mostly(st.text(max_size=8)),
        "expect_tools": mostly(st.lists(st.sampled_from(["Bash", "Skill", ""]), max_size=3)),
        "expect_reply": mostly(st.text(max_size=8)),
    },
)
PLAUSIBLE = st.fixed_dictionaries(
    {},
    optional={
        "rule": mostly(st.lists(RULE, max_size=3)),
        "check": mostly(st.lists(CHECK, max_size=2)),
    },
)
RANDOM = st.dictionaries(KEYS, VALUES, max_size=3)
DOCUMENTS = PLAUSIBLE | RANDOM


@settings(max_examples=500, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS, st.text(max_size=20), st.text(max_size=20))
def test_parse_raises_only_scenario_errors(
    document: dict[str, Any], said: str, result: str
) -> None:
    """Any TOML-ish document loads or raises ScenarioError; a loaded one renders any input."""
    try:
        scenario = parse_scenario(document, Path("fuzz.toml"))
    except ScenarioError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert message.startswith("fuzz.toml: ")
        return
    for step in range(4):
        messages: list[object] = [{"role": "user", "content": said}]
        for _ in range(step):
            messages.append({"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]})
            messages.append(
                {"role": "user", "content": [{"type": "tool_result", "content": result}]}
            )
        choose_reply(messages, scenario.rules)


@settings(max_examples=200, database=None)
@given(st.text(max_size=80) | st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")))
def test_load_raises_only_scenario_errors(text: str) -> None:
    """Arbitrary file contents load or raise ScenarioError, never another exception."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.toml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        with contextlib.suppress(ScenarioError):
            load_scenario_file(path)
