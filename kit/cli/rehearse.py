"""Clients of ``kit dev``'s control API (kit.cli.control): ``kit sandbox …``, ``kit do …``, and
the one request helper ``kit sessions`` and ``kit logs`` share."""

from __future__ import annotations

from typing import Any

import httpx

from kit.cli import console
from kit.cli.chat import ChatTarget
from kit.cli.control import PREFIX
from kit.cli.errors import CliError
from kit.ids import is_session_id


class ControlError(CliError):
    """The control API refused, or `kit dev` could not be reached."""


def auth_headers(target: ChatTarget) -> dict[str, str]:
    """The host's API token as a Bearer header (none when the token file is missing)."""
    return {"authorization": f"Bearer {target.api_token}"} if target.api_token else {}


def check_session_id(value: str) -> None:
    """:class:`ControlError` unless ``value`` is a well-formed session id (before any request)."""
    if not is_session_id(value):
        raise ControlError(
            f"{value!r} is not a session id (a lowercase UUID); `kit sessions` lists them."
        )


def call(target: ChatTarget, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One control request; its JSON answer, or :class:`ControlError` with the host's message."""
    headers = auth_headers(target)
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


def _holder(row: dict[str, Any]) -> str:
    if not row.get("pooled"):
        return str(row["session_id"])
    return f"{row['session_id']} (pool)" if row["session_id"] else "(pool spare)"


def sandbox_table(rows: list[dict[str, Any]]) -> str:
    """Running sandboxes as an aligned table (a Fly deploy's with the gateway holding each,
    and no PID: a machine's process is not the gateway's to see)."""
    if not rows:
        return "No sandbox is running."
    if any(r.get("host") for r in rows):
        return console.table(
            ("SESSION", "MACHINE", "TIER", "STATE", "GATEWAY"),
            [
                (_holder(r), r["sandbox_id"], r["tier"], r["state"], str(r.get("host") or "-"))
                for r in rows
            ],
        )
    return console.table(
        ("SESSION", "SANDBOX", "TIER", "STATE", "PID"),
        [
            (
                _holder(r),
                r["sandbox_id"],
                r["tier"],
                r["state"],
                str(r.get("pid") or "-"),
            )
            for r in rows
        ],
    )
