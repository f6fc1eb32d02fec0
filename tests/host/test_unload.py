"""Unloading a session (an evicted Durable Object) while a client says hello again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kit.cli.stack import run_stack
from kit.host.sandbox import SandboxState
from tests.agents import open_session, write_agent
from tests.conftest import stack_settings


async def test_a_reload_waits_until_the_evicted_sessions_sandbox_is_gone(kit_tmp: Path) -> None:
    """An evict mid-tool, and a `get` for the same session right behind it: the reloaded
    session is handed out only once the old sandbox has exited, so two sandboxes never run
    on one transcript."""
    project = write_agent(kit_tmp / "agent")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        client, session = await open_session(stack)
        try:
            await client.send("wait for go")
            async with asyncio.timeout(60):
                async for event in client.events():
                    if event.kind == "tool_use":
                        break
            old = session.sandbox
            assert old is not None
            running = old.state
            assert running is SandboxState.RUNNING
            evict = asyncio.create_task(stack.host.unload_now(session.id))
            await asyncio.sleep(0)  # one step: the evict has begun closing the session
            reloaded = await stack.host.get(session.id)
            assert old.state is SandboxState.EXITED
            assert reloaded is not None
            assert reloaded is not session
            assert await evict is True
        finally:
            await client.close()
