"""`kit dev --target cloudflare`'s rehearsal end to end, no network: the real shim (Worker +
SessionDO) in `wrangler dev`, its containers from kit's container emulator (the bundle
image under Docker, ``--network none``), the offline model behind the DO's model route; a
client talks to it as to ``https://<name>.workers.dev``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.cli.cfdev import CfRehearsal, rehearse_cloudflare
from kit.client import SessionClient, create_session
from kit.protocol.frames import Event
from kit.runtime.agent import stored_user_texts
from kit.storage import open_store
from tests.agents import RECOVERED_REPLY, transcript_key, turn_counting, turn_events, write_agent
from tests.dockerhost import cf_containers, runtime_image

pytestmark = pytest.mark.slow

TURN_TIMEOUT_S = 180.0


async def _kill_the_container(cf: CfRehearsal) -> None:
    """SIGKILL the one running container, as Cloudflare's host would kill it."""
    backend = cf.containers.backend
    running = [c.id for c in backend.containers.values() if c.status()["running"]]
    assert len(running) == 1, running
    await backend.signal(running[0], 9)


async def test_a_conversation_through_the_shim(kit_tmp: Path) -> None:
    """A turn whose tool runs in the DO's container, with the right answer; the container
    killed between turns (the DO logs `sandbox died killed 137`, the next turn starts a new
    one and answers); a second client resuming by `last_seq` gets exactly what it missed."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    async with rehearse_cloudflare(project, kit_tmp / "state", image.tag) as cf:
        info = await create_session(cf.url, cf.api_token)
        seqs: list[int] = []
        async with SessionClient(info.ws_url, info.token) as client:
            first = await turn_counting(client, "slow", seqs)
            kinds = [e.kind for e in first]
            assert "tool_use" in kinds, kinds
            assert "tool_result" in kinds, kinds
            assert first[-1].kind == "result", first[-1]
            assert "Slow tool said: started-slow-tool" in str(first[-1].data["text"])

            await _kill_the_container(cf)
            async with asyncio.timeout(TURN_TIMEOUT_S):
                async for event in client.events():
                    seqs.append(event.seq)
                    if event.kind == "sandbox" and event.data.get("state") == "died":
                        assert (event.data["reason"], event.data["exit_code"]) == ("killed", 137)
                        break

            second = await turn_counting(client, "echo after the kill", seqs)
            states = [e.data.get("state") for e in second if e.kind == "sandbox"]
            assert states == ["starting", "running"], states
            assert second[-1].kind == "result"
            assert "You said: echo after the kill" in str(second[-1].data["text"])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, none repeated

        # A client that saw up to the first turn's result resumes there.
        resume_at = first[-1].seq
        async with SessionClient(info.ws_url, info.token, last_seq=resume_at) as late:
            missed: list[Event] = []
            async with asyncio.timeout(TURN_TIMEOUT_S):
                async for event in late.events():
                    missed.append(event)
                    if event.seq == seqs[-1]:
                        break
        assert [e.seq for e in missed] == [s for s in seqs if s > resume_at]
        assert missed[-1].data["text"] == second[-1].data["text"]
    assert cf_containers(kit_tmp / "state") == []  # the rehearsal removed every container


async def test_spend_limits_hold_at_the_shims_model_route(kit_tmp: Path) -> None:
    """kit.toml's [limits] reach the shim (KIT_LIMITS): limits.turn_tokens = 1000 lets a
    turn's first model call through and refuses the one after its tool, in kit's words,
    told once as an error event before the turn's failed result; the next turn works."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent", extra_toml="\n[limits]\nturn_tokens = 1000\n")
    async with rehearse_cloudflare(project, kit_tmp / "state", image.tag) as cf:
        info = await create_session(cf.url, cf.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            events = await turn_events(client, "slow")
            kinds = [e.kind for e in events]
            assert "tool_result" in kinds, kinds
            refusals = [e.data for e in events if e.kind == "error"]
            assert [r["code"] for r in refusals] == ["spend_limit"], refusals
            message = refusals[0]["message"]
            assert re.fullmatch(
                r"kit's model proxy refused a model call: this turn has used [0-9,]+ model "
                r"tokens, reaching limits\.turn_tokens = 1000 in kit\.toml\. Send another "
                r"message to start a new turn, or raise the limit\.",
                message,
            ), message
            assert kinds.index("error") < kinds.index("result")
            assert events[-1].data["is_error"] is True
            assert events[-1].data["text"] == f"API Error: 402 {message}"

            again = await turn_events(client, "echo hello again")
            assert [e for e in again if e.kind == "error"] == []
            assert again[-1].kind == "result"
            assert again[-1].data["is_error"] is False, again[-1].data


async def _prompt_in_the_dos_store(cf: CfRehearsal, session_id: str, prompt: str) -> None:
    """Until ``prompt`` is in the session's transcript in its DO (read over the store's
    HTTP side with an API store token; at most a minute)."""
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        answer = await http.post(
            f"{cf.url}/v1/sessions/{session_id}/store-token",
            headers={"authorization": f"Bearer {cf.api_token}"},
        )
    assert answer.status_code == 201, answer.text
    grant = answer.json()
    store: Any = open_store(grant["store_url"], token=grant["token"])
    for _ in range(600):
        entries = await store.load(transcript_key(session_id)) or []
        if prompt in stored_user_texts(entries):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{prompt!r} never reached the transcript in the DO")


async def test_a_container_killed_mid_tool_the_turn_finishes_from_the_dos_store(
    kit_tmp: Path,
) -> None:
    """The container is SIGKILLed while its tool runs: the DO logs `sandbox died killed
    137`, starts a new container, and the runtime there resumes the SDK session from the
    transcript in the DO's store (the offline model answers the recovery prompt), so the
    user reads the recovered answer; the conversation then goes on."""
    image = runtime_image()
    project = write_agent(kit_tmp / "agent")
    async with rehearse_cloudflare(project, kit_tmp / "state", image.tag) as cf:
        info = await create_session(cf.url, cf.api_token)
        seqs: list[int] = []
        async with SessionClient(info.ws_url, info.token) as client:
            first = await turn_counting(client, "echo this first", seqs)
            assert "You said: echo this first" in str(first[-1].data["text"])
            killed = False

            async def kill_mid_tool(event: Event) -> None:
                nonlocal killed
                if event.kind == "tool_use" and not killed:
                    killed = True
                    await _prompt_in_the_dos_store(cf, info.session_id, "slow")
                    await _kill_the_container(cf)

            second = await turn_counting(client, "slow", seqs, kill_mid_tool)
            assert killed
            assert second[-1].kind == "result", second[-1]
            assert RECOVERED_REPLY in str(second[-1].data["text"])
            died = [e for e in second if e.kind == "sandbox" and e.data.get("state") == "died"]
            assert [(e.data["reason"], e.data["exit_code"]) for e in died] == [("killed", 137)]
            third = await turn_counting(client, "echo after the recovery", seqs)
            assert "You said: echo after the recovery" in str(third[-1].data["text"])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, none repeated
