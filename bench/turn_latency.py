"""Turn latency through `kit dev` beside the same work on the Agent SDK alone.

    .venv/bin/python bench/turn_latency.py [--turns 30] [--sessions 10]
        [--durability fsync|os] [--warm-only] [--profile FILE] [--timeline]
        [--hops --isolation off]

(a) a warm turn in an open session: kit client → host → sandbox runtime → CLI → proxy →
    offline model, versus a turn on an open ClaudeSDKClient talking to the same model;
(b) the first turn of a new session versus a one-shot ``claude_agent_sdk.query``, with
    kit's sandbox pool (``--pool``, default 2 as in ``kit dev``): the session's sandbox
    was started ahead of it;
(c) the same with no pool: the sandbox starts on the first message.
Both sides use the example agent's options and the same offline model (its greeting rule,
a text-only reply). Prints p50/p95 in ms and the ratios. ``--profile`` writes a cProfile
of this process (the host, the model proxy and the offline model; not the sandbox's runtime
or CLI) over the warm turns; ``--warm-only`` stops after (a). ``--hops`` prints when a warm
turn passed each hop between kit's processes (client, host, runtime, model proxy, offline
model: :mod:`kit.hoptrace`), beside the SDK's own, p50 of the turns.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage, query
from claude_agent_sdk.types import StreamEvent

from kit import hoptrace
from kit.bundle import Bundle
from kit.cli.settings import EXAMPLE_PROJECT, DevSettings
from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from kit.durability import Durability
from kit.hoptrace import hop

PROMPT = "hello there"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, in ms."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index] * 1000


def sdk_options(stack: Stack, bundle: Bundle, home: Path) -> ClaudeAgentOptions:
    """The runtime's options, minus the store, pointed straight at the offline model."""
    assert stack.model_url is not None
    assert stack.model_key is not None
    home.mkdir(parents=True, exist_ok=True)
    tools = list(bundle.agent.allowed_tools)
    return ClaudeAgentOptions(
        cwd=str(home),
        system_prompt=bundle.agent.system_prompt or None,
        tools=tools,
        allowed_tools=tools,
        permission_mode="dontAsk",
        max_turns=bundle.agent.max_turns,
        setting_sources=[],
        plugins=[{"type": "local", "path": str(bundle.plugin_dir)}],
        include_partial_messages=True,
        env={
            "HOME": str(home),
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "TMPDIR": str(home),
            "ANTHROPIC_BASE_URL": stack.model_url,
            "ANTHROPIC_API_KEY": stack.model_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
            "CLAUDE_CODE_DISABLE_BUNDLED_SKILLS": "1",
        },
    )


Timeline = dict[str, dict[str, list[float]]]
"""Per side ("kit", "sdk"): seconds from sending a turn to the first of each kind of
message the client got (kit's event kinds; the SDK's message classes and stream events)."""


async def warm(
    stack: Stack,
    options: ClaudeAgentOptions,
    turns: int,
    profile: Path | None = None,
    timeline: Timeline | None = None,
) -> tuple[list[float], list[float]]:
    """Warm turns on one open kit session and one open ClaudeSDKClient, interleaved."""
    info = await create_session(stack.url, stack.api_token)
    kit_times: list[float] = []
    sdk_times: list[float] = []
    profiler = cProfile.Profile()
    async with SessionClient(info.ws_url, info.token) as kit, ClaudeSDKClient(options) as sdk:
        for i in range(turns + 5):
            if i == 5 and profile is not None:
                profiler.enable()
            kit_seen: dict[str, float] = {}
            sdk_seen: dict[str, float] = {}
            hop(TURN_SENT)
            t0 = time.perf_counter()
            async for event in kit.turn(PROMPT):
                kit_seen.setdefault(event.kind, time.perf_counter() - t0)
                hop(f"client: {event.kind}")
            hop(QUERY_SENT)
            t1 = time.perf_counter()
            await sdk.query(PROMPT)
            async for message in sdk.receive_response():
                name = type(message).__name__
                if isinstance(message, StreamEvent):
                    name = f"stream {message.event.get('type', '')}"
                sdk_seen.setdefault(name, time.perf_counter() - t1)
                hop(f"sdk: {name}")
                if isinstance(message, ResultMessage):
                    break
            t2 = time.perf_counter()
            if i >= 5:  # warm-up
                kit_times.append(t1 - t0)
                sdk_times.append(t2 - t1)
                if timeline is not None:
                    for side, seen in (("kit", kit_seen), ("sdk", sdk_seen)):
                        for name, at in seen.items():
                            timeline.setdefault(side, {}).setdefault(name, []).append(at)
    if profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return kit_times, sdk_times


