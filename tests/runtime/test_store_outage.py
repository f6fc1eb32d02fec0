"""A transcript store outage in the middle of a turn, through the real stack.

The store is S3 (moto) reached through a loopback proxy the test cuts and restores; the
runtime, the Agent SDK, its CLI and the offline model are the real ones. The turn asks the
agent to run a Bash tool that waits for a file: the test cuts the store while the tool
runs, then lets it finish, so every later transcript write meets the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from claude_agent_sdk import project_key_for_directory

from kit.cli.settings import AWS_VARIABLES
from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from kit.protocol.frames import Event
from kit.protocol.turns import TURN_FAILED
from kit.storage import open_store
from kit.storage.s3 import unique_prefix
from tests.agents import transcript_key, write_agent
from tests.conftest import BUCKET, stack_settings
from tests.host.wsdriver import Driver
from tests.tcpproxy import Cut, CuttableProxy

TURN_TIMEOUT_S = 90.0
WAIT_PROMPT = "wait for go, please"


@dataclass
class Rig:
    """A running stack whose transcript store can be taken away."""

    stack: Stack
    proxy: CuttableProxy
    direct_url: str
    """The same store without the proxy: what the test reads."""


@contextlib.asynccontextmanager
async def outage_rig(
    kit_tmp: Path, s3_endpoint: str, *, retry_s: float, deadline_s: float
) -> AsyncIterator[Rig]:
    """The test agent's stack on an S3 store behind a cuttable proxy, with short store waits."""
    moto = urlsplit(s3_endpoint)
    assert moto.hostname is not None
    assert moto.port is not None
    proxy = CuttableProxy(moto.hostname, moto.port)
    await proxy.start()
    store = f"s3://{BUCKET}/{unique_prefix()}?region=us-east-1&endpoint_url="
    settings = stack_settings(
        kit_tmp / "state",
        write_agent(kit_tmp / "agent"),
        store_url=store + proxy.url,
        sandbox_env={k: v for k, v in os.environ.items() if k in AWS_VARIABLES},
        store_retry_s=retry_s,
        store_deadline_s=deadline_s,
    )
    try:
        async with run_stack(settings) as stack:
            yield Rig(stack, proxy, store + s3_endpoint)
    finally:
        await proxy.aclose()


async def stored_uuids(rig: Rig, session_id: str) -> list[str]:
    """The uuids of the session's main transcript in the store, in order."""
    store: Any = open_store(rig.direct_url)
    entries = await store.load(transcript_key(session_id)) or []
    return [e["uuid"] for e in entries if isinstance(e.get("uuid"), str)]


def written_uuids(rig: Rig, session_id: str) -> list[str]:
    """The uuids of the transcript the CLI wrote to its own disk, in order (the ground truth
    of what the store must end up holding; its uuid-less bookkeeping lines stay local)."""
    sandbox = rig.stack.provider.root / session_id
    local_key = project_key_for_directory(str((sandbox / "workspace").resolve()))
    path = sandbox / "home" / ".claude" / "projects" / local_key / f"{session_id}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e["uuid"] for e in lines if isinstance(e.get("uuid"), str)]


@dataclass
class Seen:
    """What the client saw of one turn."""

    events: list[Event]
    missing_at_result: list[str]
    """Entries the CLI had written but the store lacked when the client got ``result``."""

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    @property
    def store_states(self) -> list[str]:
        return [str(e.data["state"]) for e in self.events if e.kind == "store"]


async def turn_with_outage(
    rig: Rig,
    client: SessionClient,
    session_id: str,
    mode: Cut,
    restore_when: Callable[[Event], bool],
) -> Seen:
    """Run the waiting turn: cut the store once the tool runs, release the tool, restore the
    store at the first event ``restore_when`` accepts."""
    events: list[Event] = []
    missing: list[str] = []
    async with asyncio.timeout(TURN_TIMEOUT_S):
        async for event in client.turn(WAIT_PROMPT):
            events.append(event)
            if event.kind == "tool_use":
                await rig.proxy.cut(mode)
                (rig.stack.provider.workspace(session_id) / "go").write_text("")
            if rig.proxy.cut_mode is not None and restore_when(event):
                await rig.proxy.restore()
            if event.kind == "result":
                stored = set(await stored_uuids(rig, session_id))
                missing = [u for u in written_uuids(rig, session_id) if u not in stored]
    assert rig.proxy.cut_mode is None, "the outage never ended: no event matched restore_when"
    return Seen(events, missing)


async def all_seqs(rig: Rig, session_id: str, token: str) -> list[int]:
    """Every seq a client resuming from 0 is sent."""
    info_url = f"{rig.stack.url.replace('http', 'ws', 1)}/v1/sessions/{session_id}/ws"
    driver = await Driver.open(info_url)
    try:
        await driver.send({"type": "hello", "token": token, "last_seq": 0})
        welcome = await driver.recv()
        await driver.send({"type": "ack", "seq": 0})
        return [int((await driver.recv())["seq"]) for _ in range(int(welcome["last_seq"]))]
    finally:
        await driver.close()


async def assert_nothing_lost(rig: Rig, session_id: str, token: str) -> None:
    """The store holds exactly what the CLI wrote, in order, and the log's seqs have no gap."""
    assert await stored_uuids(rig, session_id) == written_uuids(rig, session_id)
    seqs = await all_seqs(rig, session_id, token)
    assert seqs == list(range(1, len(seqs) + 1))


def is_state(state: str) -> Callable[[Event], bool]:
    """Matches a ``store`` event in ``state``."""
    return lambda e: e.kind == "store" and e.data.get("state") == state


