"""The close codes in kit.protocol.errors are the numbers docs/protocol.md §8 promises.

Everything else (host, client, tests, benches) names them by constant, so this is the one
place their values are checked against the spec.
"""

from __future__ import annotations

import re
from pathlib import Path

from kit.protocol import errors as e

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

CONSTANT_FOR = {
    e.TOO_LARGE: "CLOSE_TOO_LARGE",
    e.HELLO_REQUIRED: "CLOSE_BAD_REQUEST",
    e.SEQ_AHEAD: "CLOSE_BAD_REQUEST",
    e.UNAUTHORIZED: "CLOSE_UNAUTHORIZED",
    e.UNKNOWN_SESSION: "CLOSE_UNKNOWN_SESSION",
    e.SLOW_CONSUMER: "CLOSE_SLOW_CONSUMER",
    e.SESSION_ELSEWHERE: "CLOSE_SESSION_ELSEWHERE",
    e.SHUTTING_DOWN: "CLOSE_GOING_AWAY",
    e.INTERNAL: "CLOSE_INTERNAL",
}


def _documented() -> dict[str, set[int]]:
    """Error code → the close codes §8's table gives it (rows that close)."""
    section = DOC.read_text(encoding="utf-8").split("## 8. Errors")[1].split("\n## ")[0]
    found: dict[str, set[int]] = {}
    for code, close in re.findall(r"^\| `([a-z_]+)` \|.*\| \*\*(\d{4})\*\* \|$", section, re.M):
        found.setdefault(code, set()).add(int(close))
    return found


def test_every_closing_error_uses_the_documented_close_code() -> None:
    """Each error that closes the socket has a constant whose value is the documented code."""
    documented = _documented()
    assert set(documented) == set(CONSTANT_FOR)
    for code, constant in CONSTANT_FOR.items():
        assert documented[code] == {getattr(e, constant)}, code


def test_the_other_close_codes() -> None:
    """The codes no error row names: a normal close, a policy refusal, a dropped connection."""
    assert (e.CLOSE_NORMAL, e.CLOSE_POLICY, e.CLOSE_ABNORMAL) == (1000, 1008, 1006)
