"""Encoding replies as SSE events and JSON messages, and decoding them back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.model.replies import Reply, ToolCall
from emulator.model.schema import JsonValue
from emulator.model.sse import (
    Event,
    decode_events,
    message_json,
    split_text,
    stream_events,
)

TOOL = ToolCall(id="toolu_emu_1", name="Bash", input={"command": "echo hi", "description": "mock"})


def encode(reply: Reply) -> str:
    """The whole stream of ``reply`` as text."""
    events = stream_events(reply, model="claude-x", message_id="msg_emu_1", input_tokens=10)
    return b"".join(event.encode() for event in events).decode()


def rebuild(events: list[Event]) -> tuple[str, dict[str, Any] | None, str]:
    """Reassemble text, tool input and stop reason from a stream, like a client does."""
    text = ""
    partial: dict[int, str] = {}
    stop = ""
    for event in events:
        delta = event.data.get("delta", {})
        if delta.get("type") == "text_delta":
            text += delta["text"]
        elif delta.get("type") == "input_json_delta":
            partial[event.data["index"]] = (
                partial.get(event.data["index"], "") + delta["partial_json"]
            )
        elif event.name == "message_delta":
            stop = delta["stop_reason"]
    tool = json.loads(next(iter(partial.values()))) if partial else None
    return text, tool, stop


def test_text_reply_matches_the_documented_shape() -> None:
    """A short text reply is exactly the event sequence agent-sdk.md §10 shows."""
    events = decode_events(encode(Reply(text="Done.")))
    assert [(e.name, e.data) for e in events] == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_emu_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Done."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_every_event_has_an_event_line() -> None:
    """Each event is written as an event: line, a data: line and a blank line."""
    chunks = encode(Reply(text="Running it.", tool=TOOL)).split("\n\n")
    assert chunks[-1] == ""
    for chunk in chunks[:-1]:
        name, data = chunk.split("\n")
        assert name.startswith("event: ")
        assert data.startswith("data: ")
        assert json.loads(data[len("data: ") :])["type"] == name[len("event: ") :]


def test_tool_input_comes_only_through_input_json_delta() -> None:
    """The tool_use block starts with empty input; its JSON arrives in fragments."""
    reply = Reply(text="Running it.", tool=TOOL, chunk_chars=10)
    events = decode_events(encode(reply))
    starts = [e.data["content_block"] for e in events if e.name == "content_block_start"]
    assert starts[1] == {"type": "tool_use", "id": "toolu_emu_1", "name": "Bash", "input": {}}
    fragments = [e for e in events if e.data.get("delta", {}).get("type") == "input_json_delta"]
    assert len(fragments) > 1
    assert all(e.data["index"] == 1 for e in fragments)
    assert rebuild(events) == ("Running it.", TOOL.input, "tool_use")


def test_tool_only_reply_has_no_text_block() -> None:
    """A reply with a tool and no text opens the tool_use block at index 0."""
    events = decode_events(encode(Reply(tool=TOOL)))
    starts = [e.data for e in events if e.name == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [(0, "tool_use")]


def test_message_json_shape() -> None:
    """The non-streaming body holds the whole content and the stop reason."""
    body = message_json(Reply(text="hi", tool=TOOL), model="m", message_id="msg_1", input_tokens=5)
    assert body["content"] == [
        {"type": "text", "text": "hi"},
        {"type": "tool_use", "id": "toolu_emu_1", "name": "Bash", "input": TOOL.input},
    ]
    assert (body["model"], body["stop_reason"], body["usage"]["input_tokens"]) == (
        "m",
        "tool_use",
        5,
    )
    empty = message_json(Reply(), model="m", message_id="msg_2", input_tokens=1)
    assert (empty["content"], empty["stop_reason"]) == ([{"type": "text", "text": ""}], "end_turn")


def test_split_text_breaks_between_words() -> None:
    """Pieces end at word boundaries and stay near the chunk size."""
    assert split_text("The quick brown fox jumps over", 10) == [
        "The quick ",
        "brown fox ",
        "jumps over",
    ]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert split_text("", 4) == []


@settings(max_examples=300, database=None)
@given(st.text(), st.integers(min_value=1, max_value=40))
def test_split_text_round_trips(text: str, size: int) -> None:
    """Pieces are non-empty, at most the chunk size, and join back to the text."""
    pieces = split_text(text, size)
    assert "".join(pieces) == text
    assert all(0 < len(piece) <= size for piece in pieces)


JSON_VALUES: st.SearchStrategy[JsonValue] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, database=None)
@given(
    st.text(),
    st.none() | st.dictionaries(st.text(), JSON_VALUES, max_size=4),
    st.integers(min_value=1, max_value=30),
)
def test_stream_round_trips(text: str, tool_input: dict[str, JsonValue] | None, size: int) -> None:
    """Decoding the stream gives back the reply's text, tool input and stop reason."""
    tool = None if tool_input is None else ToolCall(id="toolu_emu_x", name="T", input=tool_input)
    reply = Reply(text=text, tool=tool, chunk_chars=size)
    assert rebuild(decode_events(encode(reply))) == (text, tool_input, reply.stop_reason)
