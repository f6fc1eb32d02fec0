"""`kit dev --target fly`'s rehearsal end to end, no network: the project deployed with the
real deploy code into the Fly API emulator (gateway and session machines are containers
of kit's runtime image), moto as the bucket, the emulated Fly proxy in front; a client
talks to it as to https://<app>.fly.dev."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.cli.flydev import Rehearsal, rehearse_fly
from kit.client import SessionClient, create_session
from kit.deploy.fly.apply import destroy
from kit.host.lease import S3Leases
from kit.protocol.frames import Event
from kit.protocol.turns import ends_turn
from kit.storage.s3io import S3Bucket
from tests.agents import RECOVERED_REPLY, turn_counting, write_agent
from tests.dockerhost import fly_containers, runtime_image

pytestmark = pytest.mark.slow

TURN_TIMEOUT_S = 180.0


async def test_deploy_then_chat_through_the_proxy(kit_tmp: Path) -> None:
    """Two gateway machines come up behind the proxy; a client's session runs a turn whose
    tool runs in a session machine, and gets the answer; the control API answers from
    either gateway."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = write_agent(kit_tmp / "agent")
    async with rehearse_fly(project, kit_tmp / "state", image.tag, app="kit-e2e") as fly:
        gateways = await fly.api.list_machines("kit-e2e", metadata={"kit_role": "gateway"})
        assert sorted(g.state for g in gateways) == ["started", "started"]
        info = await create_session(fly.url, fly.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            async with asyncio.timeout(TURN_TIMEOUT_S):
                events = [e async for e in client.turn("slow")]
            assert events[-1].kind == "result", events[-1]
            assert "Slow tool said: started-slow-tool" in str(events[-1].data["text"])
            sandboxes = await fly.api.list_machines(
                "kit-e2e-sandboxes", metadata={"kit_session": info.session_id}
            )
            assert [m.state for m in sandboxes] == ["started"]
            await _control_api_from_either_gateway(fly, client, info.session_id, sandboxes[0].id)


async def _control_api_from_either_gateway(
    fly: Rehearsal, client: SessionClient, session_id: str, machine: str
) -> None:
    """`kit sessions`, `kit sandbox list|oom|kill` and `kit logs` as the gateway that does
    not hold the session answers them: the fleet from the sandbox app, the rest replayed
    to the owner."""
    owner = await _lease_owner(fly, session_id)
    gateways = await fly.api.list_machines(fly.target.app, metadata={"kit_role": "gateway"})
    (other,) = [g.id for g in gateways if g.id != owner]
    headers = {"authorization": f"Bearer {fly.api_token}", "fly-force-instance-id": other}
    async with httpx.AsyncClient(
        base_url=fly.url + "/_kit", headers=headers, trust_env=False, timeout=60
    ) as http:
        rows = (await http.get("/sessions")).json()["sessions"]
        assert [(r["session_id"], r["sandbox"]) for r in rows] == [(session_id, "running")]
        listed = (await http.get("/sandboxes")).json()["sandboxes"]
        assert [(r["session_id"], r["sandbox_id"], r["host"]) for r in listed] == [
            (session_id, machine, owner)
        ]
        # `kit logs --follow`: the owner streams the session's events, replayed there.
        seen: list[str] = []
        async with http.stream("GET", f"/sessions/{session_id}/events?follow=1") as stream:
            async for line in stream.aiter_lines():
                seen.append(json.loads(line).get("kind", "end"))
                if seen[-1] == "result":
                    break
        assert seen[-1] == "result", seen
        answer = await http.post(f"/sandboxes/{session_id}/oom")
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"sandbox_id": machine}
        died = await _died(http, session_id, 1)
        assert (died[-1]["data"]["reason"], died[-1]["data"]["exit_code"]) == ("oom", 137)
        events = await fly.api.list_events(fly.target.sandbox_app, machine)
        exits = [e for e in events if e.type == "exit"]
        assert [e.oom_killed for e in exits][:1] == [True], exits  # the kernel killed it

        # The next turn starts a machine again; kill it from the other gateway too.
        async with asyncio.timeout(TURN_TIMEOUT_S):
            reply = [e async for e in client.turn("echo after the oom")]
        assert reply[-1].kind == "result", reply[-1]
        assert "after the oom" in str(reply[-1].data["text"])
        answer = await http.post(f"/sandboxes/{session_id}/kill", json={"signal": "KILL"})
        assert answer.status_code == 202, answer.text
        died = await _died(http, session_id, 2)
        assert (died[-1]["data"]["reason"], died[-1]["data"]["exit_code"]) == ("killed", 137)


async def _died(http: httpx.AsyncClient, session_id: str, count: int) -> list[dict[str, Any]]:
    """The session's ``sandbox`` ``died`` events, once there are ``count`` (a minute at most)."""
    for _ in range(600):
        lines = (await http.get(f"/sessions/{session_id}/events")).text.splitlines()
        events = [json.loads(line) for line in lines]
        died = [
            e for e in events if e.get("kind") == "sandbox" and e["data"].get("state") == "died"
        ]
        if len(died) >= count:
            return died
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {session_id} never logged {count} sandbox deaths")


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
            first = await turn_counting(client, "echo this first", seqs)
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
            third = await turn_counting(client, "echo after the gateway died", seqs)
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
            fourth = await turn_counting(client, "echo on the new bundle", seqs)
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
        assert fly_containers(kit_tmp / "state") == []


async def _lease_owner(fly: Rehearsal, session_id: str) -> str:
    leases = S3Leases(S3Bucket(fly.bucket.client, fly.target.bucket_name, "logs"), owner="test")
    lease = await leases.peek(session_id)
    assert lease is not None
    return str(lease["owner"])
