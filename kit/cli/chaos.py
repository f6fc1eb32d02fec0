"""Chaos: many sessions talking while their sandboxes are SIGKILLed at random moments.

Used by the bounded chaos test and by ``bench/chaos.py``. It runs the real local stack (real
sandboxes, real Claude Code CLI, offline model) on a small agent whose turns stream text and
run a Bash tool, so a kill lands before the first token, mid-stream, mid-tool or during a
store append. Afterwards every session's client-side view is checked against the host's log.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.cli.settings import DevSettings
from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from kit.protocol.turns import ends_turn

RECOVERED = "Recovered after a sandbox restart."

SCENARIO = r"""
[[rule]]
name = "recover"
contains = "Your sandbox stopped before you finished"
[[rule.step]]
text = "RECOVERED"
delay_ms = 20

[[rule]]
name = "work"
match = 'job (\d+)'
[[rule.step]]
text = "Starting job {match[1]}, this takes a moment."
delay_ms = 150
chunk_chars = 8
tool = "Bash"
input = { command = "sleep 0.4; echo job-{match[1]}-done", description = "work" }
[[rule.step]]
text = "Job finished: {tool_result}"
delay_ms = 100
chunk_chars = 8
""".replace("RECOVERED", RECOVERED)


def write_chaos_agent(root: Path, tier: str = "basic") -> Path:
    """The chaos agent's project (Bash allowed, the scenario above) on ``tier``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "kit.toml").write_text(
        '[agent]\nname = "chaos-agent"\nallowed_tools = ["Bash"]\nmax_turns = 6\n\n'
        f'[sandbox]\ntier = "{tier}"\n'
    )
    (root / "scenarios").mkdir(exist_ok=True)
    (root / "scenarios" / "chaos.toml").write_text(SCENARIO)
    return root


@dataclass
class SessionReport:
    """One session's outcome."""

    session_id: str
    turns_sent: int
    turns_completed: int = 0
    turns_failed: int = 0
    events_seen: int = 0
    host_events: int = 0
    duplicates_on_wire: int = 0
    gaps: list[int] = field(default_factory=list)


@dataclass
class ChaosReport:
    """The whole run."""

    sessions: list[SessionReport]
    kills: int
    duration_s: float
    resume_latencies_s: list[float]

    @property
    def events_lost(self) -> int:
        """Events in the host's log that some client never received."""
        return sum(max(0, s.host_events - s.events_seen) for s in self.sessions) + sum(
            len(s.gaps) for s in self.sessions
        )

    @property
    def events_duplicated(self) -> int:
        """Events a client received more than once (dropped by its protocol layer)."""
        return sum(s.duplicates_on_wire for s in self.sessions)

    @property
    def turns_completed(self) -> int:
        """Turns that ended with a result."""
        return sum(s.turns_completed for s in self.sessions)

    @property
    def turns_sent(self) -> int:
        """User messages sent."""
        return sum(s.turns_sent for s in self.sessions)

    def summary(self) -> str:
        """The figures, one per line."""
        lat = sorted(self.resume_latencies_s)

        def pct(q: float) -> str:
            if not lat:
                return "n/a"
            return f"{lat[min(len(lat) - 1, round(q / 100 * (len(lat) - 1)))] * 1000:.0f} ms"

        return "\n".join(
            [
                f"sessions            {len(self.sessions)}",
                f"kills               {self.kills}",
                f"turns completed     {self.turns_completed} / {self.turns_sent}",
                f"events lost         {self.events_lost}",
                f"events duplicated   {self.events_duplicated}",
                f"resume latency      p50 {pct(50)}  p95 {pct(95)}  (n={len(lat)}, kill → first event of the resumed turn)",
                f"duration            {self.duration_s:.1f} s",
            ]
        )


