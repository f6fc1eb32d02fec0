"""The wire between the session host and ``kit.runtime`` inside a sandbox.

HTTP/1.1 with ``Authorization: Bearer <runtime token>`` on every request:

- ``GET /healthz`` → ``{"ok": true, "session_id": …, "state": …, "resumed": bool, "bundle": …}``
- ``POST /v1/turns`` with :class:`TurnRequest` JSON → ``application/x-ndjson``: one
  :class:`RuntimeEvent` per line, ending with a ``result`` (or ``error``) event.
- ``POST /v1/interrupt`` → 202; the running turn ends early with a ``result``.
- ``PUT /v1/files?path=<relative path>`` with the file's bytes → 204: the runtime writes
  the file into its workspace (folders made as needed; an earlier file of that name
  replaced whole). 400 for a path :func:`file_path_parts` refuses, 413 past
  :data:`MAX_FILE_BYTES`, 409 where a folder on the path is not a plain folder or a folder
  is at the path. The host puts a session's files (email attachments) into each of its
  sandboxes this way.

Events here have no ``seq``: the host assigns it when it makes them durable.

When the agent harness (the CLI) dies under the runtime, the runtime ends the turn's stream
without a ``result`` and exits with :data:`HARNESS_EXIT_CODE`: the host then recovers the
turn in a new sandbox, as after any sandbox death.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from kit.protocol import errors as e
from kit.protocol.errors import ProtocolError

NDJSON = "application/x-ndjson"
TURNS_PATH = "/v1/turns"
INTERRUPT_PATH = "/v1/interrupt"
HEALTH_PATH = "/healthz"
FILES_PATH = "/v1/files"
MAX_FILE_BYTES = 10 * 1024 * 1024
"""The largest file ``PUT /v1/files`` takes (an email attachment's limit)."""
MAX_PATH_PARTS = 8
RUNTIME_KEEP_ALIVE_S = 75.0
"""How long the runtime keeps an idle connection open for the host's next request (the
host's client uses one for less: ``kit.host.runtime_client.KEEP_IDLE_S``)."""
HARNESS_EXIT_CODE = 70
"""The runtime's exit code when the agent harness it drives died (EX_SOFTWARE)."""


def file_path_parts(path: str) -> tuple[str, ...]:
    """The folders and name of a workspace file's relative ``path`` (``mail/ab12/a.pdf``);
    :class:`ProtocolError` (``bad_frame``) for a path that could leave the workspace or
    name something odd: absolute, empty, ``.`` or ``..`` parts, a part starting with a dot,
    control characters or a backslash, a part over 255 bytes, more than
    :data:`MAX_PATH_PARTS` parts."""
    parts = tuple(path.split("/"))
    if not path or len(parts) > MAX_PATH_PARTS:
        raise ProtocolError(
            e.BAD_FRAME, f"A file path needs 1 to {MAX_PATH_PARTS} parts, got {path!r}."
        )
    for part in parts:
        if (
            not part
            or part.startswith(".")
            or len(part.encode()) > 255
            or "\\" in part
            or any(unicodedata.category(c) == "Cc" for c in part)  # C0, DEL, C1
        ):
            raise ProtocolError(
                e.BAD_FRAME,
                f"{path!r} is not a plain relative path (each part a name not starting with "
                "a dot, no control characters or backslashes, at most 255 bytes).",
            )
    return parts


@dataclass(frozen=True)
class TurnRequest:
    """One turn for the runtime to run.

    ``recover`` is true when the turn was interrupted by the death of an earlier sandbox:
    the runtime resumes the SDK session and asks the agent to carry on instead of sending
    ``text`` as a fresh prompt.
    """

    turn_id: str
    text: str
    recover: bool = False

    def to_json(self) -> str:
        """Encode for the request body."""
        return json.dumps({"turn_id": self.turn_id, "text": self.text, "recover": self.recover})

    @classmethod
    def from_json(cls, raw: bytes | str) -> TurnRequest:
        """Decode a request body; :class:`ProtocolError` when it is malformed."""
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError(e.BAD_JSON, f"Turn request is not JSON: {exc}.") from None
        if not isinstance(obj, dict):
            raise ProtocolError(e.BAD_FRAME, "Turn request must be a JSON object.")
        turn_id, text, recover = obj.get("turn_id"), obj.get("text"), obj.get("recover", False)
        if (
            not isinstance(turn_id, str)
            or not isinstance(text, str)
            or not isinstance(recover, bool)
        ):
            raise ProtocolError(
                e.BAD_FRAME, "Turn request needs turn_id (string), text (string), recover (bool)."
            )
        return cls(turn_id=turn_id, text=text, recover=recover)


@dataclass(frozen=True)
class RuntimeEvent:
    """One event streamed by the runtime during a turn."""

    kind: str
    data: dict[str, Any]

    def to_line(self) -> bytes:
        """One NDJSON line."""
        return (
            json.dumps({"kind": self.kind, "data": self.data}, ensure_ascii=False) + "\n"
        ).encode()

    @classmethod
    def from_line(cls, line: str) -> RuntimeEvent:
        """Decode one NDJSON line; :class:`ProtocolError` when it is malformed."""
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ProtocolError(
                e.BAD_JSON, f"Runtime sent a line that is not JSON: {exc}."
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise ProtocolError(e.BAD_FRAME, "Runtime event must be an object with a string kind.")
        data = obj.get("data")
        return cls(kind=obj["kind"], data=data if isinstance(data, dict) else {})
