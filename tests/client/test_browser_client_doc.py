"""docs/protocol.md's minimal browser client, run as written in Node 22 (the one
scripts/setup-workers installs) against a scripted host on a loopback port. Node lacks
localStorage, so the harness gives it one; it also takes over the clock and the dice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kit.protocol import errors as e

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
NODE = ROOT / "bench" / "do_host" / "node_modules" / ".bin" / "node"
RECONNECTS = 8

HARNESS = """
const store = new Map();
globalThis.localStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
};
// The clock moves only when the client waits to reconnect: each such wait is recorded
// and skipped (Node's own timers, its WebSocket's included, run as usual).
const pause = globalThis.setTimeout, waits = [];
let now = 0;
Date.now = () => now;
Math.random = () => 0;
globalThis.setTimeout = (fn, ms, ...args) => {
  if (fn.name !== "connect") return pause(fn, ms, ...args);
  waits.push(ms);
  now += ms;
  setImmediate(fn);
  return 0;
};

%(snippet)s

const [session, wanted] = [JSON.parse(process.argv[2]), Number(process.argv[3])];
const client = openSession(session, () => {});
let refused = null;
try { client.say("half an emoji \\ud83d"); } catch (exc) { refused = String(exc.message); }
for (let i = 0; i < 1000 && waits.length < wanted; i++) await new Promise((r) => pause(r, 10));
client.close();
console.log(JSON.stringify({ waits, refused }));
process.exit(0);
"""


def snippet() -> str:
    found = re.search(r"### A minimal browser client.*?```js\n(.*?)```", DOC.read_text(), re.S)
    assert found is not None, "docs/protocol.md lost its browser client"
    return found.group(1)


async def _welcome_then_fail(ws: ServerConnection) -> None:
    """Welcome, then close 1011 at once: a host failing right after each handshake."""
    with contextlib.suppress(ConnectionClosed):  # the client may leave first
        await ws.recv()
        welcome = {"type": "welcome", "protocol": 1, "session_id": "s", "resume": "none"}
        await ws.send(json.dumps({**welcome, "last_seq": 0}))
        await ws.close(e.CLOSE_INTERNAL, e.INTERNAL)


async def test_the_browser_client_backs_off_after_1011_and_refuses_lone_surrogates(
    tmp_path: Path,
) -> None:
    """The documented browser client, against a host that closes 1011 right after every
    welcome, waits longer each time up to its 10 s cap (it used to reset the backoff on
    every welcome: 31 reconnects in 8 s), and refuses a message with a lone surrogate."""
    if not NODE.exists():
        pytest.fail("Node 22 is not installed: run scripts/setup-workers (scripts/test does).")
    script = tmp_path / "client.mjs"
    script.write_text(HARNESS % {"snippet": snippet()})
    async with serve(_welcome_then_fail, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        session = {"session_id": "s", "token": "t", "ws_url": f"ws://127.0.0.1:{port}/ws"}
        proc = await asyncio.create_subprocess_exec(
            str(NODE),
            str(script),
            json.dumps(session),
            str(RECONNECTS),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    # Math.random() = 0: each wait is half its base, 250 ms doubling up to the 10 s cap.
    assert result["waits"][:RECONNECTS] == [125, 250, 500, 1000, 2000, 4000, 5000, 5000]
    assert result["refused"] == "text is not valid Unicode (a lone surrogate)"
