"""``kit sandbox …`` and ``kit do …``: clients of ``kit dev``'s control API (kit.cli.control)."""

from __future__ import annotations

from typing import Any

import httpx

from kit.cli.chat import ChatTarget
from kit.cli.control import PREFIX
from kit.errors import KitError


class ControlError(KitError):
    """The control API refused, or `kit dev` could not be reached."""


def call(target: ChatTarget, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One control request; its JSON answer, or :class:`ControlError` with the host's message."""
    headers = {"authorization": f"Bearer {target.api_token}"} if target.api_token else {}
    try:
        response = httpx.request(
            method, target.url + PREFIX + path, json=body, headers=headers, timeout=30
        )
    except httpx.HTTPError as exc:
        raise ControlError(
            f"Cannot reach `kit dev` at {target.url}: {exc}. Is it running?"
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code >= 400:
        raise ControlError(
            str(answer.get("message") or f"kit dev answered {response.status_code}.")
        )
    return answer


def sandbox_table(rows: list[dict[str, Any]]) -> str:
    """Running sandboxes as an aligned table."""
    if not rows:
        return "No sandbox is running."
    header = ("SESSION", "SANDBOX", "TIER", "STATE", "PID")
    lines = [header] + [
        (r["session_id"], r["sandbox_id"], r["tier"], r["state"], str(r.get("pid") or "-"))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
