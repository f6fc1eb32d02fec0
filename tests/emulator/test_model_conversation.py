"""The offline model holds a conversation: repeated questions, reused skills, turns cut short
by a sandbox's death and continued, and interrupted turns, on the CLI's own request shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emulator.model.parse import parse_scenario
from emulator.model.replies import DEFAULT_REPLY, Reply, choose_reply, read_conversation
from emulator.model.scenarios import load_scenario_file
from kit.runtime.agent import RECOVER_PROMPT
from tests.emulator.cli_shapes import (
    BUNDLE,
    CALL_INTERRUPTED,
    INTERRUPTED,
    INTERRUPTED_FOR_TOOL,
    NO_RESPONSE,
    SCAFFOLD,
    SUPPORT,
    TOOL_REJECTED,
    Chat,
    already_loaded,
    rules_of,
)

FALLBACK = "I can help with Acme Outfitters orders"


def summary(replies: list[Reply]) -> list[tuple[str, object]]:
    """What a turn did, without the random tool ids: each tool call, then the final text."""
    calls: list[tuple[str, object]] = [(r.tool.name, r.tool.input) for r in replies if r.tool]
    return [*calls, ("text", replies[-1].text)]


def test_the_skill_note_on_a_second_call_is_not_user_text() -> None:
    """The CLI's 'already loaded' note after a Skill result (a later turn's first call of a
    skill) is neither a prompt nor a turn; the skill's folder is the one its body gave."""
    chat = Chat(rules_of(SUPPORT))
    chat.turn("Where is order 1042?")
    chat.say("Where is order 1042?")
    chat.step()
    assert chat.messages[-1]["content"][1]["text"] == already_loaded("kit:order-lookup")
    talk = read_conversation(chat.messages, chat.rules)
    assert (talk.user_text, talk.turn, talk.step) == ("Where is order 1042?", 2, 1)
    assert talk.skill_dir == f"{BUNDLE}/order-lookup"


@pytest.mark.parametrize("scenario", [SUPPORT, SCAFFOLD], ids=["support-bot", "scaffold"])
def test_every_check_asked_twice_gets_the_same_answer(scenario: Path) -> None:
    """Each check's question, asked again later in the same session, makes the same tool
    calls (inputs included) and gives the same final answer, which the check accepts."""
    checks = load_scenario_file(scenario).checks
    chat = Chat(rules_of(scenario))
    first = [summary(chat.turn(check.say)) for check in checks]
    again = [summary(chat.turn(check.say)) for check in checks]
    assert again == first
    for check, turn in zip(checks, again, strict=True):
        assert [name for name, _ in turn[:-1]] == list(check.expect_tools or [])
        assert (check.expect_reply or "").lower() in str(turn[-1][1]).lower()


def test_a_skill_called_again_after_another_skill_runs_in_its_own_folder() -> None:
    """{skill_dir} is the folder of the skill the last Skill call ran, even when the CLI
    sent another skill's body in between and only a note this time."""
    chat = Chat(rules_of(SUPPORT))
    chat.turn("Where is order 1042?")
    chat.turn("How do refunds work?")
    replies = chat.turn("Where is order 1042?")
    assert replies[1].tool is not None
    assert (
        replies[1].tool.input["command"]
        == f'python3 "{BUNDLE}/order-lookup/scripts/lookup.py" 1042'
    )


def test_the_scaffold_hello_twice_never_loops() -> None:
    """The scaffold's second 'hello' calls Skill then Bash once each and says the script's line."""
    chat = Chat(rules_of(SCAFFOLD))
    for _ in range(3):
        replies = chat.turn("hello")
        assert [r.tool.name for r in replies if r.tool] == ["Skill", "Bash"]
        assert "from the hello skill" in replies[-1].text


QUESTIONS = {
    "order lookup": ("Where is order 1042?", "Bash", "1Z999AA10123456784"),
    "returns policy": ("How do refunds work?", "Read", "5 business days"),
    "return eligibility": ("Can I return order 1038?", "Bash", "returnable until 2026-12-10"),
}
STORED = {
    "prompt": (1, ["Skill", "second"]),
    "skill call": (2, ["Skill", "second"]),  # on resume the CLI marks the call interrupted
    "skill result": (3, ["second"]),
    "second call": (4, ["second"]),  # killed mid-tool: the call is made again
    "second result": (5, []),
}
"""How much of the turn reached the store when the sandbox died (messages after the ones
before the prompt), and the tools the turn still calls after the recovery prompt."""


