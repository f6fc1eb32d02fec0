"""Spend limits end to end: the real SDK and CLI in a sandbox, calling the offline model
through the host's model proxy, with [limits] in the project's kit.toml.

What is asserted is what a user reads (the ``error`` event's text, the turn's ``result``)
and what the offline model was asked (its request log): nothing after the limit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from kit.protocol.frames import Event
from tests.agents import turn_events, write_agent
from tests.conftest import stack_settings

SCENARIO = """
[[rule]]
name = "tool then answer"
contains = "use the tool"
[[rule.step]]
text = "Running it."
tool = "Bash"
input = { command = "echo tool-ran", description = "run" }
[[rule.step]]
text = "The tool said: {tool_result}"

[[rule]]
name = "echo"
[[rule.step]]
text = "You said: {user}"
"""


def _project(root: Path, limits: str) -> Path:
    project = write_agent(root, extra_toml=f"\n[limits]\n{limits}\n")
    (project / "scenarios" / "test.toml").write_text(SCENARIO)
    return project


def _model_calls(stack: Stack) -> int:
    assert stack.model_requests is not None
    return sum(e["path"] == "/v1/messages" for e in stack.model_requests.entries())


def _refusals(events: list[Event]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.kind == "error" and e.data.get("code") == "spend_limit"]


def _result(events: list[Event]) -> dict[str, Any]:
    assert events[-1].kind == "result", [(e.kind, e.data) for e in events]
    return events[-1].data


async def test_a_turn_past_its_token_limit_is_refused_and_the_next_turn_works(
    kit_tmp: Path,
) -> None:
    """limits.turn_tokens = 1000: the turn's first model call goes through (about 1,700
    tokens), the one after the tool is refused before it reaches the model; the user reads
    an error naming the setting, the turn ends, and the next turn has a fresh budget."""
    project = _project(kit_tmp / "agent", "turn_tokens = 1000")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            events = await turn_events(client, "please use the tool")
            calls = _model_calls(stack)
            assert calls == 1
            kinds = [e.kind for e in events]
            assert "tool_use" in kinds
            assert "tool_result" in kinds
            (refusal,) = _refusals(events)
            assert refusal["setting"] == "limits.turn_tokens"
            assert re.fullmatch(
                r"kit's model proxy refused a model call: this turn has used [0-9,]+ model "
                r"tokens, reaching limits\.turn_tokens = 1000 in kit\.toml\. Send another "
                r"message to start a new turn, or raise the limit\.",
                refusal["message"],
            ), refusal["message"]
            assert kinds.index("error") < kinds.index("result")
            result = _result(events)
            assert result["is_error"] is True
            assert result["text"] == f"API Error: 402 {refusal['message']}"

            events = await turn_events(client, "hello again")
            assert _refusals(events) == []
            result = _result(events)
            assert result["is_error"] is False
            assert _model_calls(stack) == calls + 1


async def test_a_model_outside_the_allowlist_is_never_called(kit_tmp: Path) -> None:
    """limits.models without the CLI's default model: every call is refused before it is
    forwarded, each turn says so, and the offline model is asked nothing."""
    project = _project(kit_tmp / "agent", 'models = ["claude-haiku-4-5*"]')
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            for text in ("hello", "hello again"):
                events = await turn_events(client, text)
                (refusal,) = _refusals(events)
                assert refusal["setting"] == "limits.models"
                assert re.fullmatch(
                    r"kit's model proxy refused a call to model '[a-z0-9-]+': it is not in "
                    r'limits\.models = \["claude-haiku-4-5\*"\] in kit\.toml\. Set agent\.model '
                    r"to an allowed model, or add this one to limits\.models\.",
                    refusal["message"],
                ), refusal["message"]
                assert _result(events)["is_error"] is True
        assert _model_calls(stack) == 0
        assert stack.proxy.requests_forwarded == 0


async def test_a_spent_session_stays_refused_across_a_host_restart(kit_tmp: Path) -> None:
    """limits.session_tokens: turns go through until the session has reached it, then every
    turn is refused with the same setting, also after the host restarts (its totals start
    from the stored results)."""
    project = _project(kit_tmp / "agent", "session_tokens = 3000")
    state = kit_tmp / "state"
    async with run_stack(stack_settings(state, project)) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            for text in ("one", "two"):  # about 1,700 tokens each
                assert _result(await turn_events(client, text))["is_error"] is False
            refused = await turn_events(client, "three")
            last_seq = client.last_seq
        (refusal,) = _refusals(refused)
        assert refusal["setting"] == "limits.session_tokens"
        assert "reaching limits.session_tokens = 3000 in kit.toml" in refusal["message"]
        assert "start a new session" in refusal["message"]
        assert _model_calls(stack) == 2
    async with run_stack(stack_settings(state, project)) as stack:
        ws_url = stack.url.replace("http", "ws", 1) + f"/v1/sessions/{info.session_id}/ws"
        async with SessionClient(ws_url, info.token, last_seq=last_seq) as client:
            events = await turn_events(client, "four")
        (refusal,) = _refusals(events)
        assert refusal["setting"] == "limits.session_tokens"
        assert _result(events)["is_error"] is True
        assert _model_calls(stack) == 0
