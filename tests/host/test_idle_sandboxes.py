"""Idle sessions cost nothing: no sandbox at hello, a short grace after the last client,
a small pool of sandboxes started ahead of new sessions, and reloads of the bundle."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from kit.bundle.build import MANIFEST
from kit.cli.stack import Stack, run_stack
from kit.cli.watch import Watcher
from kit.client import SessionClient, create_session
from kit.host.sandbox import SandboxState
from kit.host.session import Session
from kit.protocol.frames import Event
from tests.agents import open_session, turn_events, until, write_agent
from tests.conftest import stack_settings

WAIT_S = 60.0


def answer(events: list) -> str:  # type: ignore[type-arg]
    """The text of the turn's ``result``."""
    assert events[-1].kind == "result", events[-1]
    return str(events[-1].data.get("text"))


def has_sandbox(session: Session) -> bool:
    return session.sandbox is not None


def running_sandboxes(stack: Stack) -> int:
    return sum(1 for s in stack.provider.running.values() if s.state is SandboxState.RUNNING)


async def sandbox_events(session: Session) -> list[dict[str, object]]:
    return [e.data for e in await session.log.read_after(0) if e.kind == "sandbox"]


async def test_a_connected_client_holds_no_sandbox_until_it_speaks(kit_tmp: Path) -> None:
    """hello starts nothing: a silent client still holds no sandbox after another session
    ran a whole turn (sandbox start included); its first message starts one. (Broken on
    purpose once: a runner that started a sandbox for a present client failed this.)"""
    project = write_agent(kit_tmp / "agent")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        silent, quiet_session = await open_session(stack)
        talker, _ = await open_session(stack)
        try:
            assert quiet_session.present
            assert answer(await turn_events(talker, "hi there")) == "You said: hi there"
            assert not has_sandbox(quiet_session)
            assert running_sandboxes(stack) == 1
            assert await sandbox_events(quiet_session) == []
            assert answer(await turn_events(silent, "now me")) == "You said: now me"
            assert has_sandbox(quiet_session)
            states = [d["state"] for d in await sandbox_events(quiet_session)]
            assert states == ["starting", "running"]
        finally:
            await silent.close()
            await talker.close()


async def test_the_sandbox_stops_a_grace_after_the_last_client_and_comes_back(
    kit_tmp: Path,
) -> None:
    """With no open turn and no client, the sandbox stops after ``grace_s`` (reason idle);
    the session stays usable and its next turn starts a new sandbox with the history."""
    project = write_agent(kit_tmp / "agent")
    settings = stack_settings(kit_tmp / "state", project, grace_s=0.5)
    async with run_stack(settings) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            assert answer(await turn_events(client, "first")) == "You said: first"
            seen = client.last_seq
            session = await stack.host.get(info.session_id)
            assert session is not None
            sandbox = session.sandbox
            assert sandbox is not None
        async with asyncio.timeout(WAIT_S):
            exit_info = await sandbox.wait()
        assert exit_info.reason == "idle"
        await until(lambda: running_sandboxes(stack) == 0, "no sandbox running")
        async with SessionClient(info.ws_url, info.token, last_seq=seen) as client:
            assert answer(await turn_events(client, "second")) == "You said: second"
        session = await stack.host.get(info.session_id)
        assert session is not None
        states = [(d["state"], d.get("reason")) for d in await sandbox_events(session)]
        assert ("stopped", "idle") in states
        assert states.count(("running", None)) == 2


async def test_a_present_client_keeps_the_sandbox_until_idle_timeout(kit_tmp: Path) -> None:
    """The grace applies only with no client: a connected one keeps the sandbox for the
    bundle's ``idle_timeout`` (the platforms' sleep-after), measured from the last turn."""
    project = write_agent(kit_tmp / "agent", extra_toml="idle_timeout = 120")
    settings = stack_settings(kit_tmp / "state", project, grace_s=0.2)
    async with run_stack(settings) as stack:
        client, session = await open_session(stack)
        try:
            await turn_events(client, "hello")
            deadline = session._idle_deadline()
            assert deadline is not None
            assert deadline - time.monotonic() > 100  # idle_timeout, not the 0.2 s grace
        finally:
            await client.close()
        await until(lambda: session.sandbox is None, "the sandbox to stop after the grace", 30)


