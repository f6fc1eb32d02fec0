"""One conversation, a sandbox killed mid-tool, on each sandbox kind: process groups forked
by the fork server (``--sandbox local``) and containers of kit's runtime image
(``--sandbox docker``), both behind the same gateway library (``kit dev``'s stack). The
user must read the same events and the same answer on both."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from kit.cli.stack import run_stack
from kit.protocol.turns import ends_turn
from tests.agents import (
    RECOVERED_REPLY,
    open_session,
    turn_events,
    until_prompt_stored,
    write_agent,
)
from tests.conftest import stack_settings
from tests.dockerhost import need_docker, runtime_image

TIMEOUT_S = 240.0


def _shape(kind: str, data: dict[str, Any]) -> tuple[Any, ...]:
    """What the user reads of an event, less what differs from run to run (ids, times)."""
    if kind == "sandbox":
        return (
            kind,
            data.get("state"),
            data.get("reason"),
            data.get("exit_code"),
            data.get("resumed"),
        )
    if kind == "result":
        return (kind, data.get("text"), data.get("is_error"))
    if kind in ("text_delta", "assistant"):
        return (kind, str(data.get("text", data))[:200])
    if kind in ("tool_use", "tool_result"):
        return (kind, data.get("name"), str(data.get("content", data.get("input")))[:200])
    return (kind,)


async def _conversation(kit_tmp: Path, sandbox: str) -> list[list[tuple[Any, ...]]]:
    """Two turns on ``sandbox``: one plain, one whose sandbox is SIGKILLed while its Bash
    tool runs; what the user read of each turn."""
    project = write_agent(kit_tmp / f"agent-{sandbox}")
    settings = stack_settings(kit_tmp / f"state-{sandbox}", project, sandbox=sandbox)
    async with run_stack(settings) as stack:
        assert stack.provider.kind == sandbox
        client, session = await open_session(stack)
        first = await turn_events(client, "echo this first", TIMEOUT_S)
        second = []
        async with asyncio.timeout(TIMEOUT_S):
            await client.send("wait for go")
            killed = False
            async for event in client.events():
                second.append(event)
                if event.kind == "tool_use" and not killed:
                    # Once the prompt is in the transcript the new sandbox continues the
                    # turn; killed before that, it would ask again (both are right, but
                    # the race is not what this test compares).
                    await until_prompt_stored(settings.state_dir, session.id, "wait for go")
                    sandbox_now = session.sandbox
                    assert sandbox_now is not None
                    await sandbox_now.kill(signal.SIGKILL)  # mid-tool: it waits for "go"
                    killed = True
                if ends_turn(event.kind, event.data):
                    break
        assert client.reconnects == 0  # the socket stayed open throughout
        await client.close()
    return [[_shape(e.kind, e.data) for e in turn] for turn in (first, second)]


async def test_a_sandbox_killed_mid_tool_reads_the_same_on_every_sandbox_kind(
    kit_tmp: Path,
) -> None:
    """The same conversation on the fork server and in containers: the same events (died
    137 ``killed`` → starting → running → the recovered answer) and the same answer."""
    need_docker()
    runtime_image()
    local = await _conversation(kit_tmp, "local")
    docker = await _conversation(kit_tmp, "docker")
    assert local == docker
    second = local[1]
    died = [s[:4] for s in second].index(("sandbox", "died", "killed", 137))
    assert [s[:2] for s in second[died : died + 3]] == [
        ("sandbox", "died"),
        ("sandbox", "starting"),
        ("sandbox", "running"),
    ]
    assert second[died + 2][4] is True  # the new sandbox resumed the transcript
    assert second[-1][0] == "result"
    assert RECOVERED_REPLY in str(second[-1][1])
