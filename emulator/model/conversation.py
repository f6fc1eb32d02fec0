"""Read a request's ``messages`` into prompts and what the model did after each: data in,
:class:`Segment` objects out.

The CLI sends the whole conversation on every call. A **prompt** is text a person wrote: a
``text`` block of a ``user`` message that is none of the things the CLI adds itself:

- a ``<system-reminder>`` block;
- what the CLI sends with a ``Skill`` result: the text block right after that
  ``tool_result`` (the skill's body, *Base directory for this skill: …*, the first time a
  session runs the skill; a short *Skill … is already loaded* note on later calls), and any
  text that starts with *Base directory for this skill:*;
- the CLI's interrupt note, *[Request interrupted by user]* (or *… for tool use*), which
  also marks the prompt it follows as interrupted.

The CLI merges consecutive user messages into one, so one message can end a tool round and
start a new prompt (after an interrupt), or hold several prompts. Each prompt opens a
:class:`Segment`; consecutive prompts with no interrupt note between them count as one, the
last. A segment holds the model's messages that follow its prompt, in order: tool rounds
(:class:`Round`: an ``assistant`` message with ``tool_use`` blocks, and the results the next
``user`` message carries) and text answers (:class:`Answer`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

SYSTEM_REMINDER = "<system-reminder>"
INTERRUPT_NOTE = "[Request interrupted by user"
"""How the CLI's note starts when a turn is interrupted (checked with CLI 2.1.330)."""

SKILL_DIR = re.compile(r"^Base directory for this skill:[ \t]*(\S[^\r\n]*?)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Round:
    """An assistant message that called tools, and what came back."""

    at: int
    """Index of the assistant message in ``messages``."""
    skill: str | None = None
    """The ``skill`` a ``Skill`` call named."""
    answered: bool = False
    """The next user message carries a ``tool_result``: the tool ran (or the CLI says why not)."""
    failed: bool = False
    """A result is marked ``is_error``."""
    result: str = ""
    """The text of the last ``tool_result`` (a multi-block result joined by newlines)."""
    skill_dir: str | None = None
    """The last *Base directory for this skill:* path in the result message."""


@dataclass(frozen=True)
class Answer:
    """An assistant message without a tool call: the model's text."""

    at: int
    text: str


@dataclass
class Segment:
    """A prompt and the model's messages up to the next prompt."""

    prompt: str
    at: int
    """Index of the user message that holds the prompt."""
    items: list[Round | Answer] = field(default_factory=list)
    interrupted: bool = False
    """The CLI's interrupt note follows: the user stopped this turn."""

    @property
    def rounds(self) -> list[Round]:
        """The tool rounds, in order."""
        return [item for item in self.items if isinstance(item, Round)]


def read_segments(messages: Sequence[object]) -> list[Segment]:
    """Split ``messages`` into segments, one per prompt; messages before the first prompt
    (and ``role: "system"`` entries) are skipped."""
    segments: list[Segment] = []
    tools: dict[str, str] = {}
    for index, message in enumerate(messages):
        role, blocks = role_and_blocks(message)
        if role == "assistant":
            uses = [b for b in blocks if block_type(b) == "tool_use" and isinstance(b, Mapping)]
            for use in uses:
                if isinstance(use.get("id"), str) and isinstance(use.get("name"), str):
                    tools[use["id"]] = use["name"]
            if segments:
                segments[-1].items.append(
                    _round(index, uses, _next_user(messages, index))
                    if uses
                    else Answer(index, "".join(_plain_texts(blocks)))
                )
        elif role == "user":
            _read_user(index, blocks, tools, segments)
    return segments


def _read_user(
    index: int, blocks: list[object], tools: Mapping[str, str], segments: list[Segment]
) -> None:
    """Open a segment for each prompt in one user message; mark interrupted ones."""
    after_skill = False
    opened: Segment | None = None  # the segment a prompt of this message opened, if any
    for block in blocks:
        kind = block_type(block)
        if kind == "tool_result" and isinstance(block, Mapping):
            after_skill = tools.get(str(block.get("tool_use_id"))) == "Skill"
            continue
        text = block.get("text") if isinstance(block, Mapping) and kind == "text" else None
        skill_content, after_skill = after_skill, False
        if not isinstance(text, str):
            continue
        head = text.lstrip()
        if head.startswith(INTERRUPT_NOTE):
            if segments:
                segments[-1].interrupted = True
            opened = None
        elif not (skill_content or head.startswith(SYSTEM_REMINDER) or SKILL_DIR.match(head)):
            if opened is not None:  # two prompts in a row: the last one counts
                opened.prompt = text
            else:
                opened = Segment(prompt=text, at=index)
                segments.append(opened)


def _round(at: int, uses: list[Mapping[str, object]], reply: list[object] | None) -> Round:
    skill = None
    for use in uses:
        given = use.get("input")
        if use.get("name") == "Skill" and isinstance(given, Mapping):
            name = given.get("skill")
            skill = name if isinstance(name, str) else None
    results = [b for b in reply or [] if block_type(b) == "tool_result" and isinstance(b, Mapping)]
    if not results:
        return Round(at=at, skill=skill)
    dirs = [found for text in texts(reply) for found in SKILL_DIR.findall(text)]
    return Round(
        at=at,
        skill=skill,
        answered=True,
        failed=any(result.get("is_error") is True for result in results),
        result="\n".join(texts(results[-1].get("content"))),
        skill_dir=str(dirs[-1]) if dirs else None,
    )


def _next_user(messages: Sequence[object], index: int) -> list[object] | None:
    """The blocks of the first user message after ``index``, unless an assistant one comes first."""
    for message in messages[index + 1 :]:
        role, blocks = role_and_blocks(message)
        if role == "user":
            return blocks
        if role == "assistant":
            return None
    return None


def role_and_blocks(message: object) -> tuple[str | None, list[object]]:
    """A message's role and its content as a list of blocks (a string is one text block)."""
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


def block_type(block: object) -> object:
    """A content block's ``type``, or ``None``."""
    return block.get("type") if isinstance(block, Mapping) else None


def _plain_texts(blocks: list[object]) -> Iterator[str]:
    for block in blocks:
        if block_type(block) == "text" and isinstance(block, Mapping):
            text = block.get("text")
            if isinstance(text, str):
                yield text


def texts(value: object) -> Iterator[str]:
    """Every text in a content value, tool results included, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for block in value:
            if isinstance(block, Mapping):
                if isinstance(block.get("text"), str):
                    yield block["text"]
                yield from texts(block.get("content"))