@pytest.mark.parametrize("recovery", [RECOVER_PROMPT, "Please carry on."], ids=["kit", "other"])
@pytest.mark.parametrize("earlier", [False, True], ids=["first-turn", "asked-before"])
@pytest.mark.parametrize("stored", STORED)
@pytest.mark.parametrize("question", QUESTIONS)
def test_a_turn_continued_after_a_sandbox_death_answers_the_question(
    question: str, stored: str, earlier: bool, recovery: str
) -> None:
    """Whatever reached the store and whatever the recovery prompt says, the continued turn
    makes the calls it had not finished (a call the CLI marks interrupted is made again)
    and answers the original question with the tool's real output."""
    say, second, fact = QUESTIONS[question]
    chat = Chat(rules_of(SUPPORT))
    if earlier:
        chat.turn(say)
    chat.say(say)
    prompt = max(i for i, m in enumerate(chat.messages) if m["role"] == "user")
    chat.finish()
    kept, calls_left = STORED[stored]
    chat.resume(prompt + kept + (0 if earlier else 1), recovery)  # + the role:system entry
    talk = read_conversation(chat.messages, chat.rules)
    assert (talk.user_text, talk.turn, talk.continued) == (say, 2 if earlier else 1, True)
    replies = chat.finish()
    assert [r.tool.name for r in replies if r.tool] == [
        second if name == "second" else name for name in calls_left
    ]
    assert fact in replies[-1].text
    assert CALL_INTERRUPTED not in replies[-1].text


def test_a_turn_cut_twice_is_still_continued() -> None:
    """A sandbox that dies again during the continuation: the next recovery prompt goes on
    with the same turn, and later questions are new turns."""
    chat = Chat(rules_of(SUPPORT))
    chat.say("Where is order 1042?")
    chat.step()
    chat.resume(len(chat.messages), RECOVER_PROMPT)
    chat.step(run_tool=False)  # killed mid-Bash, in the second sandbox
    chat.resume(len(chat.messages), RECOVER_PROMPT)
    replies = chat.finish()
    assert [r.tool.name for r in replies if r.tool] == ["Bash"]
    assert "1Z999AA10123456784" in replies[-1].text
    assert read_conversation(chat.messages, chat.rules).turn == 1
    assert summary(chat.turn("Can I return order 1038?"))[0] == (
        "Skill",
        {"skill": "kit:returns-policy"},
    )
    assert read_conversation(chat.messages, chat.rules).turn == 2


def test_a_call_with_no_result_at_all_is_made_again() -> None:
    """A tool_use the next message does not answer (no result recorded) is not a tool round."""
    chat = Chat(rules_of(SUPPORT))
    chat.say("Where is order 1042?")
    chat.step()
    chat.step(run_tool=False)
    chat.say("Go on.")
    assert read_conversation(chat.messages, chat.rules).step == 1
    assert "1Z999AA10123456784" in chat.finish()[-1].text


def test_a_recovery_prompt_a_rule_claims_is_a_new_turn() -> None:
    """If a match or contains rule accepts the recovery prompt, that rule answers it."""
    recover = {"rule": [{"contains": "sandbox stopped", "step": [{"text": "Recovered."}]}]}
    rules = parse_scenario(recover, Path("recover.toml")).rules
    chat = Chat([*rules, *rules_of(SUPPORT)])
    chat.say("Where is order 1042?")
    chat.step()
    chat.resume(len(chat.messages), RECOVER_PROMPT)
    assert chat.step().text == "Recovered."


def test_a_question_a_rule_claims_after_a_cut_turn_is_new() -> None:
    """After a turn cut short, a prompt a match rule accepts (the runtime sends the original
    again when it never reached the store) starts over at step 0."""
    chat = Chat(rules_of(SUPPORT))
    chat.say("Where is order 1042?")
    chat.step()
    chat.resume(len(chat.messages), "Can I return order 1038?")
    talk = read_conversation(chat.messages, chat.rules)
    assert (talk.user_text, talk.step, talk.continued) == ("Can I return order 1038?", 0, False)


def test_a_question_after_a_finished_turn_is_new() -> None:
    """Once a turn gave its last scripted reply, a question only the fallback takes gets the
    fallback, however often it is asked."""
    chat = Chat(rules_of(SUPPORT))
    chat.turn("Where is order 1042?")
    for _ in range(2):
        assert FALLBACK in chat.turn("Do you sell tents?")[-1].text
    assert read_conversation(chat.messages, chat.rules).turn == 3


def interrupted_mid_tool(chat: Chat, then: str) -> None:
    """The shape after an interrupt during a tool call and the next prompt: one user message
    with the rejected result, the CLI's note and the prompt."""
    call = chat.messages[-1]["content"][-1]
    result = {"type": "tool_result", "content": TOOL_REJECTED, "is_error": True}
    note = {"type": "text", "text": INTERRUPTED_FOR_TOOL}
    prompt = {"type": "text", "text": then}
    chat.messages.append(
        {"role": "user", "content": [{**result, "tool_use_id": call["id"]}, note, prompt]}
    )


