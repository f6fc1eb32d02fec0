"""`kit dev --target cloudflare` as a user runs it: the rehearsal comes up, `kit chat` finds
it through .kit/dev.json and gets the answer, Ctrl-C takes every container down and leaves
no dev.json behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.agents import write_agent
from tests.dockerhost import cf_containers, runtime_image
from tests.kitproc import spawn_kit

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 300.0
ALICE = "alice@example.org"


async def _kit(cwd: Path, env: dict[str, str], *args: str) -> str:
    """What ``kit *args`` printed; it must exit 0."""
    proc = await spawn_kit(*args, "--project", str(cwd / "agent"), cwd=cwd, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, (args, err.decode()[-2000:])
    return out.decode()


async def _start(
    kit_tmp: Path,
) -> tuple[asyncio.subprocess.Process, Path, Path, dict[str, str]]:
    """`kit dev --target cloudflare` of a test agent, offline: the process, the project,
    the state folder and the environment it runs with."""
    project = write_agent(kit_tmp / "agent")
    state = kit_tmp / "state"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("ANTHROPIC_API_KEY", None)
    env["KIT_STATE_DIR"] = str(state)
    dev = await spawn_kit(
        "dev", "--target", "cloudflare", "--project", str(project), cwd=kit_tmp, env=env
    )
    return dev, project, state, env


async def test_kit_dev_target_cloudflare_then_kit_chat(kit_tmp: Path) -> None:
    """The banner names the Worker's URL; `kit chat --message` answers through the shim (a
    Bash tool ran in the session's container); SIGINT exits 0 and leaves no container."""
    runtime_image()  # built here first: skips, saying why, where Docker cannot run
    dev, project, state, env = await _start(kit_tmp)
    assert dev.stdout is not None
    url = None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            for _ in range(10_000):
                line = (await dev.stdout.readline()).decode()
                assert line, "kit dev --target cloudflare exited before it was ready"
                if m := re.search(r"url\s+(http://127\.0\.0\.1:\d+)", line):
                    url = m.group(1)
                if "api token" in line:
                    break
        assert url is not None
        assert (state / "dev.json").is_file()
        chat = await spawn_kit(
            "chat", "--project", str(project), "--message", "slow", cwd=kit_tmp, env=env
        )
        out, err = await asyncio.wait_for(chat.communicate(), 300)
        assert chat.returncode == 0, err.decode()[-2000:]
        assert "Slow tool said: started-slow-tool" in out.decode()
        # Mail: `kit mail send` hands raw mail to wrangler's local email endpoint, as Email
        # Routing does; the answer is read back from the shim's outbox.
        sent = await _kit(kit_tmp, env, "mail", "send", "--from", ALICE, "hello by mail")
        assert "You said: Email from alice@example.org" in sent
        assert sent.rstrip().endswith("hello by mail")
        again = await _kit(kit_tmp, env, "mail", "send", "--from", ALICE, "--reply", "again")
        assert again.rstrip().endswith("again")
        outbox = json.loads(await _kit(kit_tmp, env, "mail", "outbox", "--json"))
        assert [item["to"] for item in outbox] == [ALICE, ALICE]
        assert len({item["session_id"] for item in outbox}) == 1  # one thread, one session
    finally:
        dev.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(dev.wait(), 120) == 0
    assert not (state / "dev.json").exists()
    assert cf_containers(state) == []


async def test_ctrl_c_during_start_up_takes_down_what_was_started(kit_tmp: Path) -> None:
    """SIGINT while wrangler dev is starting (the container emulator and the model already
    up): kit exits 0 without waiting for the start-up to finish, and leaves no wrangler,
    no container, no secrets file and no dev.json. Seen failing before kit watched for
    signals during start-up: the SIGINT was ignored until the banner."""
    runtime_image()
    dev, _, state, _ = await _start(kit_tmp)
    assert dev.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            for _ in range(10_000):
                line = (await dev.stdout.readline()).decode()
                assert line, "kit dev --target cloudflare exited before it started wrangler"
                seen.append(line)
                if "starting the shim in wrangler dev" in line:
                    break
    finally:
        dev.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(dev.communicate(), 60)
    assert dev.returncode == 0, "".join(seen) + rest.decode()
    assert "stopping during start-up" in rest.decode()
    assert "— ready" not in rest.decode()
    assert not (state / "dev.json").exists()
    assert not (state / "cloudflare" / ".dev.vars").exists()
    assert cf_containers(state) == []
