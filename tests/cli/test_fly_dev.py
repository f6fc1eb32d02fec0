"""`kit dev --target fly` as a user runs it: the rehearsal comes up, `kit chat` and `kit mail`
find it through .kit/dev.json and get the answers, Ctrl-C takes every machine down."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.agents import write_agent
from tests.dockerhost import fly_containers, runtime_image
from tests.kitproc import spawn_kit

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 300.0
ALICE = "alice@example.org"


async def test_kit_dev_target_fly_then_kit_chat(kit_tmp: Path) -> None:
    """The banner names the proxy's URL; `kit chat --message` answers through it (a Bash
    tool ran in a session machine); SIGINT exits 0 and leaves no container behind."""
    runtime_image()  # built here first: skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("ANTHROPIC_API_KEY", None)
    env["KIT_STATE_DIR"] = str(kit_tmp / "state")
    dev = await spawn_kit("dev", "--target", "fly", "--project", str(project), cwd=kit_tmp, env=env)
    assert dev.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            while True:
                line = (await dev.stdout.readline()).decode()
                assert line, "kit dev --target fly exited before it was ready"
                if m := re.search(r"url\s+(http://127\.0\.0\.1:\d+)", line):
                    url = m.group(1)
                if "api token" in line:
                    break
        chat = await spawn_kit(
            "chat", "--project", str(project), "--message", "slow", cwd=kit_tmp, env=env
        )
        out, err = await asyncio.wait_for(chat.communicate(), 300)
        assert chat.returncode == 0, err.decode()[-2000:]
        assert "Slow tool said: started-slow-tool" in out.decode()
        assert url
        # The control API's commands work against the rehearsal as against plain `kit dev`.
        listed = await _kit(kit_tmp, env, "sessions", "--json", "--project", str(project))
        ((row),) = json.loads(listed)
        session_id = row["session_id"]
        assert (row["turns"], row["sandbox"]) == (1, "running")
        logs = await _kit(kit_tmp, env, "logs", session_id, "--project", str(project))
        assert "Slow tool said: started-slow-tool" in logs
        machines = await _kit(kit_tmp, env, "sandbox", "list", "--project", str(project))
        assert re.search(rf"{session_id}\s+\S+\s+\S+\s+started\s+\S+", machines), machines
        # Mail: `kit mail send` posts to the gateways' signed webhook; the replies reach the
        # rehearsal's loopback relay, and `kit mail outbox` lists them.
        mail = ("--project", str(project))
        sent = await _kit(kit_tmp, env, "mail", "send", "--from", ALICE, "hello by mail", *mail)
        assert "You said: Email from alice@example.org" in sent
        assert "hello by mail" in sent
        again = await _kit(
            kit_tmp, env, "mail", "send", "--from", ALICE, "--reply", "again by mail", *mail
        )
        assert "again by mail" in again
        outbox = await _kit(kit_tmp, env, "mail", "outbox", "--json", *mail)
        replies = json.loads(outbox)
        assert [r["to"] for r in replies] == [ALICE, ALICE]
        assert replies[0]["session_id"] == replies[1]["session_id"]
        relayed = sorted((kit_tmp / "state" / "mail-relay").glob("*.eml"))
        assert len(relayed) == 2
        assert b"again by mail" in relayed[1].read_bytes()
    finally:
        dev.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(dev.wait(), 120) == 0
    assert fly_containers(kit_tmp / "state") == []


async def _kit(cwd: Path, env: dict[str, str], *args: str) -> str:
    """What ``kit *args`` printed; it must exit 0."""
    proc = await spawn_kit(*args, cwd=cwd, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (args, err.decode()[-2000:])
    return out.decode()
