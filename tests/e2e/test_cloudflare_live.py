"""`kit deploy --target cloudflare` for real: deploy the example agent, reach the Worker at
its workers.dev URL (``/healthz``, then a session made with the host API token), destroy
it. Runs only with credentials (``CLOUDFLARE_API_TOKEN``, ``ANTHROPIC_API_KEY``; optional
``CLOUDFLARE_ACCOUNT_ID``) and Docker with buildx (wrangler builds the image); otherwise it
is skipped with the reason. Never part of CI here: it talks to the internet.

Then a chat turn with the real model: the session's container reaches its model and
store routes only through outbound interception (worker_shim/src/egress.ts), which nothing
on this machine can exercise for real; the Worker's own URL serves no model route."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from pathlib import Path

import httpx
import pytest

from kit.client import SessionClient
from tests.agents import turn_events
from tests.kitproc import spawn_kit

pytestmark = [pytest.mark.live, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NEEDED = ("CLOUDFLARE_API_TOKEN", "ANTHROPIC_API_KEY")
REACHABLE_TRIES = 60
"""A new workers.dev name can take a while to answer: up to this many tries, 2 s apart."""


async def _kit(*args: str, env: dict[str, str], timeout_s: float = 1800) -> str:
    proc = await spawn_kit(*args, cwd=REPO, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == 0, (out.decode() + err.decode())[-3000:]
    return out.decode()


async def test_deploy_reach_and_destroy_on_real_cloudflare(kit_tmp: Path) -> None:
    """Deploy prints the workers.dev URL; the Worker answers /healthz and makes a session
    for the host API token kit kept; destroy removes the Worker and its containers."""
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        pytest.skip(f"live Cloudflare test: set {', '.join(missing)} to run it")
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "buildx",
        "version",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        pytest.skip("live Cloudflare test: wrangler builds the image with `docker buildx`")
    worker = f"kit-live-{secrets.token_hex(4)}"
    env = {**os.environ, "KIT_STATE_DIR": str(kit_tmp / "state")}
    env.pop("KIT_API_TOKEN", None)
    args = ("--target", "cloudflare", "--project", "skills/support-bot", "--app", worker)
    try:
        out = await _kit("deploy", *args, env=env)
        found = re.search(r"kit chat --url (https://\S+\.workers\.dev)", out)
        assert found, out[-2000:]
        url = found.group(1)
        saved = kit_tmp / "state" / f"cloudflare-{worker}.json"
        token = json.loads(saved.read_text())["api_token"]
        health: httpx.Response | None = None
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(REACHABLE_TRIES):
                try:
                    health = await http.get(f"{url}/healthz")
                    if health.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(2)
            assert health is not None
            assert health.json() == {"ok": True}
            refused = await http.post(f"{url}/v1/sessions")
            assert refused.status_code == 401
            made = await http.post(
                f"{url}/v1/sessions", headers={"authorization": f"Bearer {token}"}
            )
            assert made.status_code == 201, made.text
            info = made.json()
            assert info["ws_url"].startswith("wss://")
            public_model = await http.post(
                f"{url}/v1/sessions/{info['session_id']}/model/v1/messages", json={}
            )
            assert public_model.status_code == 401
        async with SessionClient(info["ws_url"], info["token"]) as client:
            events = await turn_events(client, "Reply with one short sentence.", timeout_s=600)
        states = [e.data.get("state") for e in events if e.kind == "sandbox"]
        assert "running" in states, [(e.kind, e.data) for e in events]
        assert events[-1].kind == "result", [(e.kind, e.data) for e in events]
        assert events[-1].data["is_error"] is False
        assert str(events[-1].data["text"]).strip()
    finally:
        await _kit("destroy", *args, "--yes", env=env)
