"""Small agent projects written on the fly for tests that need particular model behaviour."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from emulator.sandbox.docker import DockerSandbox
from emulator.sandbox.process import LocalSandbox
from kit.cli.stack import Stack
from kit.client import SessionClient, create_session
from kit.host.sandbox import Sandbox
from kit.host.session import Session
from kit.protocol.frames import Event
from kit.protocol.turns import ends_turn
from kit.runtime.agent import stored_user_texts
from kit.storage import open_store
from kit.storage.portable import PROJECT_KEY
from kit.storage.sqliteurl import sqlite_url

RECOVERED_REPLY = "Recovered and finished."

SCENARIO = r"""
[[rule]]
name = "recovery"
contains = "Your sandbox stopped before you finished"
[[rule.step]]
text = "RECOVERED_REPLY"

[[rule]]
name = "dump environment"
contains = "dump env"
[[rule.step]]
tool = "Bash"
input = { command = "env; echo ---; tr '\\0' '\\n' < /proc/$PPID/environ; echo ---; tr '\\0' ' ' < /proc/$PPID/cmdline; echo; id -u", description = "dump" }
[[rule.step]]
text = "Environment:\n{tool_result}"

[[rule]]
name = "slow tool"
contains = "slow"
[[rule.step]]
text = "Working on it."
tool = "Bash"
input = { command = "echo started-slow-tool; sleep 5; echo done", description = "slow" }
[[rule.step]]
text = "Slow tool said: {tool_result}"

[[rule]]
name = "wait for go"
contains = "wait for go"
[[rule.step]]
text = "Waiting for go."
tool = "Bash"
input = { command = "for i in $(seq 600); do [ -e go ] && break; sleep 0.05; done; echo released", description = "wait" }
[[rule.step]]
text = "Go said: {tool_result}"

[[rule]]
name = "ponder"
contains = "ponder at length"
[[rule.step]]
text = "Thought it through."
delay_ms = 3000

[[rule]]
name = "trickle"
contains = "trickle the reply"
[[rule.step]]
text = "one two three four five six seven eight nine ten eleven twelve"
chunk_chars = 4
chunk_delay_ms = 150

[[rule]]
name = "crash"
contains = "crash the runtime"
[[rule.step]]
text = "Crashing."
tool = "Bash"
input = { command = "[ -e crashed ] || ( touch crashed && kill -SEGV $(cut -d' ' -f4 /proc/$PPID/stat) )", description = "crash once" }
[[rule.step]]
text = "Still here?"

[[rule]]
name = "crash the harness"
contains = "crash the harness"
[[rule.step]]
text = "Crashing the harness."
tool = "Bash"
input = { command = "[ -e harness-crashed ] || ( touch harness-crashed && kill -ABRT $PPID )", description = "abort the CLI once" }
[[rule.step]]
text = "Still here?"

[[rule]]
name = "allocate"
contains = "allocate 400 MiB"
[[rule.step]]
text = "Allocating."
tool = "Bash"
input = { command = "[ -e allocated ] || ( touch allocated && python3 -c 'x = b\"x\" * (400 * 2**20); print(len(x))' ); echo allocated", description = "allocate once" }
[[rule.step]]
text = "Allocation said: {tool_result}"

[[rule]]
name = "burn cpu"
contains = "burn cpu"
[[rule.step]]
tool = "Bash"
input = { command = "python3 -c 'import time; t = time.perf_counter(); sum(i * i for i in range(6_000_000)); print(\"cpu-seconds-wall\", round(time.perf_counter() - t, 3))'", description = "burn" }
[[rule.step]]
text = "Burned: {tool_result}"

[[rule]]
name = "heat the cpu"
contains = "heat the cpu"
[[rule.step]]
tool = "Bash"
input = { command = "python3 -c 'print(sum(i * i for i in range(20_000_000)) > 0)'", description = "heat" }
[[rule.step]]
text = "Heated: {tool_result}"

[[rule]]
name = "fork many"
contains = "fork many"
[[rule.step]]
tool = "Bash"
input = { command = "python3 -c 'import os, time\nn = 0\ntry:\n    for _ in range(300):\n        if os.fork() == 0:\n            time.sleep(2); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(\"fork failed after\", n)\nelse:\n    print(\"forked\", n)'", description = "fork" }
[[rule.step]]
text = "Forking said: {tool_result}"

[[rule]]
name = "probe"
contains = "probe the sandbox"
[[rule.step]]
tool = "Bash"
input = { command = "python3 probe.py", description = "probe" }
[[rule.step]]
text = "Probed."

[[rule]]
name = "steal the tokens"
contains = "steal the tokens"
[[rule.step]]
tool = "Bash"
input = { command = "python3 token_probe.py", description = "steal" }
[[rule.step]]
text = "Stolen: {tool_result}"

