"""Choose the scripted reply to a Messages API request: data in, a :class:`Reply` out.

The choice is stateless; everything comes from the request's ``messages``:

- the **user text** is the last plain text block (not a ``tool_result``, not a
  ``<system-reminder>``, not the skill body the CLI sends after a ``Skill`` call) of the
  last ``user`` message that has one;
- the **turn** is how many ``user`` messages carry such text (1-based);
- the **step** is how many ``assistant`` messages with a ``tool_use`` block come after
  the user text (0 for the first model call of a turn, 1 after one tool round, ...).

The first rule whose matcher accepts the user text answers with its step at that index.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from emulator.model.schema import DEFAULT_CHUNK_CHARS, ApiError, JsonValue, Rule, Step
from emulator.model.templates import TemplateContext, render

DEFAULT_REPLY = (
    "I'm kit's offline model (no ANTHROPIC_API_KEY is set), so I can only follow scripted "
    "scenarios. You said: {user}"
)
"""What the model says when no rule matches (``{user}`` is the user text)."""

SYSTEM_REMINDER = "<system-reminder>"
_SKILL_DIR = re.compile(r"^Base directory for this skill:[ \t]*(\S[^\r\n]*?)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Conversation:
    """What a reply is chosen from, read off a request's ``messages``."""

    user_text: str = ""
    turn: int = 0
    step: int = 0
    tool_result: str = ""
    skill_dir: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A ``tool_use`` block of a reply."""

    id: str
    name: str
    input: dict[str, JsonValue]


@dataclass(frozen=True)
class Reply:
    """One assistant message to send back: text, then maybe a tool call; or an HTTP error."""

    text: str = ""
    tool: ToolCall | None = None
    error: ApiError | None = None
    delay_ms: int = 0
    chunk_chars: int = DEFAULT_CHUNK_CHARS
    chunk_delay_ms: int = 0
    rule: str | None = None
    """The name of the rule that produced the reply; ``None`` for the default reply."""

    @property
    def stop_reason(self) -> str:
        """``"tool_use"`` when the reply calls a tool, else ``"end_turn"``."""
        return "tool_use" if self.tool is not None else "end_turn"


def new_id(prefix: str) -> str:
    """A random id such as ``toolu_emu_3f9c…``; unique for all practical purposes."""
    return f"{prefix}{secrets.token_hex(12)}"


def estimate_tokens(payload: object) -> int:
    """A rough token count: the length of the JSON text over four, at least 1."""
    return max(1, len(json.dumps(payload, ensure_ascii=False, default=str)) // 4)


def choose_reply(
    messages: Sequence[object],
    rules: Sequence[Rule],
    *,
    make_id: Callable[[str], str] = new_id,
) -> Reply:
    """Pick the reply to ``messages`` (a request's ``messages`` array) from ``rules``."""
    talk = read_conversation(messages)
    for rule in rules:
        groups = rule.matches(talk.user_text, talk.turn)
        if groups is None:
            continue
        context = TemplateContext(
            user=talk.user_text,
            match=groups,
            tool_result=talk.tool_result,
            skill_dir=talk.skill_dir,
        )
        if talk.step >= len(rule.steps):
            return Reply(
                text=f"(scenario rule '{rule.name}' has no step {talk.step + 1})", rule=rule.name
            )
        return _from_step(rule.steps[talk.step], rule.name, context, make_id)
    return Reply(text=render(DEFAULT_REPLY, TemplateContext(user=talk.user_text)))


def _from_step(
    step: Step, rule: str, context: TemplateContext, make_id: Callable[[str], str]
) -> Reply:
    tool = None
    if step.tool is not None:
        tool = ToolCall(
            id=make_id("toolu_emu_"), name=step.tool, input=_render_input(step.input, context)
        )
    return Reply(
        text=render(step.text, context) if step.text is not None else "",
        tool=tool,
        error=step.error,
        delay_ms=step.delay_ms,
        chunk_chars=step.chunk_chars,
        chunk_delay_ms=step.chunk_delay_ms,
        rule=rule,
    )


def _render_input(value: dict[str, JsonValue], context: TemplateContext) -> dict[str, JsonValue]:
    return {key: _render_value(item, context) for key, item in value.items()}


def _render_value(value: JsonValue, context: TemplateContext) -> JsonValue:
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, list):
        return [_render_value(item, context) for item in value]
    if isinstance(value, dict):
        return _render_input(value, context)
    return value


def read_conversation(messages: Sequence[object]) -> Conversation:
    """Find the user text, turn, step, latest tool result and skill folder in ``messages``."""
    user_text = ""
    turn = 0
    step = 0
    for message in messages:
        role, blocks = _role_and_blocks(message)
        if role == "user":
            text = _user_text(blocks)
            if text is not None:
                user_text, turn, step = text, turn + 1, 0
        elif role == "assistant" and any(_block_type(b) == "tool_use" for b in blocks):
            step += 1
    return Conversation(
        user_text=user_text,
        turn=turn,
        step=step,
        tool_result=_latest_tool_result(messages),
        skill_dir=_latest_skill_dir(messages),
    )


def _role_and_blocks(message: object) -> tuple[str | None, list[object]]:
    if not isinstance(message, Mapping):
        return None, []
    role = message.get("role")
    content = message.get("content")
    if isinstance(content, str):
        blocks: list[object] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        blocks = list(content)
    else:
        blocks = []
    return (role if isinstance(role, str) else None), blocks


def _block_type(block: object) -> object:
    return block.get("type") if isinstance(block, Mapping) else None


def _user_text(blocks: list[object]) -> str | None:
    """The last plain text block a person wrote, or ``None`` if there is none."""
    found = None
    for block in blocks:
        if _block_type(block) != "text" or not isinstance(block, Mapping):
            continue
        text = block.get("text")
        if isinstance(text, str) and not _is_injected(text):
            found = text
    return found


def _is_injected(text: str) -> bool:
    """Text the CLI adds to user messages: reminders and the body of an invoked skill."""
    head = text.lstrip()
    return head.startswith(SYSTEM_REMINDER) or _SKILL_DIR.match(head) is not None


def _texts(value: object) -> Iterator[str]:
    """Every text in a content value, tool results included, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for block in value:
            if isinstance(block, Mapping):
                if isinstance(block.get("text"), str):
                    yield block["text"]
                yield from _texts(block.get("content"))


def _latest_tool_result(messages: Sequence[object]) -> str:
    for message in reversed(messages):
        _, blocks = _role_and_blocks(message)
        for block in reversed(blocks):
            if _block_type(block) == "tool_result" and isinstance(block, Mapping):
                return "\n".join(_texts(block.get("content")))
    return ""


def _latest_skill_dir(messages: Sequence[object]) -> str:
    for message in reversed(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        for text in reversed(list(_texts(content))):
            found = _SKILL_DIR.findall(text)
            if found:
                return str(found[-1])
    return ""
