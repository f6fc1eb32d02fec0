"""Golden transcripts: recorded conversations every host implementation must reproduce.

Files in ``golden/*.jsonl``; one step per line:

- ``{"connect": {}}`` — open a new connection to the session (closing any previous one)
- ``{"send": {...}}`` — the client sends this frame (``"$token"`` is the session token)
- ``{"send_raw": "..."}`` — the client sends this exact text
- ``{"expect": {...}}`` — the host's next frame matches this pattern
- ``{"expect": {...}, "repeat": true}`` — one or more consecutive frames match it
- ``{"expect_close": 4401}`` — the host closes the socket with this code
- ``{"ignore": {...}}`` — from here on, skip host frames matching this pattern (e.g. the
  ``sandbox`` events a host may emit at its own pace)
- ``{"note": "..."}`` — ignored

A pattern matches a frame when every key in the pattern is in the frame with a matching
value: ``"*"`` matches anything, ``"$session_id"`` the session's id, dicts recursively,
other values by equality. Keys the pattern leaves out are not compared, so hosts may add
fields. Python tests replay these against :class:`ServerConnection` and against ``kit dev``;
the Cloudflare shim replays them inside workerd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

ANY = "*"


@dataclass(frozen=True)
class Step:
    """One line of a golden transcript."""

    action: str
    """``connect``, ``send``, ``send_raw``, ``expect``, ``expect_close`` or ``ignore``."""
    value: Any
    repeat: bool = False


def golden_names() -> list[str]:
    """Names of the bundled golden transcripts (without ``.jsonl``)."""
    folder = resources.files("kit.protocol") / "golden"
    return sorted(
        p.name.removesuffix(".jsonl") for p in folder.iterdir() if p.name.endswith(".jsonl")
    )


def load_golden(name: str) -> list[Step]:
    """The steps of golden transcript ``name``."""
    text = (resources.files("kit.protocol") / "golden" / f"{name}.jsonl").read_text(
        encoding="utf-8"
    )
    steps = []
    for line in text.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if "note" in obj:
            continue
        (action,) = [k for k in obj if k != "repeat"]
        steps.append(Step(action, obj[action], bool(obj.get("repeat", False))))
    return steps


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    """``value`` with ``"$name"`` strings replaced from ``variables``."""
    if isinstance(value, str) and value.startswith("$") and value[1:] in variables:
        return variables[value[1:]]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    return value


def matches(pattern: Any, actual: Any, variables: dict[str, Any]) -> bool:
    """Whether ``actual`` matches ``pattern`` (see the module docstring)."""
    pattern = substitute(pattern, variables)
    if pattern == ANY:
        return True
    if isinstance(pattern, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k], variables) for k, v in pattern.items()
        )
    return bool(pattern == actual)


def turn_case_names() -> list[str]:
    """Names of the bundled turn planner cases, ``golden/turns/*.jsonl`` (without ``.jsonl``).

    One step per line, plain JSON (see :mod:`kit.protocol.turns` for the paths they cover):

    - ``{"turn": {"state": "queued", "attempts": 0}}`` — the turn as the log holds it; a
      planner is made from it
    - ``{"in": "begin" | "sandbox_started" | "sandbox_failed" | "stream_broken", "out": [...]}``
      — tell the planner this; it answers exactly these actions (``Action.to_json()``)
    - ``{"in": "batch", "events": [{"kind": ..., "data": {...}}], "out": [...]}`` — a batch
      of the runtime's events
    - ``{"in": "host_restarted", "out": [...]}`` — the host restarts: a new planner is made
      from the log as the ``record`` actions so far left it, and begins
    - ``{"log": {"state": ..., "attempts": n}}`` — the log now holds this
    - ``{"note": "..."}`` — what the case is about
    """
    folder = resources.files("kit.protocol") / "golden" / "turns"
    return sorted(
        p.name.removesuffix(".jsonl") for p in folder.iterdir() if p.name.endswith(".jsonl")
    )


def load_turn_case(name: str) -> list[dict[str, Any]]:
    """The steps of turn planner case ``name``, one JSON object per line (notes kept)."""
    text = (resources.files("kit.protocol") / "golden" / "turns" / f"{name}.jsonl").read_text(
        encoding="utf-8"
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]