async def first(
    stack: Stack, options: ClaudeAgentOptions, sessions: int
) -> tuple[list[float], list[float]]:
    """New kit session → first result (sandbox start included) vs one-shot query(), interleaved."""
    kit_times: list[float] = []
    sdk_times: list[float] = []
    for i in range(sessions + 1):
        t0 = time.perf_counter()
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            async for _ in client.turn(PROMPT):
                pass
        t1 = time.perf_counter()
        session = await stack.host.get(info.session_id)
        if session is not None and session.sandbox is not None:
            await session.sandbox.stop()  # one sandbox at a time, like the baseline
        await pool_refilled(stack)  # the next session finds a spare, as on a quiet host
        await stack.provider.settled()  # both sides start from an idle machine
        # A new session starts from a clean config dir on both sides (a reused one saves the
        # CLI ~25 ms; see docs/benchmarks.md).
        fresh = sdk_options(stack, stack.bundle, Path(options.cwd or ".").parent / f"sdk-first-{i}")
        t2 = time.perf_counter()
        async for _ in query(prompt=PROMPT, options=fresh):
            pass
        t3 = time.perf_counter()
        if i >= 1:  # warm-up
            kit_times.append(t1 - t0)
            sdk_times.append(t3 - t2)
    return kit_times, sdk_times


async def pool_refilled(stack: Stack, timeout_s: float = 60.0) -> None:
    """Wait until the sandbox pool is full again (no-op without a pool)."""
    pool = stack.pool
    if pool is None:
        return
    for _ in range(int(timeout_s / 0.02)):
        if pool.spares >= pool.size:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the sandbox pool did not refill within {timeout_s:g} s")


TURN_SENT = "client: turn sent"
QUERY_SENT = "sdk: query sent"


def print_hops(folder: Path, warmup: int = 5) -> None:
    """Each side's hops in the order they are passed: the first mark of each kind after a
    turn was sent, ms, p50 of the turns after the ``warmup`` (kinds seen in most turns)."""
    turns: dict[str, list[dict[str, float]]] = {TURN_SENT: [], QUERY_SENT: []}
    first: dict[str, float] | None = None
    start = 0
    for ns, label in hoptrace.read(str(folder)):
        if label in turns:
            first, start = {}, ns
            turns[label].append(first)
        elif first is not None:
            first.setdefault(label, (ns - start) / 1e6)
    for side, name in ((TURN_SENT, "kit"), (QUERY_SENT, "SDK alone")):
        kept = turns[side][warmup:]
        seen: dict[str, list[float]] = {}
        for marks in kept:
            for label, ms in marks.items():
                seen.setdefault(label, []).append(ms)
        print(f"{name}: ms after the turn was sent, p50 of {len(kept)} turns")
        for label, times in sorted(seen.items(), key=lambda kv: statistics.median(kv[1])):
            if 2 * len(times) > len(kept):
                print(f"  {statistics.median(times):7.2f}  {label}")


def print_timeline(timeline: Timeline) -> None:
    """Each side's kinds in the order they arrive, p50 ms from the turn's start."""
    for side, seen in timeline.items():
        print(f"{side}: first arrival of each kind, ms after the turn was sent (p50)")
        for name, times in sorted(seen.items(), key=lambda kv: statistics.median(kv[1])):
            print(f"  {name:32s} {pct(times, 50):7.2f}  (n={len(times)})")


def write_json(path: Path | None, measures: dict[str, tuple[list[float], list[float]]]) -> None:
    """p50 and p95 (seconds) of kit and the SDK per measure, for bench/all.py."""
    if path is None:
        return
    out = {
        name: {
            side: {"p50": pct(values, 50) / 1000, "p95": pct(values, 95) / 1000}
            for side, values in (("kit", kit), ("sdk", sdk))
        }
        for name, (kit, sdk) in measures.items()
    }
    path.write_text(json.dumps(out, indent=2) + "\n")


