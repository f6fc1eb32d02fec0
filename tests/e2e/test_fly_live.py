"""The same flow on real Fly: deploy, chat (a tool call and its answer), destroy. Runs only
with credentials (``FLY_API_TOKEN``, ``ANTHROPIC_API_KEY``, the bucket's ``AWS_*`` keys);
otherwise it is skipped with the reason. Never part of CI here: it talks to the internet."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from tests.kitproc import spawn_kit

pytestmark = [pytest.mark.live, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NEEDED = ("FLY_API_TOKEN", "ANTHROPIC_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


async def _kit(*args: str, env: dict[str, str], timeout_s: float = 900) -> str:
    proc = await spawn_kit(*args, cwd=REPO, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


async def test_deploy_chat_destroy_on_real_fly(kit_tmp: Path) -> None:
    """`kit deploy --target fly` of the example agent, `kit chat` through
    https://<app>.fly.dev (the Skill and Bash tools run in a Fly machine), `kit destroy`."""
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        pytest.skip(f"live Fly test: set {', '.join(missing)} to run it")
    app = f"kit-live-{secrets.token_hex(4)}"
    env = {**os.environ, "KIT_STATE_DIR": str(kit_tmp / "state")}
    args = ("--target", "fly", "--project", "skills/support-bot", "--app", app)
    try:
        out = await _kit("deploy", *args, env=env)
        assert f"https://{app}.fly.dev" in out
        token = (kit_tmp / "state" / f"fly-{app}.json").read_text()
        env["KIT_API_TOKEN"] = token.split('"')[3]
        answer = await _kit(
            "chat",
            "--url",
            f"https://{app}.fly.dev",
            "-m",
            "Can I still return order 1042?",
            env=env,
        )
        assert "1042" in answer
    finally:
        await _kit("destroy", *args, "--yes", env=env)