async def run_chaos(
    *,
    sessions: int,
    kills: int,
    interval_s: float = 1.0,
    min_turns: int = 2,
    think_s: tuple[float, float] = (0.5, 2.5),
    seed: int = 0,
    max_seconds: float = 600.0,
    isolation: str = "auto",
    tier: str = "basic",
) -> ChaosReport:
    """Run ``sessions`` talking continuously while one sandbox with a turn in progress is
    SIGKILLed every ``interval_s`` (random session, random moment) until ``kills`` kills.

    Sessions pause ``think_s`` (a uniform range, seconds) between turns, as people do; with
    an instant offline model and no pauses, a few sessions alone saturate two cores.
    ``tier``: the agent's sandbox tier (``basic``'s 1/4 vCPU bounds how fast a new
    sandbox's runtime and CLI start).
    """
    rng = random.Random(seed)
    state = Path(tempfile.mkdtemp(prefix="kit-chaos-"))
    os.chmod(state, 0o755)
    project = write_chaos_agent(state / "agent", tier)
    settings = DevSettings(
        project_dir=project, state_dir=state / "state", port=0, sandbox_isolation=isolation
    )
    started = time.monotonic()
    async with run_stack(settings) as stack:
        killer = _Killer(stack, kills, interval_s, rng)
        killing = asyncio.create_task(killer.run())
        try:
            reports = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        _session(
                            stack, i, min_turns, killer, think_s, random.Random(seed * 1000 + i)
                        )
                        for i in range(sessions)
                    )
                ),
                max_seconds,
            )
        finally:
            killer.stop()
            await killing
    return ChaosReport(list(reports), killer.kills, time.monotonic() - started, killer.latencies)


class _Killer:
    """Every ``interval`` seconds, SIGKILLs the sandbox of a random session with a turn open."""

    def __init__(self, stack: Stack, budget: int, interval: float, rng: random.Random) -> None:
        self.stack, self.budget, self.interval, self.rng = stack, budget, interval, rng
        self.kills = 0
        self.latencies: list[float] = []
        self.kill_times: dict[str, float] = {}  # session → time of a mid-turn kill
        self.done = asyncio.Event()
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        self.done.set()

    async def run(self) -> None:
        while not self._stopped and self.kills < self.budget:
            await asyncio.sleep(self.interval * self.rng.uniform(0.5, 1.5))
            candidates = [
                s
                for s in self.stack.host.live_sessions()
                if s.sandbox is not None
                and s.id not in self.kill_times
                and await s.log.open_turns()
            ]
            if not candidates:
                continue
            session = self.rng.choice(candidates)
            pid = getattr(session.sandbox, "pid", None)
            if pid is None:
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills += 1
            self.kill_times[session.id] = time.monotonic()
        self.done.set()

    def died(self, session_id: str, mid_turn: bool) -> None:
        """A death was seen; one outside a turn resumes nothing, so it is not timed."""
        if not mid_turn:
            self.kill_times.pop(session_id, None)

    def resumed(self, session_id: str) -> None:
        """The first event of a resumed turn arrived."""
        killed = self.kill_times.pop(session_id, None)
        if killed is not None:
            self.latencies.append(time.monotonic() - killed)


async def _session(
    stack: Stack,
    index: int,
    min_turns: int,
    killer: _Killer,
    think_s: tuple[float, float],
    rng: random.Random,
) -> SessionReport:
    info = await create_session(stack.url, stack.api_token)
    report = SessionReport(info.session_id, 0)
    seen: list[int] = []
    async with SessionClient(info.ws_url, info.token) as client:
        while report.turns_sent < min_turns or not killer.done.is_set():
            if report.turns_sent:
                await asyncio.sleep(rng.uniform(*think_s))  # a person reading the reply
            report.turns_sent += 1
            msg_id = await client.send(f"please run job {index * 1000 + report.turns_sent}")
            turn_id = None
            restarted = False
            async for event in client.events():
                seen.append(event.seq)
                if event.kind == "user" and event.data.get("client_msg_id") == msg_id:
                    turn_id = event.turn_id
                if event.kind == "sandbox" and event.data.get("state") == "died":
                    killer.died(
                        info.session_id, mid_turn=turn_id is not None and event.turn_id == turn_id
                    )
                if turn_id is None or event.turn_id != turn_id:
                    continue
                if event.kind == "sandbox":
                    restarted = restarted or event.data.get("state") == "running"
                    continue
                if restarted:
                    killer.resumed(info.session_id)
                    restarted = False
                if ends_turn(event.kind, event.data):
                    if event.kind == "result":
                        report.turns_completed += 1
                    else:
                        report.turns_failed += 1
                    break
        session = await stack.host.get(info.session_id)
        assert session is not None
        # Drain: whatever the host logged after the last result (a late sandbox event) must
        # reach the client too.
        async with asyncio.timeout(30):
            while (client.last_seq or 0) < session.log.last_seq:
                event = await anext(aiter(client.events()))
                seen.append(event.seq)
        report.duplicates_on_wire = client.duplicates_dropped
    report.host_events = session.log.last_seq
    report.events_seen = len(set(seen))
    report.gaps = [s for s in range(1, (max(seen) if seen else 0) + 1) if s not in set(seen)]
    if len(seen) != len(set(seen)):
        report.duplicates_on_wire += len(seen) - len(set(seen))
    return report
