"""The Fly deployment rehearsed on this machine (``kit dev --target fly``'s rehearsal): how
long a user waits, through the emulated Fly proxy, gateway machines and session machines
(containers of kit's runtime image on Docker, the offline model).

    .venv/bin/python bench/fly_rehearsal.py       # --sessions 10

Needs Docker (``scripts/docker-up``). Per session:

- **new session → first event**: ``POST /v1/sessions`` through the proxy, the socket, a
  message; until the first event of its turn, and until its ``result`` (the session's
  machine is claimed or created, boots, the runtime gets ready, one model call).
- **resume after a machine kill → first event**: the session's machine SIGKILLed (through
  the Machines API) while its Bash tool runs; from the kill until the first event after it
  (the host's ``sandbox died``), until the resumed turn's first assistant text (a new
  machine started, the transcript resumed), and until its ``result``.

A machine of an ended session is stopped (not destroyed), so later sessions claim it: the
first sessions create machines, the rest mostly claim stopped ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rehearsal_agent import print_figures, write_agent

from fly import FlyClient
from kit.cli.flydev import rehearse_fly
from kit.cli.image import ensure
from kit.client import SessionClient, create_session
from kit.protocol.turns import ends_turn


async def one_session(url: str, token: str, api: FlyClient, sandbox_app: str) -> dict[str, float]:
    """One session: a first turn, then a turn whose machine is killed mid-tool."""
    figures: dict[str, float] = {}
    t0 = time.perf_counter()
    info = await create_session(url, token)
    async with SessionClient(info.ws_url, info.token) as client, asyncio.timeout(300):
        await client.send("hello")
        async for event in client.events():
            figures.setdefault("new: first event", time.perf_counter() - t0)
            if ends_turn(event.kind, event.data):
                figures["new: result"] = time.perf_counter() - t0
                break
        await client.send("slow")
        killed_at: float | None = None
        async for event in client.events():
            now = time.perf_counter()
            if killed_at is not None:
                figures.setdefault("kill: first event", now - killed_at)
                if event.kind == "assistant":
                    figures.setdefault("kill: resumed text", now - killed_at)
            if event.kind == "tool_use" and killed_at is None:
                await asyncio.sleep(0.5)  # the tool is running: its prompt is stored
                machines = await api.list_machines(
                    sandbox_app, states=("started",), metadata={"kit_session": info.session_id}
                )
                killed_at = time.perf_counter()
                await api.signal_machine(sandbox_app, machines[0].id, "SIGKILL")
            if ends_turn(event.kind, event.data):
                if killed_at is not None:
                    figures["kill: result"] = now - killed_at
                break
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write p50/p95 (s) per measure here")
    args = parser.parse_args()
    image = await asyncio.to_thread(ensure, False)
    with tempfile.TemporaryDirectory(prefix="kit-bench-fly-") as tmp:
        project = write_agent(Path(tmp) / "agent", "Hello from a Fly machine.")
        t0 = time.perf_counter()
        async with rehearse_fly(project, Path(tmp) / "state", image, app="kit-bench") as fly:
            deployed = time.perf_counter() - t0
            runs = [
                await one_session(fly.url, fly.api_token, fly.api, fly.target.sandbox_app)
                for _ in range(args.sessions)
            ]
    print(f"kit dev --target fly rehearsal: deployed (2 gateways) in {deployed:.1f} s")
    print(f"{args.sessions} sessions, one after another; ms")
    figures: dict[str, object] = {
        "deploy_s": deployed,
        **print_figures(
            runs,
            (
                "new: first event",
                "new: result",
                "kill: first event",
                "kill: resumed text",
                "kill: result",
            ),
        ),
    }
    print("\nreproduce: .venv/bin/python bench/fly_rehearsal.py --sessions", args.sessions)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