async def test_many_idle_connected_sessions_run_no_more_sandboxes_than_the_pool(
    kit_tmp: Path,
) -> None:
    """Twelve connected sessions that never speak, pool of 2: two sandboxes run, not
    twelve. (Broken on purpose once: a pool that ignored reserved entries in its count
    started a new spare per claim and failed this.)"""
    project = write_agent(kit_tmp / "agent")
    settings = stack_settings(kit_tmp / "state", project, pool_size=2, grace_s=60.0)
    async with run_stack(settings) as stack:
        pool = stack.pool
        assert pool is not None
        await until(lambda: pool.spares == 2, "the pool to fill")
        clients = []
        try:
            for _ in range(12):
                client, _session = await open_session(stack)
                clients.append(client)
            assert pool.reserved == 2
            assert running_sandboxes(stack) == 2
            assert all(s.sandbox is None for s in stack.host.live_sessions())
        finally:
            for client in clients:
                await client.close()


async def test_a_new_sessions_first_turn_takes_a_pooled_sandbox(kit_tmp: Path) -> None:
    """A new session gets the id of a sandbox already up; its first turn uses it (the
    ``running`` event says ``pooled``) and the pool starts another. (Broken on purpose
    once: a ``claim`` that returned None made every first turn start its own.)"""
    project = write_agent(kit_tmp / "agent")
    settings = stack_settings(kit_tmp / "state", project, pool_size=1)
    async with run_stack(settings) as stack:
        pool = stack.pool
        assert pool is not None
        await until(lambda: pool.spares == 1, "the pool to fill")
        ((spare_id, spare),) = pool.sandboxes()
        assert spare_id is None
        client, session = await open_session(stack)
        try:
            assert pool.reserved == 1
            assert answer(await turn_events(client, "pooled?")) == "You said: pooled?"
            assert session.sandbox is spare.sandbox
            running = [d for d in await sandbox_events(session) if d["state"] == "running"]
            assert running[0].get("pooled") is True
            assert [d["state"] for d in await sandbox_events(session)] == ["running"]
            await until(lambda: pool.spares == 1 and pool.starts == 2, "a new spare")
        finally:
            await client.close()


async def test_an_unused_reservation_ends_after_the_grace(kit_tmp: Path) -> None:
    """A session that took a pooled sandbox's id but never spoke gives it back after the
    grace; its first turn later starts a sandbox of its own and answers."""
    project = write_agent(kit_tmp / "agent")
    settings = stack_settings(kit_tmp / "state", project, pool_size=1, grace_s=0.3)
    async with run_stack(settings) as stack:
        pool = stack.pool
        assert pool is not None
        await until(lambda: pool.spares == 1, "the pool to fill")
        client, session = await open_session(stack)
        try:
            ((held_id, reserved),) = pool.sandboxes()
            assert held_id == session.id
            async with asyncio.timeout(WAIT_S):
                await reserved.sandbox.wait()
            await until(lambda: pool.spares == 1, "a new spare after the reservation ended")
            assert answer(await turn_events(client, "late")) == "You said: late"
            running = [d for d in await sandbox_events(session) if d["state"] == "running"]
            assert "pooled" not in running[0]
        finally:
            await client.close()