def is_turn_failed(event: Event) -> bool:
    """Matches the ``error`` event that ends a turn."""
    return event.kind == "error" and event.data.get("code") == TURN_FAILED


async def test_a_short_outage_is_waited_out(kit_tmp: Path, s3_endpoint: str) -> None:
    """Store refuses connections mid-turn, back before the give-up wait: the client sees
    unavailable then available, the result comes after every entry is stored, nothing is
    lost and seqs have no gaps."""
    async with outage_rig(kit_tmp, s3_endpoint, retry_s=30, deadline_s=60) as rig:
        info = await create_session(rig.stack.url, rig.stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            seen = await turn_with_outage(
                rig, client, info.session_id, Cut.REFUSE, is_state("unavailable")
            )
        assert seen.missing_at_result == []  # invariant 4
        assert seen.store_states == ["unavailable", "available"]
        assert seen.kinds[-1] == "result"
        assert not seen.events[-1].data["is_error"]
        await assert_nothing_lost(rig, info.session_id, info.token)


async def test_entries_held_past_the_give_up_wait_are_back_filled(
    kit_tmp: Path, s3_endpoint: str
) -> None:
    """Store drops connections for longer than the give-up wait (1 s) but less than the
    deadline: writes give up and are held, the store comes back, they are back-filled in
    order, and only then does the result arrive (the CI once saw the last assistant message
    land between ``available`` and ``result``: that order is fine)."""
    async with outage_rig(kit_tmp, s3_endpoint, retry_s=1, deadline_s=60) as rig:
        info = await create_session(rig.stack.url, rig.stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            seen = await turn_with_outage(
                rig, client, info.session_id, Cut.DROP, is_state("holding")
            )
        assert seen.missing_at_result == []  # invariant 4
        assert seen.store_states == ["unavailable", "holding", "available"]
        # Available, then the result (the CLI may write its last message before or after
        # the store comes back, so only the order of these two is fixed).
        assert seen.kinds[-1] == "result"
        assert seen.kinds.index("result") > max(
            i for i, kind in enumerate(seen.kinds) if kind == "store"
        )
        await assert_nothing_lost(rig, info.session_id, info.token)


async def test_an_outage_past_the_deadline_fails_the_turn_clearly(
    kit_tmp: Path, s3_endpoint: str
) -> None:
    """Store down past the deadline (3 s): the turn ends with store gave_up and error
    turn_failed, no result; once the store is back the held entries land, and the next
    message works."""
    async with outage_rig(kit_tmp, s3_endpoint, retry_s=1, deadline_s=3) as rig:
        info = await create_session(rig.stack.url, rig.stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            failed = await turn_with_outage(
                rig, client, info.session_id, Cut.REFUSE, is_turn_failed
            )
            assert failed.store_states == ["unavailable", "holding", "gave_up"]
            assert "result" not in failed.kinds
            gave_up, error = failed.events[-2:]
            assert (gave_up.kind, gave_up.data["state"]) == ("store", "gave_up")
            assert "unreachable" in gave_up.data["message"]
            assert "next message" in gave_up.data["message"]
            assert gave_up.data["entries"] > 0
            assert (error.kind, error.data["code"]) == ("error", TURN_FAILED)

            async with asyncio.timeout(TURN_TIMEOUT_S):
                after = [e async for e in client.turn("are you there?")]
        assert after[-1].kind == "result"
        assert "You said: are you there?" in after[-1].data["text"]
        assert [e.data["state"] for e in after if e.kind == "store"][-1:] == ["available"]
        # Both turns are stored, the failed one included, in the order the CLI wrote them.
        await assert_nothing_lost(rig, info.session_id, info.token)


async def test_a_sandbox_killed_during_a_store_append_recovers(
    kit_tmp: Path, s3_endpoint: str
) -> None:
    """The sandbox is SIGKILLed while its transcript appends are failing (store cut): the new
    sandbox resumes from what the store has, the store comes back, and the turn ends with
    one result on the same socket, seqs gap-free."""
    async with outage_rig(kit_tmp, s3_endpoint, retry_s=30, deadline_s=60) as rig:
        info = await create_session(rig.stack.url, rig.stack.api_token)
        session = await rig.stack.host.get(info.session_id)
        assert session is not None
        events: list[Event] = []
        killed = False
        async with SessionClient(info.ws_url, info.token) as client:
            async with asyncio.timeout(TURN_TIMEOUT_S):
                await client.send(WAIT_PROMPT)
                async for event in client.events():
                    events.append(event)
                    if event.kind == "tool_use" and not killed:
                        await rig.proxy.cut(Cut.REFUSE)
                        (rig.stack.provider.workspace(info.session_id) / "go").write_text("")
                    if is_state("unavailable")(event) and not killed:  # an append waits
                        sandbox = session.sandbox
                        assert sandbox is not None
                        os.killpg(sandbox.pid, signal.SIGKILL)  # type: ignore[attr-defined]
                        killed = True
                    if event.kind == "sandbox" and event.data.get("state") == "starting":
                        await rig.proxy.restore()
                    if event.kind == "result":
                        break
            reconnects = client.reconnects
        kinds = [(e.kind, e.data.get("state")) for e in events]
        assert ("sandbox", "died") in kinds
        assert [k for k, _ in kinds].count("result") == 1
        assert reconnects == 0
        seqs = await all_seqs(rig, info.session_id, info.token)
        assert seqs == list(range(1, len(seqs) + 1))
