"""Choose the scripted reply to a Messages API request: data in, a :class:`Reply` out.

The choice is stateless: everything comes from the request's ``messages``, which
:mod:`emulator.model.conversation` reads into prompts (text a person wrote) and the tool
rounds and answers that followed each. Prompts are grouped into **turns**:

- a prompt opens a new turn unless it **continues** the turn before it: that turn is
  *unfinished* (the user did not interrupt it, its rule has steps left, and its last
  message is not the reply its step gives), and no ``match`` or ``contains`` rule accepts
  the new prompt. This is how a turn cut short by a sandbox's death goes on after the
  runtime's recovery message, whatever that message says;
- a turn's **user text** is its first prompt, and its **number** counts turns from 1;
- its **step** is how many of its tool rounds came back with a result, leaving out a failed
  round that a continuation cut short (the model makes that call again).

The first rule whose matcher accepts the turn's user text (and number) answers with its step
at that index. ``{tool_result}`` and ``{skill_dir}`` come from the rounds that count.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emulator.model.conversation import Answer, Round, Segment, read_segments
from emulator.model.schema import DEFAULT_CHUNK_CHARS, ApiError, JsonValue, Rule, Step
from emulator.model.templates import TemplateContext, render

DEFAULT_REPLY = (
    "I'm kit's offline model (no ANTHROPIC_API_KEY is set), so I can only follow scripted "
    "scenarios. You said: {user}"
)
"""What the model says when no rule matches (``{user}`` is the user text)."""

_DEFAULT_STEPS = (Step(text=DEFAULT_REPLY),)


@dataclass(frozen=True)
class Conversation:
    """What a reply is chosen from, read off a request's ``messages``."""

    user_text: str = ""
    turn: int = 0
    step: int = 0
    tool_result: str = ""
    skill_dir: str = ""
    continued: bool = False
    """The latest prompt continues the unfinished turn before it."""


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
    talk = read_conversation(messages, rules)
    rule, groups = answering_rule(rules, talk.user_text, talk.turn)
    context = TemplateContext(
        user=talk.user_text, match=groups, tool_result=talk.tool_result, skill_dir=talk.skill_dir
    )
    if rule is None:
        return Reply(text=render(DEFAULT_REPLY, context))
    if talk.step >= len(rule.steps):
        return Reply(
            text=f"(scenario rule '{rule.name}' has no step {talk.step + 1})", rule=rule.name
        )
    return _from_step(rule.steps[talk.step], rule.name, context, make_id)


def answering_rule(
    rules: Sequence[Rule], user_text: str, turn: int
) -> tuple[Rule | None, tuple[str, ...]]:
    """The first rule that accepts the turn, with its match groups; ``(None, ())`` if none."""
    for rule in rules:
        groups = rule.matches(user_text, turn)
        if groups is not None:
            return rule, groups
    return None, ()


def read_conversation(messages: Sequence[object], rules: Sequence[Rule] = ()) -> Conversation:
    """Find the turn being answered, its user text, number and step, and the latest tool
    result and skill folder, in ``messages``; ``rules`` decide which prompts continue a turn."""
    segments = read_segments(messages)
    turns: list[_Turn] = []
    cut: set[int] = set()
    for segment in segments:
        last = turns[-1] if turns else None
        if last is not None and _continues(segment, last, rules, segments, cut):
            rounds = last.segments[-1].rounds
            if rounds and rounds[-1].failed:
                cut.add(rounds[-1].at)  # the sandbox died in this call: it is made again
            last.segments.append(segment)
        else:
            turns.append(_Turn(len(turns) + 1, [segment]))
    if not turns:
        return Conversation()
    turn = turns[-1]
    tool_result, skill_dir = _context(segments, cut, len(messages))
    return Conversation(
        user_text=turn.prompt,
        turn=turn.number,
        step=len(_counted(turn, cut)),
        tool_result=tool_result,
        skill_dir=skill_dir,
        continued=len(turn.segments) > 1,
    )


@dataclass
class _Turn:
    number: int
    segments: list[Segment]

    @property
    def prompt(self) -> str:
        return self.segments[0].prompt


def _continues(
    segment: Segment, turn: _Turn, rules: Sequence[Rule], segments: list[Segment], cut: set[int]
) -> bool:
    """Whether ``segment``'s prompt goes on with ``turn`` rather than opening a new one."""
    if turn.segments[-1].interrupted:
        return False  # the user stopped that turn: whatever they say next is new
    if any(rule.reads_text and rule.matches(segment.prompt, 0) is not None for rule in rules):
        return False
    return not _finished(turn, rules, segments, cut)


def _finished(turn: _Turn, rules: Sequence[Rule], segments: list[Segment], cut: set[int]) -> bool:
    """Whether ``turn`` ended as its rule says: out of steps, on an error step, or with the
    text its current step gives as its last message."""
    rule, groups = answering_rule(rules, turn.prompt, turn.number)
    steps = rule.steps if rule is not None else _DEFAULT_STEPS
    done = len(_counted(turn, cut))
    if done >= len(steps) or steps[done].error is not None:
        return True
    step = steps[done]
    items = turn.segments[-1].items
    last = items[-1] if items else None
    if not isinstance(last, Answer) or step.tool is not None or step.text is None:
        return False
    tool_result, skill_dir = _context(segments, cut, last.at)
    context = TemplateContext(
        user=turn.prompt, match=groups, tool_result=tool_result, skill_dir=skill_dir
    )
    return last.text.strip() == render(step.text, context).strip()


def _counted(turn: _Turn, cut: set[int]) -> list[Round]:
    """The turn's tool rounds that came back and were not cut short."""
    return [
        item
        for segment in turn.segments
        for item in segment.rounds
        if item.answered and item.at not in cut
    ]


def _context(segments: list[Segment], cut: set[int], upto: int) -> tuple[str, str]:
    """``{tool_result}`` and ``{skill_dir}`` as of message ``upto``: the last result that
    counts, and the folder of the skill the last ``Skill`` call ran (the CLI sends a skill's
    folder only the first time a session runs it) or else the last folder the CLI named."""
    tool_result = skill_dir = ""
    folders: dict[str, str] = {}
    for item in (r for segment in segments for r in segment.rounds):
        if item.at >= upto:
            break
        if not item.answered or item.at in cut:
            continue
        tool_result = item.result
        if item.skill_dir is not None:
            skill_dir = item.skill_dir
            if item.skill is not None:
                folders[item.skill] = item.skill_dir
        elif item.skill in folders:
            skill_dir = folders[item.skill]
    return tool_result, skill_dir


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