async def test_a_reload_reaches_new_sandboxes_and_a_broken_edit_keeps_the_old_bundle(
    kit_tmp: Path,
) -> None:
    """Edit the prompt: the bundle is rebuilt, the idle sandbox is replaced (reason
    reload) and the next turn runs the new bundle. Then break kit.toml: the error comes
    back in one line, nothing changes, and turns still work."""
    project = write_agent(kit_tmp / "agent")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        client, session = await open_session(stack)
        try:
            await turn_events(client, "before")
            first = stack.bundle
            old_sandbox = session.sandbox
            assert old_sandbox is not None
            (project / "prompt.md").write_text("You are a changed test agent.\n")
            reload = await stack.reload()
            assert reload.changed
            assert reload.error is None
            assert stack.bundle.digest != first.digest
            async with asyncio.timeout(WAIT_S):
                assert (await old_sandbox.wait()).reason == "reload"
            assert answer(await turn_events(client, "after")) == "You said: after"
            assert session.release is not None
            assert session.release.digest == stack.bundle.digest
            assert "changed test agent" in (session.release.bundle_dir / MANIFEST).read_text()

            good = stack.bundle
            toml = (project / "kit.toml").read_text()
            (project / "kit.toml").write_text(toml.replace('tier = "basic"', 'tier = "huge"'))
            broken = await stack.reload()
            assert not broken.changed
            assert broken.error is not None
            assert "huge" in broken.error
            assert "\n" not in broken.error
            assert stack.bundle is good
            assert answer(await turn_events(client, "still")) == "You said: still"
            assert session.release.digest == good.digest
        finally:
            await client.close()


async def test_a_turn_queued_behind_a_reload_runs_the_new_bundle(kit_tmp: Path) -> None:
    """A message sent after the "reloaded" line, while an older turn still runs, is
    answered by the new bundle: the old sandbox finishes its turn, then is replaced.
    (Broken on purpose once: a runner that reused the live sandbox ran it on the old.)"""
    project = write_agent(kit_tmp / "agent")
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        client, session = await open_session(stack)
        try:
            await client.send("wait for go")
            async with asyncio.timeout(WAIT_S):
                async for event in client.events():
                    if event.kind == "tool_use":
                        break
            old = session.release
            assert old is not None
            (project / "prompt.md").write_text("You are a changed test agent.\n")
            assert (await stack.reload()).changed

            async def second() -> list[Event]:
                return [e async for e in client.turn("after the reload")]

            queued = asyncio.create_task(second())
            for _ in range(500):  # the second message is queued behind the first turn
                logged = await session.log.read_after(0)
                if any(e.data.get("text") == "after the reload" for e in logged):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the second message was never queued")
            (stack.provider.workspace(session.id) / "go").touch()
            async with asyncio.timeout(WAIT_S):
                assert answer(await queued) == "You said: after the reload"
            assert session.release is not None
            assert session.release.digest == stack.bundle.digest != old.digest
            stops = [
                d.get("reason") for d in await sandbox_events(session) if d["state"] == "stopped"
            ]
            assert stops == ["reload"]
        finally:
            await client.close()


