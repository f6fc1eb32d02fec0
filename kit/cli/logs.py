"""``kit logs SESSION``: a session's events from the running ``kit dev``, stored then live.

Reads ``GET /_kit/sessions/{id}/events`` (NDJSON, kit.cli.control): one event a line, then
one ``{"end": reason, "message": …}`` line. A stream without its end line broke off.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from kit.cli import console
from kit.cli.chat import ChatTarget
from kit.cli.control import PREFIX
from kit.cli.rehearse import ControlError, auth_headers, check_session_id
from kit.protocol.frames import Event

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
"""Between two lines of a stored log (a followed one may be quiet for ever)."""


def show_logs(target: ChatTarget, session_id: str, *, follow: bool, as_json: bool) -> int:
    """Print the session's events (``follow``: and new ones until Ctrl-C or kit dev stops)."""
    check_session_id(session_id)
    printer = console.EventPrinter(as_json=as_json)
    url = f"{target.url}{PREFIX}/sessions/{session_id}/events"
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=None if follow else READ_TIMEOUT_S)
    end: dict[str, Any] | None = None
    try:
        with httpx.stream(
            "GET",
            url,
            params={"follow": "1" if follow else "0"},
            headers=auth_headers(target),
            timeout=timeout,
        ) as response:
            if response.status_code >= 400:
                raise ControlError(_refusal(response))
            for line in response.iter_lines():
                if not line:
                    continue
                item = json.loads(line)
                if "seq" not in item:
                    end = item
                    break
                printer.show(_event(item))
    except KeyboardInterrupt:
        printer.finish()
        return 0  # Ctrl-C is how a follow ends
    except httpx.HTTPError as exc:
        printer.finish()
        raise ControlError(
            f"Lost `kit dev` at {target.url} ({exc or type(exc).__name__}); is it running?"
        ) from None
    printer.finish()
    if end is None:
        raise ControlError("The log stream broke off before its end; run `kit logs` again.")
    if end["end"] in ("done", "stopping"):
        if end["end"] == "stopping" and not as_json:
            console.out(console.dim(str(end["message"])))
        return 0
    raise ControlError(str(end["message"]))


def _event(item: dict[str, Any]) -> Event:
    return Event(
        seq=int(item["seq"]),
        kind=str(item["kind"]),
        data=dict(item["data"]),
        ts=int(item["ts"]),
        turn_id=item.get("turn_id"),
    )


def _refusal(response: httpx.Response) -> str:
    response.read()
    try:
        message = response.json().get("message")
    except ValueError:
        message = None
    return str(message or f"kit dev answered {response.status_code}.")
