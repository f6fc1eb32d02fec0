"""The Cloudflare deployment rehearsed on this machine (``kit dev --target cloudflare``'s
rehearsal): how long a user waits, through the real shim (the Worker and one SessionDO per
session) in ``wrangler dev``, kit's container emulator (containers of the bundle image on
Docker, ``--network none``) and the offline model behind the DO's model route.

    .venv/bin/python bench/cf_rehearsal.py        # --sessions 10

Needs Docker (``scripts/docker-up``) and the shim's wrangler (``worker_shim/``). Per session:

- **new session → first event**: ``POST /v1/sessions`` to the Worker, the socket, a
  message; until the first event of its turn (the DO's echo of the message), until the
  DO's ``sandbox`` ``running`` (its container started and the runtime in it ready: the
  figure beside Cloudflare's stated container start), and until its ``result`` (one model
  call more).
- **resume after a container kill → first event**: the session's container SIGKILLed (in
  the container emulator, as Cloudflare's host would kill it) while its Bash tool runs,
  once the turn's prompt is in the DO's store; from the kill until the first event after
  it (the DO's ``sandbox died``), until ``sandbox`` ``running`` again (a new container, its
  runtime ready), until the resumed turn's first assistant text (the transcript resumed
  from the DO's store, a model call), and until its ``result``.

Each turn's ``result`` text must be the scenario's answer (the one the user reads), or the
run stops with an error. Sessions run one after another; an ended session's container is
left running (as an idle one is on Cloudflare until its inactivity timeout) and removed
when the rehearsal stops.

Cloudflare states a median under 600 ms from ``start()`` to the first command for its
containers (Sandbox SDK 1.0, https://developers.cloudflare.com/sandbox/1-0-preview/; about
4 s on 0.x): ``sandbox running`` here includes that start (Docker's, on this machine) and
the runtime's own start in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rehearsal_agent import RECOVERED_REPLY, print_figures, write_agent

from kit.cli.cfdev import CfRehearsal, rehearse_cloudflare
from kit.cli.image import ensure
from kit.client import SessionClient, create_session
from kit.protocol.turns import ends_turn
from kit.runtime.agent import stored_user_texts
from kit.storage import open_store
from kit.storage.portable import PROJECT_KEY

HELLO_REPLY = "Hello from a Cloudflare container."
SESSION_TIMEOUT_S = 300.0
STORE_POLLS = 300
"""At most this many reads of the DO's store (0.1 s apart) for the turn's prompt."""


def running(kind: str, data: dict[str, Any]) -> bool:
    """Whether the event is the DO's ``sandbox`` ``running``: the container started and the
    runtime in it answered ready."""
    return kind == "sandbox" and data.get("state") == "running"


def answer(data: dict[str, Any], want: str, turn: str) -> None:
    """Stop the run unless the turn's ``result`` says ``want`` (what the user reads)."""
    text = str(data.get("text", ""))
    if data.get("is_error") or want not in text:
        raise SystemExit(f"bench/cf_rehearsal.py: the {turn} turn answered {text!r}, not {want!r}")


async def prompt_stored(cf: CfRehearsal, session_id: str, prompt: str) -> None:
    """Until ``prompt`` is in the session's transcript in its DO (read over the store's HTTP
    side with an API store token), so a kill now is recovered from the store."""
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        grant = await http.post(
            f"{cf.url}/v1/sessions/{session_id}/store-token",
            headers={"authorization": f"Bearer {cf.api_token}"},
        )
    grant.raise_for_status()
    store: Any = open_store(grant.json()["store_url"], token=grant.json()["token"])
    key = {"project_key": PROJECT_KEY, "session_id": session_id}
    for _ in range(STORE_POLLS):
        if prompt in stored_user_texts(await store.load(key) or []):
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"bench/cf_rehearsal.py: {prompt!r} never reached the DO's store")


async def one_session(cf: CfRehearsal) -> dict[str, float]:
    """One session: a first turn, then a turn whose container is killed mid-tool."""
    backend = cf.containers.backend
    before = set(backend.containers)
    figures: dict[str, float] = {}
    t0 = time.perf_counter()
    info = await create_session(cf.url, cf.api_token)
    async with SessionClient(info.ws_url, info.token) as client, asyncio.timeout(SESSION_TIMEOUT_S):
        await client.send("hello")
        async for event in client.events():
            figures.setdefault("new: first event", time.perf_counter() - t0)
            if running(event.kind, event.data):
                figures.setdefault("new: sandbox running", time.perf_counter() - t0)
            if ends_turn(event.kind, event.data):
                figures["new: result"] = time.perf_counter() - t0
                answer(event.data, HELLO_REPLY, "first")
                break
        mine = set(backend.containers) - before
        if len(mine) != 1:
            raise SystemExit(f"bench/cf_rehearsal.py: the session started {len(mine)} containers")
        (container_id,) = mine
        await client.send("slow")
        killed_at: float | None = None
        async for event in client.events():
            now = time.perf_counter()
            if killed_at is not None:
                figures.setdefault("kill: first event", now - killed_at)
                if running(event.kind, event.data):
                    figures.setdefault("kill: sandbox running", now - killed_at)
                if event.kind == "assistant":
                    figures.setdefault("kill: resumed text", now - killed_at)
            if event.kind == "tool_use" and killed_at is None:
                await prompt_stored(cf, info.session_id, "slow")
                killed_at = time.perf_counter()
                await backend.signal(container_id, 9)
            if ends_turn(event.kind, event.data):
                if killed_at is None:
                    raise SystemExit("bench/cf_rehearsal.py: the slow turn ran no tool to kill")
                figures["kill: result"] = now - killed_at
                answer(event.data, RECOVERED_REPLY, "resumed")
                break
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument(
        "--tier",
        default="basic",
        help="the agent's Cloudflare instance type (basic: 1/4 vCPU, as Docker's --cpus gives it)",
    )
    parser.add_argument("--json", type=Path, help="also write p50/p95 (s) per measure here")
    args = parser.parse_args()
    if args.sessions < 1:
        parser.error("--sessions must be 1 or more")
    image = await asyncio.to_thread(ensure, False)
    with tempfile.TemporaryDirectory(prefix="kit-bench-cf-") as tmp:
        project = write_agent(Path(tmp) / "agent", HELLO_REPLY, args.tier)
        t0 = time.perf_counter()
        async with rehearse_cloudflare(project, Path(tmp) / "state", image) as cf:
            deployed = time.perf_counter() - t0
            runs = [await one_session(cf) for _ in range(args.sessions)]
    print(
        f"kit dev --target cloudflare rehearsal: bundle image, model, emulator and "
        f"wrangler dev up in {deployed:.1f} s"
    )
    print(f"{args.sessions} sessions on {args.tier}, one after another; ms")
    figures: dict[str, object] = {
        "deploy_s": deployed,
        "tier": args.tier,
        **print_figures(
            runs,
            (
                "new: first event",
                "new: sandbox running",
                "new: result",
                "kill: first event",
                "kill: sandbox running",
                "kill: resumed text",
                "kill: result",
            ),
        ),
    }
    print(
        "\nreproduce: .venv/bin/python bench/cf_rehearsal.py --sessions",
        args.sessions,
        "--tier",
        args.tier,
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
