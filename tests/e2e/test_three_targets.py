"""One held conversation against `kit dev`, `kit dev --target fly` and `kit dev --target
cloudflare`: a tool call and its answer, the sandbox killed mid-tool, the host losing the
session mid-turn (its Durable Object evicted; on Fly, where there is none, the gateway
holding the session killed), a second client resuming by `last_seq`. Each target must give
the same kinds of events, turn by turn, and the right answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kit.cli.cfdev import rehearse_cloudflare
from kit.cli.flydev import rehearse_fly
from kit.cli.stack import run_stack
from kit.client import SessionClient, create_session
from kit.protocol.frames import Event
from tests.agents import RECOVERED_REPLY, turn_counting, until_prompt_stored, write_agent
from tests.conftest import stack_settings
from tests.dockerhost import runtime_image
from tests.e2e.test_cloudflare_rehearsal import _prompt_in_the_dos_store
from tests.e2e.test_fly_rehearsal import _lease_owner, _prompt_stored

pytestmark = pytest.mark.slow

TURN_TIMEOUT_S = 180.0
TARGETS = ("local", "fly", "cloudflare")


@dataclass
class Target:
    """A running target as the conversation needs it."""

    url: str
    api_token: str
    prompt_stored: Callable[[str, str], Awaitable[None]]
    """Until (session id, prompt) is in the session's transcript store."""
    lose_the_session: Callable[[str], Awaitable[None]]
    """The host loses the session's in-memory state mid-turn."""

    async def kill_sandbox(self, session_id: str) -> None:
        """`kit sandbox kill --signal KILL`, through the control API."""
        async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
            answer = await http.post(
                f"{self.url}/_kit/sandboxes/{session_id}/kill",
                json={"signal": "KILL"},
                headers={"authorization": f"Bearer {self.api_token}"},
            )
        assert answer.status_code == 202, answer.text


async def _evict(url: str, token: str, session_id: str) -> None:
    """`kit do evict`: the session's Durable Object loses its instance."""
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        answer = await http.post(
            f"{url}/_kit/do/{session_id}/evict", headers={"authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200, answer.text


@contextlib.asynccontextmanager
async def _target(name: str, root: Path) -> AsyncIterator[Target]:
    project = write_agent(root / "agent")
    state = root / "state"
    if name == "local":
        async with run_stack(stack_settings(state, project)) as stack:

            async def local_stored(session_id: str, prompt: str) -> None:
                await until_prompt_stored(state, session_id, prompt)

            async def local_evict(session_id: str) -> None:
                await _evict(stack.url, stack.api_token, session_id)

            yield Target(stack.url, stack.api_token, local_stored, local_evict)
        return
    image = runtime_image().tag  # skips, saying why, where Docker cannot run
    if name == "fly":
        async with rehearse_fly(project, state, image, app="kit-three", lease_ttl_s=5) as fly:

            async def fly_stored(session_id: str, prompt: str) -> None:
                await _prompt_stored(fly, session_id, prompt)

            async def gateway_dies(session_id: str) -> None:
                owner = await _lease_owner(fly, session_id)
                await fly.api.stop_machine(fly.target.app, owner, signal="SIGKILL", timeout_s=1)

            yield Target(fly.url, fly.api_token, fly_stored, gateway_dies)
        return
    async with rehearse_cloudflare(project, state, image) as cf:

        async def cf_stored(session_id: str, prompt: str) -> None:
            await _prompt_in_the_dos_store(cf, session_id, prompt)

        async def cf_evict(session_id: str) -> None:
            await _evict(cf.url, cf.api_token, session_id)

        yield Target(cf.url, cf.api_token, cf_stored, cf_evict)


STREAMED = frozenset({"text_delta"})
"""The kind a reply is cut into as the model streams it: how many is the model's business."""


def _shape(events: list[Event]) -> list[str]:
    """A turn's event kinds in order, a run of one streamed kind as one, sandbox events
    with their state (a repeated sandbox, error or result event stays repeated)."""
    shape: list[str] = []
    for e in events:
        kind = f"sandbox {e.data.get('state')}" if e.kind == "sandbox" else e.kind
        if not (shape and shape[-1] == kind and kind in STREAMED):
            shape.append(kind)
    return shape


async def _conversation(target: Target) -> tuple[list[list[str]], list[str]]:
    """The held conversation; each turn's shape and each answer."""
    info = await create_session(target.url, target.api_token)
    seqs: list[int] = []
    turns: list[list[Event]] = []
    async with SessionClient(info.ws_url, info.token) as client:
        turns.append(await turn_counting(client, "slow", seqs))

        killed = False

        async def kill_mid_tool(event: Event) -> None:
            nonlocal killed
            if event.kind == "tool_use" and not killed:
                killed = True
                await target.prompt_stored(info.session_id, "slow down")
                await target.kill_sandbox(info.session_id)

        turns.append(await turn_counting(client, "slow down", seqs, kill_mid_tool))
        assert killed

        lost = False

        async def lose_mid_turn(event: Event) -> None:
            nonlocal lost
            if event.kind == "tool_use" and not lost:  # the turn is in the sandbox now
                lost = True
                await target.prompt_stored(info.session_id, "wait for go")
                await target.lose_the_session(info.session_id)

        turns.append(await turn_counting(client, "wait for go", seqs, lose_mid_turn))
        assert lost
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, none repeated

    resume_at = turns[0][-1].seq
    async with SessionClient(info.ws_url, info.token, last_seq=resume_at) as late:
        missed: list[int] = []
        async with asyncio.timeout(TURN_TIMEOUT_S):
            async for event in late.events():
                missed.append(event.seq)
                if event.seq == seqs[-1]:
                    break
    assert missed == [s for s in seqs if s > resume_at]
    return [_shape(t) for t in turns], [str(t[-1].data.get("text")) for t in turns]


async def test_the_same_conversation_on_every_target(kit_tmp: Path) -> None:
    shapes: dict[str, list[list[str]]] = {}
    for name in TARGETS:
        async with _target(name, kit_tmp / name) as target:
            shapes[name], answers = await _conversation(target)
        assert "Slow tool said: started-slow-tool" in answers[0], (name, answers)
        assert RECOVERED_REPLY in answers[1], (name, answers)
        assert RECOVERED_REPLY in answers[2], (name, answers)
    shown = json.dumps(shapes, indent=1)
    assert shapes["fly"] == shapes["local"], shown
    assert shapes["cloudflare"] == shapes["local"], shown
