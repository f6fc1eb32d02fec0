"""`kit logs` against a running stack: a finished turn's events, and `--follow` across the
stored/live handover, a turn started after it attached, Ctrl-C and the host stopping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from tests.agents import turn_events, write_agent
from tests.cli.test_sessions import kit
from tests.conftest import stack_settings
from tests.kitproc import spawn_kit


class Follower:
    """A `kit logs SESSION --follow --json` process and the events it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, stack: Stack, session_id: str) -> Follower:
        """Start following ``session_id`` on ``stack``."""
        proc = await spawn_kit(
            "logs",
            session_id,
            "--follow",
            "--json",
            env={**os.environ, "KIT_STATE_DIR": str(stack.settings.state_dir)},
            # Ctrl-C reaches it even when the test run itself was started in the background
            # (a shell's `cmd &` ignores SIGINT, and a child inherits an ignored signal).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        return cls(proc)

    async def until(self, seq: int, timeout_s: float = 60) -> None:
        """Read printed events until one with ``seq`` (at most ``timeout_s``)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while not self.events or self.events[-1]["seq"] < seq:
                line = await self.proc.stdout.readline()
                assert line, "kit logs --follow ended early"
                self.events.append(json.loads(line))

    async def ended(self, timeout_s: float = 30) -> tuple[int, str]:
        """Its exit code and stderr, once it has exited (at most ``timeout_s``)."""
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), timeout_s)
        except TimeoutError:  # say what the process was doing (signal masks, kernel wait)
            proc = Path(f"/proc/{self.proc.pid}")
            status = [
                line
                for line in (proc / "status").read_text().splitlines()
                if line.startswith(("State", "Sig", "Shd"))
            ]
            raise AssertionError(
                f"kit logs did not exit: {status}, wchan {(proc / 'wchan').read_text()!r}"
            ) from None
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()


async def test_logs_prints_a_finished_turn(stack: Stack) -> None:
    """`kit logs` shows the turn as `kit chat` does; `--json` gives every stored event once."""
    info = await create_session(stack.url, stack.api_token)
    async with SessionClient(info.ws_url, info.token) as client:
        events = [e async for e in client.turn("Where is my order 1042?")]
    shown = await kit(stack, "logs", info.session_id)
    as_json = await kit(stack, "logs", info.session_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert "> Where is my order 1042?" in shown.stdout
    assert "⚙ Bash" in shown.stdout
    assert "1Z999AA10123456784" in shown.stdout
    assert as_json.returncode == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, events[-1].seq + 1))
    stored = {x["seq"]: (x["kind"], x["data"]) for x in lines}
    assert all(stored[e.seq] == (e.kind, e.data) for e in events)


async def test_follow_gets_every_event_once_across_the_handover(kit_tmp: Path) -> None:
    """Attached mid-turn, then a turn after attaching: seqs 1..n once each; Ctrl-C exits 0."""
    async with run_stack(
        stack_settings(kit_tmp / "state", write_agent(kit_tmp / "agent"))
    ) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            await turn_events(client, "hello")
            await client.send("trickle the reply")  # commits keep coming while it attaches
            async with asyncio.timeout(60):
                async for event in client.events():
                    if event.kind == "text_delta":
                        break
            follower = await Follower.start(stack, info.session_id)
            async with asyncio.timeout(60):  # the rest of the trickling turn
                async for event in client.events():
                    if event.kind == "result":
                        break
            await follower.until(event.seq)
            after = await turn_events(client, "a turn after it attached")
            await follower.until(after[-1].seq)
        assert follower.proc.returncode is None  # still following
        follower.proc.send_signal(signal.SIGINT)
        code, err = await follower.ended()
    assert (code, err) == (0, "")
    seqs = [e["seq"] for e in follower.events]
    assert seqs == list(range(1, after[-1].seq + 1))
    assert [e["data"].get("text") for e in follower.events if e["kind"] == "user"][-1] == (
        "a turn after it attached"
    )


async def test_follow_ends_cleanly_when_the_host_stops(kit_tmp: Path) -> None:
    """The host shuts down under a follower: it prints the rest, then exits 0."""
    async with run_stack(stack_settings(kit_tmp / "state")) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            events = [e async for e in client.turn("hello")]
        follower = await Follower.start(stack, info.session_id)
        await follower.until(events[-1].seq)
    code, err = await follower.ended()
    assert (code, err) == (0, "")
