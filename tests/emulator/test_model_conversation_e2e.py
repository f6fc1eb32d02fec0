"""The offline model holds a conversation through the whole stack: the real CLI, host and
sandboxes. Questions asked again, skills used again, and a sandbox SIGKILLed at every tool
boundary of the example agent, each checked on the facts of the final answer."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from emulator.model.scenarios import load_scenario_file
from kit.cli.new import scaffold
from kit.cli.stack import Stack, run_stack
from kit.host.session import Session
from kit.protocol.frames import Event
from kit.runtime.agent import RECOVER_PROMPT
from kit.storage import open_store
from tests.agents import (
    model_requests,
    open_session,
    transcript_key,
    turn_events,
    until_prompt_stored,
)
from tests.conftest import stack_settings

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

FALLBACK = "I can help with Acme Outfitters orders"
SLOW_RULE = """
[[rule]]
name = "slow job"
contains = "slow job"

[[rule.step]]
text = "Starting the slow job."
tool = "Bash"
input = { command = "for i in $(seq 1200); do [ -e go ] && break; sleep 0.05; done; echo released", description = "A slow job" }

[[rule.step]]
text = "The slow job said: {tool_result}"
"""
"""A rule of the developer's own, tried before the scaffold's: a tool call that runs until
a file named ``go`` appears in the workspace (at most 60 s)."""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def support() -> AsyncIterator[Stack]:
    """The example agent's stack, shared by this module's tests (one session each)."""
    root = Path(tempfile.mkdtemp(prefix="kit-test-"))
    root.chmod(0o755)
    try:
        async with run_stack(stack_settings(root / "state")) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scaffolded() -> AsyncIterator[Stack]:
    """The stack of a project `kit new` made, with one extra scenario file of its own, on
    the basic tier rather than lite (1/16 of a CPU), only to keep the test quick."""
    root = Path(tempfile.mkdtemp(prefix="kit-test-"))
    root.chmod(0o755)
    project = scaffold("hello-agent", root)
    config = project / "kit.toml"
    config.write_text(config.read_text().replace('tier = "lite"', 'tier = "basic"', 1))
    (project / "scenarios" / "a-slow.toml").write_text(SLOW_RULE)
    try:
        async with run_stack(stack_settings(root / "state", project)) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tools_and_answer(events: list[Event]) -> tuple[list[str], str]:
    """The tools a turn called, in order, and its result's text."""
    result = [e for e in events if e.kind == "result"]
    assert len(result) == 1, [e.kind for e in events]
    tools = [str(e.data["name"]) for e in events if e.kind == "tool_use"]
    return tools, str(result[0].data["text"])


async def test_every_example_question_asked_twice_gets_the_same_answer(support: Stack) -> None:
    """In one session, each of the example's check questions, asked once and then all again
    (so every skill is used again after another), makes the same tool calls and gives the
    same final answer, which carries the check's fact."""
    checks = load_scenario_file(support.project.root / "scenarios" / "support.toml").checks
    client, _ = await open_session(support)
    rounds = []
    for _ in range(2):
        rounds.append([tools_and_answer(await turn_events(client, c.say)) for c in checks])
    await client.close()
    assert rounds[1] == rounds[0]
    for check, (tools, answer) in zip(checks, rounds[1], strict=True):
        assert tools == list(check.expect_tools or [])
        assert (check.expect_reply or "").lower() in answer.lower()


async def test_the_scaffold_says_hello_twice_with_two_tool_calls_each(scaffolded: Stack) -> None:
    """The `kit new` agent answers a second 'hello' like the first: Skill, then Bash, then the
    script's line."""
    client, _ = await open_session(scaffolded)
    for _ in range(2):
        tools, answer = tools_and_answer(await turn_events(client, "hello"))
        assert tools == ["Skill", "Bash"]
        assert "This reply came from the hello skill's script." in answer
    await client.close()


async def test_a_question_after_an_interrupted_tool_call_is_a_new_turn(scaffolded: Stack) -> None:
    """After the user interrupts a tool call, a message only the fallback takes gets the
    fallback rather than going on with the interrupted turn; 'hello' then works as usual."""
    client, _ = await open_session(scaffolded)
    seen: list[Event] = []
    await client.send("run the slow job")
    async for event in client.events():
        seen.append(event)
        if event.kind == "tool_use":
            await client.interrupt()
        if event.kind == "result":
            break
    assert [e.kind for e in seen].count("tool_use") == 1
    tools, answer = tools_and_answer(await turn_events(client, "what now?", timeout_s=60))
    assert (tools, answer) == ([], "I'm a new kit agent. Say hello and I'll run my hello skill.")
    tools, answer = tools_and_answer(await turn_events(client, "hello", timeout_s=60))
    assert tools == ["Skill", "Bash"]
    assert "hello skill's script" in answer
    await client.close()