def row(label: str, kit: list[float], sdk: list[float]) -> str:
    """One table row: p50/p95 of both, the ratio and difference at p50, and the median of
    the paired differences (each kit sample minus the SDK's run next to it: the machine's
    drift between samples cancels, so it is the steadier estimate of kit's overhead)."""
    k50, k95, s50, s95 = pct(kit, 50), pct(kit, 95), pct(sdk, 50), pct(sdk, 95)
    paired = statistics.median(k - s for k, s in zip(kit, sdk, strict=True)) * 1000
    return (
        f"| {label} | {k50:.1f} / {k95:.1f} | {s50:.1f} / {s95:.1f} | "
        f"{k50 / s50:.3f} | {k50 - s50:+.1f} | {paired:+.1f} ({paired / s50:+.1%}) |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--pool", type=int, default=2, help="KIT_SANDBOX_POOL for (a) and (b)")
    parser.add_argument(
        "--tier",
        default="standard-4",
        help="the agent's tier (default standard-4: its 4-vCPU quota never binds on a 2-core "
        "machine, so kit's overhead is compared with an unthrottled SDK; under `basic` kit's "
        "sandbox gets 1/4 vCPU while the SDK baseline does not)",
    )
    parser.add_argument(
        "--isolation",
        choices=["auto", "bwrap", "off"],
        default="auto",
        help="as KIT_SANDBOX_ISOLATION",
    )
    parser.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default=Durability.OS.value,
        help="KIT_DURABILITY of the event logs (default os, as kit dev)",
    )
    parser.add_argument("--warm-only", action="store_true", help="measure (a) only")
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="(a): print when each kind of event or message first reached each client (p50)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile this process over (a)")
    parser.add_argument(
        "--hops",
        action="store_true",
        help="(a): print when a turn passed each hop between kit's processes (with "
        "--isolation off: a confined sandbox cannot write the trace)",
    )
    parser.add_argument("--json", type=Path, help="also write p50/p95 (s) here as JSON")
    args = parser.parse_args()
    if args.hops and args.isolation != "off":
        parser.error("--hops needs --isolation off: a confined sandbox cannot write the trace")
    state = Path(tempfile.mkdtemp(prefix="kit-bench-"))
    os.chmod(state, 0o755)
    hops = state / "hops"
    if args.hops:
        hops.mkdir()
        os.chmod(hops, 0o1777)  # the sandbox user writes its runtime's marks here, as /tmp
        os.environ[hoptrace.ENV] = str(hops)  # before anything marks: read once per process
    project = state / "project"
    shutil.copytree(EXAMPLE_PROJECT, project, ignore=shutil.ignore_patterns(".kit"))
    toml = project / "kit.toml"
    toml.write_text(re.sub(r'(?m)^tier = ".*"$', f'tier = "{args.tier}"', toml.read_text()))
    settings = DevSettings(
        project_dir=project,
        state_dir=state,
        port=0,
        force_offline_model=True,
        sandbox_isolation=args.isolation,
        pool_size=args.pool,
        durability=Durability(args.durability),
    )
    async with run_stack(settings) as stack:
        options = sdk_options(stack, stack.bundle, state / "sdk-home")
        timeline: Timeline | None = {} if args.timeline else None
        warm_kit, warm_sdk = await warm(stack, options, args.turns, args.profile, timeline)
        if timeline is not None:
            print_timeline(timeline)
        if args.hops:
            print_hops(hops)
        if args.warm_only:
            print(f"turn latency, ms (p50 / p95); {args.turns} warm turns, {args.durability}")
            print(row("(a) warm turn, open session", warm_kit, warm_sdk))
            write_json(args.json, {"warm": (warm_kit, warm_sdk)})
            return
        await pool_refilled(stack)
        first_kit, first_sdk = await first(stack, options, args.sessions)
    cold = dataclasses.replace(settings, pool_size=0, state_dir=state / "cold")
    async with run_stack(cold) as stack:
        cold_kit, cold_sdk = await first(stack, options, args.sessions)
    print(
        f"turn latency, ms (p50 / p95); {args.turns} warm turns, {args.sessions} new sessions, "
        f"tier {args.tier}, isolation {stack.provider.isolation or 'none'}"
    )
    print(
        "| measure | kit | SDK alone | ratio p50 | kit - SDK p50 (ms) "
        "| paired kit - SDK, median ms (of SDK p50) |"
    )
    print("|---|---|---|---|---|---|")
    print(row("(a) warm turn, open session", warm_kit, warm_sdk))
    print(row(f"(b) first turn, new session (pool {args.pool})", first_kit, first_sdk))
    print(row("(c) first turn, new session, no pool (sandbox start)", cold_kit, cold_sdk))
    write_json(
        args.json,
        {
            "warm": (warm_kit, warm_sdk),
            "first": (first_kit, first_sdk),
            "cold": (cold_kit, cold_sdk),
        },
    )
    print(
        f"mean warm: kit {statistics.mean(warm_kit) * 1000:.1f} ms, SDK {statistics.mean(warm_sdk) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