def test_a_question_after_an_interrupted_tool_call_is_new() -> None:
    """After the user interrupts a tool call, a question only the fallback takes gets the
    fallback (it does not go on with the interrupted turn)."""
    chat = Chat(rules_of(SUPPORT))
    chat.say("Where is order 1042?")
    chat.step()
    chat.step(run_tool=False)
    interrupted_mid_tool(chat, "Do you sell tents?")
    talk = read_conversation(chat.messages, chat.rules)
    assert (talk.user_text, talk.turn, talk.step) == ("Do you sell tents?", 2, 0)
    assert FALLBACK in chat.finish()[-1].text


def test_a_question_after_an_interrupted_reply_is_new() -> None:
    """After the user interrupts a reply mid-stream, the next question is a new turn; a
    question a rule takes starts that rule at step 0."""
    chat = Chat(rules_of(SUPPORT))
    chat.say("Where is order 1042?")
    chat.messages.append({"role": "assistant", "content": [{"type": "text", "text": "Let me lo"}]})
    chat.messages.append(
        {
            "role": "user",
            "content": [{"type": "text", "text": INTERRUPTED}, {"type": "text", "text": "hi"}],
        }
    )
    assert "support assistant" in chat.finish()[-1].text
    chat.say("Where is order 1042?")
    assert summary(chat.finish())[-1][1] == "Here is what I found:\n\n" + (
        "Order 1042: shipped on 2026-11-18 via UPS, tracking 1Z999AA10123456784; items: "
        "1 x Ridgeline Rain Jacket (navy, M), 2 x Merino Trail Socks; total $185.00."
    )


def test_a_prompt_interrupted_before_any_reply_gives_way_to_the_next() -> None:
    """Two prompts in one message with the interrupt note between them: the last one is the
    turn, numbered after the interrupted one."""
    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where is order 1042?"},
                {"type": "text", "text": INTERRUPTED},
                {"type": "text", "text": "Do you sell tents?"},
            ],
        }
    ]
    talk = read_conversation(messages, rules_of(SUPPORT))
    assert (talk.user_text, talk.turn, talk.step) == ("Do you sell tents?", 2, 0)


TURN_RULES = {
    "rule": [
        {"contains": "boom", "step": [{"error": {"status": 529}}]},
        {
            "turn": 1,
            "step": [
                {"tool": "Bash", "input": {"command": "one"}},
                {"text": "first: {tool_result}"},
            ],
        },
        {"turn": 2, "step": [{"text": "second turn"}]},
    ]
}


def test_a_continuation_is_not_counted_as_a_turn() -> None:
    """turn = N rules count turns, not prompts: a recovery prompt continues turn 1, and the
    next question is turn 2."""
    chat = Chat(parse_scenario(TURN_RULES, Path("turns.toml")).rules)
    chat.say("start")
    chat.step()
    chat.resume(len(chat.messages) - 1, RECOVER_PROMPT)  # the Bash result was lost
    assert chat.finish()[-1].text.startswith("first: (no canned output")
    assert chat.turn("and then?")[-1].text == "second turn"


def test_a_turn_that_ended_on_an_error_step_is_not_continued() -> None:
    """An error step ends its turn: the next prompt is a new turn, not a retry of the error."""
    chat = Chat(parse_scenario(TURN_RULES, Path("turns.toml")).rules)
    chat.turn("start")
    chat.say("boom")
    assert chat.step().error is not None
    chat.messages.append(
        {"role": "assistant", "content": [{"type": "text", "text": "API Error: 529"}]}
    )
    chat.say("well?")
    talk = read_conversation(chat.messages, chat.rules)
    assert (talk.user_text, talk.turn, talk.continued) == ("well?", 3, False)


def test_an_unmatched_turn_cut_short_is_answered_on_recovery() -> None:
    """With no rule for a question, the recovery prompt still gets the default reply to the
    original question, not to the recovery prompt."""
    chat = Chat([])
    chat.say("anything?")
    chat.resume(len(chat.messages), RECOVER_PROMPT)
    assert chat.step().text == DEFAULT_REPLY.replace("{user}", "anything?")
    chat.say("and this?")
    assert chat.step().text.endswith("You said: and this?")


def test_no_response_text_is_only_a_reply_not_a_rule() -> None:
    """The CLI's 'No response requested.' is never taken for the scripted final answer."""
    chat = Chat(rules_of(SUPPORT))
    chat.turn("Where is order 1042?")
    chat.messages[-1] = {"role": "assistant", "content": [{"type": "text", "text": NO_RESPONSE}]}
    chat.say(RECOVER_PROMPT)
    assert read_conversation(chat.messages, chat.rules).step == 2
    assert choose_reply(chat.messages, chat.rules).text.startswith("Here is what I found:")