async def until_call_stored(stack: Stack, session_id: str, tool: str) -> None:
    """Wait (at most 10 s) until a call of ``tool`` is in the session's transcript store."""
    store: Any = open_store(f"sqlite:///{stack.transcripts_dir / session_id / 'transcript.sqlite'}")
    async with asyncio.timeout(10):
        while True:
            entries = await store.load(transcript_key(session_id)) or []
            if tool in _called(entries):
                return
            await asyncio.sleep(0.05)


def _called(entries: list[dict[str, Any]]) -> list[str]:
    """The tools the assistant entries of a transcript call."""
    names = []
    for entry in entries:
        message = entry.get("message") if entry.get("type") == "assistant" else None
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                names.append(str(block.get("name")))
    return names


async def test_a_call_killed_mid_tool_is_made_again_after_the_recovery_prompt(
    scaffolded: Stack,
) -> None:
    """SIGKILL while a tool runs, once the prompt and the call are in the transcript: the
    runtime sends its recovery prompt, the CLI marks the call interrupted, and the offline
    model makes the call again and answers with the tool's real output."""
    client, session = await open_session(scaffolded)
    say = "run the slow job"
    seen: list[Event] = []
    async with asyncio.timeout(120):
        await client.send(say)
        async for event in client.events():
            seen.append(event)
            if event.kind == "tool_use" and len([e for e in seen if e.kind == "tool_use"]) == 1:
                await until_prompt_stored(scaffolded.settings.state_dir, session.id, say)
                await until_call_stored(scaffolded, session.id, "Bash")
                sandbox = session.sandbox
                assert sandbox is not None
                os.killpg(sandbox.pid, signal.SIGKILL)  # type: ignore[attr-defined]
                (scaffolded.provider.workspace(session.id) / "go").touch()
            if event.kind == "result":
                break
    await client.close()
    tools, answer = tools_and_answer(seen)
    assert (tools, answer) == (["Bash", "Bash"], "The slow job said: released")
    requests = await model_requests(scaffolded)
    asked = [
        json.dumps(r["body"]["messages"])
        for r in requests
        if r["path"] == "/v1/messages" and r["headers"]["x-claude-code-session-id"] == session.id
    ]
    assert RECOVER_PROMPT in asked[-1]  # the path under test: a continued turn, not a re-sent one
    assert "[Tool call interrupted" in asked[-1]


class KillAt:
    """Kills the session's sandbox the moment the turn's ``nth`` event of ``kind`` is
    committed, before any client hears of it."""

    def __init__(self, session: Session, kind: str, nth: int) -> None:
        self.session, self.kind, self.nth = session, kind, nth
        self.count = 0

    def deliver(self, event: Event) -> None:
        if event.kind != self.kind:
            return
        self.count += 1
        if self.count == self.nth:
            sandbox = self.session.sandbox
            assert sandbox is not None
            os.killpg(sandbox.pid, signal.SIGKILL)  # type: ignore[attr-defined]

    def moved(self, message: str) -> None:
        raise AssertionError(message)


QUESTIONS = {
    "order-lookup": ("Where is order 1042?", ["Skill", "Bash"], "1Z999AA10123456784"),
    "returns-policy": ("How do refunds work?", ["Skill", "Read"], "5 business days"),
    "return-eligibility": (
        "Can I return order 1038?",
        ["Skill", "Bash"],
        "returnable until 2026-12-10",
    ),
}
BOUNDARIES = {
    "after-skill-call": ("tool_use", 1),
    "after-skill-result": ("tool_result", 1),
    "mid-second-tool": ("tool_use", 2),
    "after-second-result": ("tool_result", 2),
}


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("question", QUESTIONS)
async def test_a_sandbox_kill_at_a_tool_boundary_still_answers_the_question(
    support: Stack, question: str, boundary: str
) -> None:
    """SIGKILL right after a tool event of the example agent's turn: the turn goes on in a
    new sandbox and its one result carries the question's fact, not the fallback."""
    say, tools, fact = QUESTIONS[question]
    kind, nth = BOUNDARIES[boundary]
    client, session = await open_session(support)
    async with session.quiet():
        session.subscribe(KillAt(session, kind, nth))
    events = await turn_events(client, say, timeout_s=120)
    await client.close()
    died = next(
        i for i, e in enumerate(events) if e.kind == "sandbox" and e.data["state"] == "died"
    )
    before = [str(e.data["name"]) for e in events[:died] if e.kind == "tool_use"]
    assert before[:nth] == tools[:nth]  # the kill came after the boundary it aimed at
    assert [e.kind for e in events[:died]].count(kind) >= nth
    assert "result" not in [e.kind for e in events[:died]]
    _, answer = tools_and_answer(events)
    assert fact in answer
    assert FALLBACK not in answer
