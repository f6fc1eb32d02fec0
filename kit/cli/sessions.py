"""``kit sessions``: every session of the running ``kit dev``, as a table or JSON."""

from __future__ import annotations

import time
from typing import Any

from kit.cli import console
from kit.cli.chat import ChatTarget
from kit.cli.rehearse import call


def list_sessions(target: ChatTarget) -> list[dict[str, Any]]:
    """The rows of ``GET /_kit/sessions``, most recently active first."""
    rows: list[dict[str, Any]] = call(target, "GET", "/sessions")["sessions"]
    return rows


def when(ms: int | None) -> str:
    """Wall-clock milliseconds as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for none)."""
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def sessions_table(rows: list[dict[str, Any]]) -> str:
    """Sessions as an aligned table: id, created, last event, turns, sandbox."""
    if not rows:
        return "No sessions yet; start one with `kit chat`."
    lines = []
    for r in rows:
        if "error" in r:
            lines.append((r["session_id"], "-", f"unreadable: {r['error']}", "-", "-"))
            continue
        last = f"{when(r['last_ts'])} {r['last_kind']}" if r["last_kind"] else "-"
        turns = str(r["turns"]) + (f" ({r['open_turns']} open)" if r["open_turns"] else "")
        lines.append((r["session_id"], when(r["created_ms"]), last, turns, r["sandbox"]))
    return console.table(("SESSION", "CREATED", "LAST EVENT", "TURNS", "SANDBOX"), lines)
