"""Encode a :class:`Reply` the way the Messages API sends it: SSE events or one JSON message.

Sans-I/O: these functions build events and bytes; the app decides when to write them.
The shapes are the ones the bundled CLI accepts (docs: agent-sdk.md §10): every event has
an ``event:`` line, text arrives as ``text_delta`` events split on word boundaries, and a
tool's input arrives only through ``input_json_delta`` fragments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from emulator.model.replies import Reply

_WORDS = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name and its JSON data."""

    name: str
    data: dict[str, Any]

    def encode(self) -> bytes:
        """The event as it goes on the wire: ``event: <name>\\ndata: <json>\\n\\n``."""
        payload = json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {self.name}\ndata: {payload}\n\n".encode()


def split_text(text: str, size: int) -> list[str]:
    """Split ``text`` into pieces of about ``size`` characters, breaking between words.

    The pieces join back to ``text`` exactly. A word longer than ``size`` is cut into
    ``size``-character pieces so one long token cannot become one huge delta.
    """
    size = max(1, size)
    pieces: list[str] = []
    current = ""
    for word in _WORDS.findall(text):
        if current and len(current) + len(word) > size:
            pieces.append(current)
            current = ""
        while len(word) > size:
            pieces.append(word[:size])
            word = word[size:]
        current += word
    if current:
        pieces.append(current)
    return pieces


def output_tokens(reply: Reply) -> int:
    """A rough output token count for ``reply``: characters over four, at least 1."""
    size = len(reply.text)
    if reply.tool is not None:
        size += len(reply.tool.name) + len(_input_json(reply))
    return max(1, size // 4)


def _input_json(reply: Reply) -> str:
    return json.dumps(reply.tool.input if reply.tool is not None else {}, ensure_ascii=False)


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.text or reply.tool is None:
        blocks.append({"type": "text", "text": reply.text})
    if reply.tool is not None:
        blocks.append(
            {
                "type": "tool_use",
                "id": reply.tool.id,
                "name": reply.tool.name,
                "input": reply.tool.input,
            }
        )
    return blocks


def message_json(reply: Reply, *, model: str, message_id: str, input_tokens: int) -> dict[str, Any]:
    """The whole reply as a non-streaming Messages API response body."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content(reply),
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens(reply)},
    }


def message_start(*, model: str, message_id: str, input_tokens: int) -> Event:
    """The first event of a stream: the message with no content yet."""
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    return Event("message_start", {"type": "message_start", "message": message})


def content_events(reply: Reply) -> Iterator[Event]:
    """Every event after ``message_start``: content blocks, ``message_delta``, ``message_stop``."""
    for index, block in enumerate(_content(reply)):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": piece}
                for piece in split_text(reply.text, reply.chunk_chars)
            ]
        else:
            start = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _fragments(_input_json(reply), reply.chunk_chars)
            ]
        yield Event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        for delta in deltas:
            yield Event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield Event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield Event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens(reply)},
        },
    )
    yield Event("message_stop", {"type": "message_stop"})


def stream_events(
    reply: Reply, *, model: str, message_id: str, input_tokens: int
) -> Iterator[Event]:
    """Every event of a streamed reply, in order."""
    yield message_start(model=model, message_id=message_id, input_tokens=input_tokens)
    yield from content_events(reply)


def _fragments(text: str, size: int) -> list[str]:
    """Cut JSON text into fragments like the real API does: anywhere, not only at tokens."""
    size = max(1, size)
    return [text[at : at + size] for at in range(0, len(text), size)] or [text]


def error_json(kind: str, message: str, request_id: str) -> dict[str, Any]:
    """An Anthropic error body: ``{"type": "error", "error": {"type", "message"}, ...}``."""
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    }


def decode_events(text: str) -> list[Event]:
    """Parse an SSE stream of ``event:``/``data:`` pairs back into events (for tests and tools)."""
    events: list[Event] = []
    for chunk in text.replace("\r\n", "\n").split("\n\n"):
        name = ""
        data: list[str] = []
        for line in chunk.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].lstrip(" "))
        if name or data:
            events.append(Event(name, json.loads("\n".join(data)) if data else {}))
    return events
