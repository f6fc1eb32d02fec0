"""Turning Agent SDK messages into session events (``kind`` + ``data``)."""

from __future__ import annotations

from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from claude_agent_sdk.types import StreamEvent

from kit.protocol.runtime_api import RuntimeEvent

MAX_TOOL_RESULT_CHARS = 64 * 1024


def translate(message: object) -> list[RuntimeEvent]:
    """The session events one SDK message stands for (often none)."""
    if isinstance(message, StreamEvent):
        event = message.event
        if message.parent_tool_use_id is None and event.get("type") == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [RuntimeEvent("text_delta", {"text": delta["text"]})]
        return []
    if isinstance(message, AssistantMessage):
        out = []
        sub = (
            {"parent_tool_use_id": message.parent_tool_use_id} if message.parent_tool_use_id else {}
        )
        for block in message.content:
            if isinstance(block, TextBlock) and block.text:
                out.append(
                    RuntimeEvent(
                        "assistant", {"text": block.text, "message_id": message.message_id, **sub}
                    )
                )
            elif isinstance(block, ToolUseBlock):
                out.append(
                    RuntimeEvent(
                        "tool_use",
                        {"id": block.id, "name": block.name, "input": block.input, **sub},
                    )
                )
        return out
    if isinstance(message, UserMessage) and isinstance(message.content, list):
        return [
            RuntimeEvent(
                "tool_result",
                {
                    "tool_use_id": b.tool_use_id,
                    "content": tool_result_text(b.content),
                    "is_error": bool(b.is_error),
                    **(
                        {"parent_tool_use_id": message.parent_tool_use_id}
                        if message.parent_tool_use_id
                        else {}
                    ),
                },
            )
            for b in message.content
            if isinstance(b, ToolResultBlock)
        ]
    if isinstance(message, ResultMessage):
        return [RuntimeEvent("result", result_data(message))]
    if isinstance(message, SystemMessage) and message.subtype == "mirror_error":
        return [
            RuntimeEvent(
                "error",
                {
                    "code": "mirror_error",
                    "message": "The transcript store refused an append; the turn went on.",
                    "detail": str(message.data.get("error", ""))[:500],
                },
            )
        ]
    return []


def tool_result_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a tool result, cut to :data:`MAX_TOOL_RESULT_CHARS`."""
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = "\n".join(str(b.get("text", "")) for b in content if b.get("type") == "text")
    if len(text) > MAX_TOOL_RESULT_CHARS:
        cut = len(text) - MAX_TOOL_RESULT_CHARS
        text = text[:MAX_TOOL_RESULT_CHARS] + f"\n…[{cut} more characters not shown]"
    return text


def result_data(message: ResultMessage) -> dict[str, Any]:
    """The ``result`` event's data for a ``ResultMessage``."""
    return {
        "is_error": message.is_error,
        "subtype": message.subtype,
        "text": message.result or "",
        "num_turns": message.num_turns,
        "duration_ms": message.duration_ms,
        "stop_reason": message.stop_reason,
        "total_cost_usd": message.total_cost_usd,
        "usage": message.usage or {},
    }
