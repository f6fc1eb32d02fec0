"""Choosing a reply: reading the conversation, matching rules, rendering steps."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from emulator.model import Rule
from emulator.model.parse import parse_scenario
from emulator.model.replies import (
    Conversation,
    Reply,
    ToolCall,
    choose_reply,
    read_conversation,
)

REMINDER = {"type": "text", "text": "<system-reminder>\nAttribution ...\n</system-reminder>\n"}
SYSTEM = {"role": "system", "content": "# Environment\n - Primary working directory: /w"}


def user(text: str) -> dict[str, Any]:
    """A user message the way the CLI sends a prompt: a reminder block, then the text."""
    return {"role": "user", "content": [REMINDER, {"type": "text", "text": text}]}


def tool_round(tool_id: str, result: object, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant tool call and the user message carrying its result."""
    return [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "On it."},
                {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": result}, *extra],
        },
    ]


def rules(data: dict[str, Any]) -> tuple[Rule, ...]:
    """Rules from a decoded scenario document."""
    return parse_scenario(data, Path("test.toml")).rules


def counter_ids() -> Any:
    """A deterministic id factory: prefix + 1, 2, 3..."""
    numbers = itertools.count(1)
    return lambda prefix: f"{prefix}{next(numbers)}"


def test_reads_a_cli_prompt() -> None:
    """Reminder blocks and role:system entries are skipped; the prompt is turn 1, step 0."""
    talk = read_conversation([user("Where is order 1042?"), SYSTEM])
    assert talk == Conversation(user_text="Where is order 1042?", turn=1, step=0)


def test_reads_string_content_and_tool_rounds() -> None:
    """A string prompt counts; each assistant tool_use after it is one step."""
    messages = [
        {"role": "user", "content": "run it"},
        *tool_round("t1", "first"),
        *tool_round("t2", [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]),
    ]
    talk = read_conversation(messages)
    assert (talk.user_text, talk.turn, talk.step) == ("run it", 1, 2)
    assert talk.tool_result == "line 1\nline 2"


def test_skill_body_is_not_user_text() -> None:
    """The skill body the CLI sends next to a Skill result gives skill_dir, not a new turn."""
    body = {"type": "text", "text": "Base directory for this skill: /s/greeter\n\nSay hi.\n"}
    messages = [user("greet me"), SYSTEM, *tool_round("t1", "Launching skill: greeter", body)]
    talk = read_conversation(messages)
    assert (talk.user_text, talk.turn, talk.step) == ("greet me", 1, 1)
    assert talk.skill_dir == "/s/greeter"
    assert talk.tool_result == "Launching skill: greeter"


def test_second_turn_resets_the_step() -> None:
    """A new user text starts turn 2 at step 0; old tool results stay visible."""
    messages = [
        user("one"),
        *tool_round("t1", "r1"),
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
        user("two"),
    ]
    talk = read_conversation(messages)
    assert (talk.user_text, talk.turn, talk.step, talk.tool_result) == ("two", 2, 0, "r1")


def test_junk_messages_are_ignored() -> None:
    """Messages and blocks of unexpected shapes are skipped rather than crashing."""
    messages: list[object] = [None, 3, {"role": 1}, {"role": "user", "content": [None, {"x": 1}]}]
    assert read_conversation(messages) == Conversation()


ORDER_RULES = {
    "rule": [
        {
            "name": "order lookup",
            "match": r"order\s*#?(\d+)",
            "step": [
                {
                    "text": "Looking up {match[1]}{match[5]}.",
                    "tool": "Skill",
                    "input": {"skill": "o"},
                },
                {
                    "tool": "Bash",
                    "input": {
                        "command": "python3 {skill_dir}/lookup.py {match[1]}",
                        "env": [{"ID": "{match[1]}"}, 7, True],
                    },
                },
                {"text": "Found:\n{tool_result}"},
            ],
        },
        {"contains": "refund", "step": [{"error": {"status": 529}}]},
        {"turn": 2, "step": [{"text": "turn two: {user}"}]},
        {"name": "late fallback", "contains": "order", "step": [{"text": "never"}]},
    ]
}


def test_rule_steps_follow_the_conversation() -> None:
    """The first matching rule answers with the step the conversation has reached."""
    rule_list = rules(ORDER_RULES)
    body = {"type": "text", "text": "Base directory for this skill: /sk/o\n\nbody"}
    messages: list[dict[str, Any]] = [user("Where is ORDER #1042?"), SYSTEM]
    first = choose_reply(messages, rule_list, make_id=counter_ids())
    assert first == Reply(
        text="Looking up 1042.",
        tool=ToolCall(id="toolu_emu_1", name="Skill", input={"skill": "o"}),
        rule="order lookup",
    )
    assert first.stop_reason == "tool_use"
    messages += tool_round("t1", "Launching skill: o", body)
    second = choose_reply(messages, rule_list)
    assert second.tool is not None
    assert second.tool.input == {
        "command": "python3 /sk/o/lookup.py 1042",
        "env": [{"ID": "1042"}, 7, True],
    }
    messages += tool_round("t2", "shipped on Monday")
    third = choose_reply(messages, rule_list)
    assert (third.text, third.tool, third.stop_reason) == (
        "Found:\nshipped on Monday",
        None,
        "end_turn",
    )
    messages += tool_round("t3", "extra")
    assert choose_reply(messages, rule_list).text == "(scenario rule 'order lookup' has no step 4)"


def test_tool_ids_are_unique() -> None:
    """Two replies never share a tool_use id."""
    rule_list = rules(ORDER_RULES)
    ids = {choose_reply([user("order 1")], rule_list).tool.id for _ in range(50)}  # type: ignore[union-attr]
    assert len(ids) == 50
    assert all(tool_id.startswith("toolu_emu_") for tool_id in ids)


def test_other_matchers_and_errors() -> None:
    """contains and turn rules match; an error step gives a Reply carrying the error."""
    rule_list = rules(ORDER_RULES)
    refund = choose_reply([user("I want a REFUND")], rule_list)
    assert refund.error is not None
    assert refund.error.status == 529
    first = choose_reply([user("hello")], rule_list).text
    second_turn = [user("hello"), {"role": "assistant", "content": first}, user("again {user}")]
    assert choose_reply(second_turn, rule_list).text == "turn two: again {user}"


def test_default_reply_when_nothing_matches() -> None:
    """Without a matching rule the model explains itself and echoes the user, braces intact."""
    reply = choose_reply([user("hello {there}")], [])
    assert reply == Reply(
        text="I'm kit's offline model (no ANTHROPIC_API_KEY is set), so I can only follow "
        "scripted scenarios. You said: hello {there}"
    )


def test_step_settings_carry_over() -> None:
    """delay_ms and chunk_chars of the step reach the Reply."""
    rule_list = rules({"rule": [{"step": [{"text": "x", "delay_ms": 5, "chunk_chars": 3}]}]})
    reply = choose_reply([user("hi")], rule_list)
    assert (reply.delay_ms, reply.chunk_chars, reply.rule) == (5, 3, "rule 1")