[[rule]]
name = "echo"
[[rule.step]]
text = "You said: {user}"
""".replace("RECOVERED_REPLY", RECOVERED_REPLY)


ATTACHMENT_SCENARIO = """
[[rule]]
name = "read the attachment"
contains = "read my attachment"
[[rule.step]]
tool = "Bash"
input = { command = "cat mail/*/notes.txt; stat -c '%U %n' mail/*/*", description = "read" }
[[rule.step]]
text = "Attachment said: {tool_result}"
"""
"""A scenario for a project's ``scenarios/0-mail.toml``: the agent reads a mailed
``notes.txt`` and lists the owners of the message's saved attachments."""


def write_agent(root: Path, *, tier: str = "basic", extra_toml: str = "") -> Path:
    """A project with Bash allowed and the rules above; returns its folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "kit.toml").write_text(
        f"""[agent]
name = "test-agent"
prompt = "prompt.md"
allowed_tools = ["Bash"]
max_turns = 6

[sandbox]
tier = "{tier}"
{extra_toml}
"""
    )
    (root / "prompt.md").write_text("You are a test agent.\n")
    (root / "scenarios").mkdir(exist_ok=True)
    (root / "scenarios" / "test.toml").write_text(SCENARIO)
    return root


def transcript_key(session_id: str) -> dict[str, str]:
    """The SessionStore key of a kit session's main transcript (the same on every host)."""
    return {"project_key": PROJECT_KEY, "session_id": session_id}


async def stored_prompts(
    state_dir: Path, session_id: str, store_url: str | None = None
) -> set[str]:
    """The user prompts in a `kit dev` session's transcript store (``store_url``: a shared
    store, as KIT_STORE_URL names it; by default the session's own SQLite file)."""
    store: Any = open_store(
        store_url or sqlite_url(state_dir / "transcripts" / session_id / "transcript.sqlite")
    )
    return stored_user_texts(await store.load(transcript_key(session_id)) or [])


async def until_prompt_stored(
    state_dir: Path, session_id: str, prompt: str, store_url: str | None = None
) -> None:
    """Wait (at most 5 s) until ``prompt`` is in a `kit dev` session's transcript store."""
    for _ in range(100):
        if prompt in await stored_prompts(state_dir, session_id, store_url):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{prompt!r} never reached the transcript store")


async def open_session(stack: Stack) -> tuple[SessionClient, Session]:
    """A new session on ``stack``, a connected ``SessionClient`` and the host's ``Session``."""
    info = await create_session(stack.url, stack.api_token)
    client = SessionClient(info.ws_url, info.token)
    await client.connect()
    session = await stack.host.get(info.session_id)
    assert session is not None
    return client, session


async def model_requests(stack: Stack) -> list[dict[str, Any]]:
    """What the offline model was asked so far (its request log), oldest first."""
    assert stack.model_requests is not None
    return stack.model_requests.entries()


async def until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Wait until ``check()`` holds (looked at every 20 ms), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def sandbox_processes(sandbox: Sandbox) -> set[int]:
    """The host PIDs of a live sandbox's processes: its first process (a local sandbox's
    runtime, a container's init) and every descendant."""
    if isinstance(sandbox, DockerSandbox):
        first = await sandbox.host_pid()
    else:
        assert isinstance(sandbox, LocalSandbox), sandbox
        first = sandbox.pid
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rfind(b")") + 2 :].split()[1])
    found = {first}
    for _ in range(64):  # a tree deeper than this is not a sandbox's
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            break
        found |= more
    return found


def pids_under(root: Path) -> set[int]:
    """Processes whose working directory is under ``root`` (a runtime, its CLI, its tools)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd").startswith(str(root)):
                    found.add(int(proc.name))
            except OSError:
                continue
    return found


async def turn_events(client: SessionClient, text: str, timeout_s: float = 180) -> list[Event]:
    """Send ``text``; every event up to the turn's ``result`` or ``turn_failed`` error
    (sandbox deaths and restarts on the way included)."""
    seen: list[Event] = []
    async with asyncio.timeout(timeout_s):
        await client.send(text)
        async for event in client.events():
            seen.append(event)
            if ends_turn(event.kind, event.data):
                break
    return seen


async def turn_counting(
    client: SessionClient,
    text: str,
    seqs: list[int],
    on_event: Callable[[Event], Awaitable[None]] | None = None,
    timeout_s: float = 180,
) -> list[Event]:
    """Send ``text`` and read its turn's events, each seq appended to ``seqs`` (for a
    none-lost-none-repeated check across turns); ``on_event`` sees each one as it comes."""
    events: list[Event] = []
    async with asyncio.timeout(timeout_s):
        await client.send(text)
        async for event in client.events():
            seqs.append(event.seq)
            events.append(event)
            if on_event is not None:
                await on_event(event)
            if ends_turn(event.kind, event.data):
                return events
    raise AssertionError(f"the turn {text!r} never ended")
