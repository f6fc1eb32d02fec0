"""The store's golden files (tests/storage/golden/), shared by the Python tests and the
shim's (worker_shim/test/store.test.ts, summary.test.ts)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden"
MTIME = "$mtime"
"""In an answer: any epoch-ms number (a write time)."""


def cases(name: str, names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The lines of ``golden/<name>.jsonl`` but its notes, each ``$name`` in them replaced
    from ``names`` (ids: no JSON escaping needed)."""
    text = (GOLDEN / f"{name}.jsonl").read_text(encoding="utf-8")
    for key, value in (names or {}).items():
        text = text.replace(f"${key}", value)
    lines = text.split("\n")  # not splitlines(): an entry holds U+2028
    return [case for case in map(json.loads, filter(None, lines)) if "note" not in case]


def matches(expected: Any, actual: Any) -> bool:
    """Deep equality, with :data:`MTIME` matching any epoch-ms number."""
    if expected == MTIME:
        return isinstance(actual, int | float) and not isinstance(actual, bool) and actual > 1e12
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return type(expected) is type(actual) and bool(expected == actual)