async def test_the_watcher_says_one_line_per_save(kit_tmp: Path) -> None:
    """``kit dev``'s watcher: a saved skill rebuilds the bundle (one line naming the file
    and the new bundle); a broken kit.toml gives its error once and the bundle stays; the
    fix says the project loads again."""
    project = write_agent(kit_tmp / "agent")
    lines: asyncio.Queue[str] = asyncio.Queue()
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        watcher = Watcher(stack, say=lines.put_nowait, poll_s=0.05, settle_s=0.05)
        task = asyncio.create_task(watcher.run())
        try:
            async with asyncio.timeout(WAIT_S):
                await watcher.ready.wait()
            skill = project / "skills" / "greet"
            skill.mkdir(parents=True)
            (skill / "SKILL.md").write_text("---\nname: greet\ndescription: Greets.\n---\nHi.\n")
            async with asyncio.timeout(WAIT_S):
                line = await lines.get()
            assert line.startswith("kit dev: reloaded (skills/greet/SKILL.md)")
            assert stack.bundle.digest[:16] in line
            assert "greet" in stack.bundle.skills

            good = stack.bundle.digest
            toml = (project / "kit.toml").read_text()
            (project / "kit.toml").write_text(toml + "\n[bogus]\n")
            async with asyncio.timeout(WAIT_S):
                line = await lines.get()
            assert line.startswith("kit dev: not reloaded: ")
            assert "bogus" in line
            assert f"Bundle {good[:16]} keeps serving." in line
            assert stack.bundle.digest == good

            (project / "kit.toml").write_text(toml)
            async with asyncio.timeout(WAIT_S):
                line = await lines.get()
            assert line == f"kit dev: the project loads again; bundle {good[:16]} unchanged."

            prompt = (project / "prompt.md").read_bytes()
            (project / "prompt.md").write_bytes("Vous êtes un agent.\n".encode("latin-1"))
            async with asyncio.timeout(WAIT_S):
                line = await lines.get()
            assert line.startswith("kit dev: not reloaded: ")
            assert "UTF-8" in line
            (project / "prompt.md").write_bytes(prompt)  # the watcher lived through it
            async with asyncio.timeout(WAIT_S):
                line = await lines.get()
            assert line == f"kit dev: the project loads again; bundle {good[:16]} unchanged."
            assert lines.empty()
            assert not task.done()
        finally:
            task.cancel()


async def test_folders_of_pooled_sandboxes_a_killed_kit_dev_left_are_deleted(
    kit_tmp: Path,
) -> None:
    """A `kit dev` killed with -9 leaves its spares' folders (ids no session has); the next
    start deletes them, and keeps every real session's."""
    project = write_agent(kit_tmp / "agent")
    state = kit_tmp / "state"
    async with run_stack(stack_settings(state, project)) as stack:
        client, session = await open_session(stack)
        await turn_events(client, "keep me")
        await client.close()
    orphan = state / "sandboxes" / "0b9e1f6c-3c43-4c1e-9d0e-0a4f6a8f0c11"
    (orphan / "workspace").mkdir(parents=True)
    (state / "transcripts" / orphan.name).mkdir(parents=True)
    async with run_stack(stack_settings(state, project, pool_size=1)) as stack:
        assert not orphan.exists()
        assert not (state / "transcripts" / orphan.name).exists()
        assert (state / "sandboxes" / session.id / "workspace").is_dir()
        assert (state / "transcripts" / session.id).is_dir()


async def test_moving_the_scenarios_in_kit_toml_takes_effect(kit_tmp: Path) -> None:
    """kit.toml's `[dev] scenarios` pointed elsewhere: one line, and the offline model
    answers from the new folder; pointed at nothing, one error line and the old stay."""
    project = write_agent(kit_tmp / "agent")
    (project / "other").mkdir()
    (project / "other" / "x.toml").write_text(
        '[[rule]]\nname = "other"\n[[rule.step]]\ntext = "From the other folder."\n'
    )
    lines: asyncio.Queue[str] = asyncio.Queue()
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        watcher = Watcher(stack, say=lines.put_nowait, poll_s=0.05, settle_s=0.05)
        task = asyncio.create_task(watcher.run())
        client, _session = await open_session(stack)
        try:
            async with asyncio.timeout(WAIT_S):
                await watcher.ready.wait()
            toml = (project / "kit.toml").read_text()
            (project / "kit.toml").write_text(toml + '\n[dev]\nscenarios = ["other"]\n')
            async with asyncio.timeout(WAIT_S):
                line = await lines.get()
            assert line == "kit dev: scenarios now read from other."
            assert answer(await turn_events(client, "hi")) == "From the other folder."

            (project / "kit.toml").write_text(toml + '\n[dev]\nscenarios = ["missing"]\n')
            async with asyncio.timeout(WAIT_S):
                line = await lines.get()
            assert line.startswith("kit dev: not reloaded: ")
            assert "missing" in line
            assert answer(await turn_events(client, "again")) == "From the other folder."
        finally:
            task.cancel()
            await client.close()
