"""`kit dev --target fly`'s rehearsal end to end, no network: the project deployed with the
real deploy code into the Fly API emulator (gateway and session machines are containers
of kit's runtime image), moto as the bucket, the emulated Fly proxy in front; a client
talks to it as to https://<app>.fly.dev."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kit.cli.flydev import Rehearsal, rehearse_fly
from kit.client import SessionClient, create_session
from kit.deploy.fly.apply import destroy
from kit.host.lease import S3Leases
from kit.protocol.frames import Event
from kit.protocol.turns import ends_turn
from kit.storage.s3io import S3Bucket
from tests.agents import RECOVERED_REPLY, write_agent
from tests.dockerhost import fly_containers, runtime_image

pytestmark = pytest.mark.slow

TURN_TIMEOUT_S = 180.0


async def test_deploy_then_chat_through_the_proxy(kit_tmp: Path) -> None:
    """Two gateway machines come up behind the proxy; a client's session runs a turn whose
    tool runs in a session machine, and gets the answer."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    async with rehearse_fly(project, kit_tmp / "state", image.tag, app="kit-e2e") as fly:
        gateways = await fly.api.list_machines("kit-e2e", metadata={"kit_role": "gateway"})
        assert sorted(g.state for g in gateways) == ["started", "started"]
        info = await create_session(fly.url, fly.api_token)
        async with (
            asyncio.timeout(TURN_TIMEOUT_S),
            SessionClient(info.ws_url, info.token) as client,
        ):
            events = [e async for e in client.turn("slow")]
        assert events[-1].kind == "result", events[-1]
        assert "Slow tool said: started-slow-tool" in str(events[-1].data["text"])
        sandboxes = await fly.api.list_machines(
            "kit-e2e-sandboxes", metadata={"kit_session": info.session_id}
        )
        assert [m.state for m in sandboxes] == ["started"]


async def _prompt_stored(fly: Rehearsal, session_id: str, text: str) -> None:
    """Until the session's transcript in the bucket holds ``text`` (at most a minute)."""
    s3 = fly.bucket.client
    for _ in range(600):
        listed = s3.list_objects_v2(Bucket=fly.target.bucket_name, Prefix="transcripts/")
        for item in listed.get("Contents", []):
            if session_id in item["Key"]:
                body = s3.get_object(Bucket=fly.target.bucket_name, Key=item["Key"])["Body"]
                if text in body.read().decode(errors="replace"):
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never reached the transcript of {session_id}")


async def _session_machine(fly: Rehearsal, session_id: str) -> str:
    machines = await fly.api.list_machines(
        fly.target.sandbox_app, states=("started",), metadata={"kit_session": session_id}
    )
    assert len(machines) == 1, machines
    return machines[0].id


async def test_the_acceptance_flow(kit_tmp: Path) -> None:
    """Deploy → a turn with a tool → the session's machine SIGKILLed mid-tool (the turn
    finishes in a new machine with the recovered answer) → the gateway holding the session
    killed (the client resumes through the proxy, no event lost or repeated) → a changed
    bundle deployed mid-conversation (the next machine runs it) → destroy leaves no app,
    machine or object."""
    image = runtime_image()
    project = write_agent(kit_tmp / "agent")
    async with rehearse_fly(
        project, kit_tmp / "state", image.tag, app="kit-accept", lease_ttl_s=5
    ) as fly:
        info = await create_session(fly.url, fly.api_token)
        seqs: list[int] = []
        async with SessionClient(info.ws_url, info.token) as client:
            first = await _turn(client, "echo this first", seqs)
            assert first[-1].kind == "result"

            # The session's machine dies mid-tool.
            await client.send("slow")
            killed = False
            second: list[Event] = []
            async with asyncio.timeout(TURN_TIMEOUT_S):
                async for event in client.events():
                    seqs.append(event.seq)
                    second.append(event)
                    if event.kind == "tool_use" and not killed:
                        await _prompt_stored(fly, info.session_id, "slow")
                        machine = await _session_machine(fly, info.session_id)
                        await fly.api.signal_machine(fly.target.sandbox_app, machine, "SIGKILL")
                        killed = True
                    if ends_turn(event.kind, event.data):
                        break
            assert second[-1].kind == "result"
            assert RECOVERED_REPLY in str(second[-1].data["text"])
            died = [e for e in second if e.kind == "sandbox" and e.data.get("state") == "died"]
            assert [(e.data["reason"], e.data["exit_code"]) for e in died] == [("killed", 137)]

            # The gateway holding the session dies (stopped with SIGKILL: no drain).
            owner = await _lease_owner(fly, info.session_id)
            await fly.api.stop_machine(fly.target.app, owner, signal="SIGKILL", timeout_s=1)
            third = await _turn(client, "echo after the gateway died", seqs)
            assert third[-1].kind == "result"
            assert client.reconnects >= 1

            # A changed bundle, deployed mid-conversation, reaches the next machine.
            (project / "prompt.md").write_text("You are the second release.\n")
            old = await _session_machine(fly, info.session_id)
            new = await fly.redeploy()
            assert [s.kind.value for s in new.steps] == ["upload bundle", "point to"]
            # The gateways follow the deploy pointer: the idle session's machine, of the old
            # bundle, is stopped, and the next turn's machine runs the new one.
            await fly.api.wait(fly.target.sandbox_app, old, "stopped", timeout_s=120)
            fourth = await _turn(client, "echo on the new bundle", seqs)
            assert fourth[-1].kind == "result"
            running = await fly.api.get_machine(
                fly.target.sandbox_app, await _session_machine(fly, info.session_id)
            )
            assert f"/bundles/{fly.bundle.digest[:32]}/" in json.dumps(running.config["files"])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, none repeated

        removed = await destroy(fly.target, fly.deployment)
        assert f"app {fly.target.app}" in removed
        assert not fly.fly_api.backend.apps.all()
        assert not await fly.bucket.exists()
        assert fly_containers() == []


async def _turn(client: SessionClient, text: str, seqs: list[int]) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(TURN_TIMEOUT_S):
        await client.send(text)
        async for event in client.events():
            seqs.append(event.seq)
            events.append(event)
            if ends_turn(event.kind, event.data):
                return events
    raise AssertionError("the turn never ended")


async def _lease_owner(fly: Rehearsal, session_id: str) -> str:
    leases = S3Leases(S3Bucket(fly.bucket.client, fly.target.bucket_name, "logs"), owner="test")
    lease = await leases.peek(session_id)
    assert lease is not None
    return str(lease["owner"])
