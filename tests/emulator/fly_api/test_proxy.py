"""The emulated Fly proxy against real machine services on their loopback private_ips."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

import emulator.fly_api.proxy
from emulator.fly_api import FlyEmulatorError, InProcessRunner, serve
from emulator.fly_api.proxy import serve_proxy
from tests.emulator.fly_api.conftest import TOKEN
from tests.emulator.fly_api.proxy_services import APP, Cloud
from tests.emulator.fly_api.spec_check import checked

LIMIT_S = 10


@pytest.fixture
async def cloud() -> AsyncIterator[Cloud]:
    """The emulator with app ``kit-gw`` (no machines yet)."""
    async with AsyncExitStack() as stack:
        served = await stack.enter_async_context(serve(token=TOKEN, runner=InProcessRunner()))
        api = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
        )
        r = await api.post("/v1/apps", json={"name": APP, "org_slug": "personal"})
        checked(r, "Apps_create", 201)
        yield Cloud(served, api, stack)


@pytest.fixture
async def edge(cloud: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the proxy serving ``kit-gw`` (``https://kit-gw.fly.dev``)."""
    async with (
        serve_proxy(cloud.served.backend, APP) as url,
        httpx.AsyncClient(base_url=url, timeout=LIMIT_S) as client,
    ):
        yield client


def echo(r: httpx.Response) -> dict[str, Any]:
    """The echoing service's JSON."""
    assert r.status_code == 200, r.text
    found: dict[str, Any] = json.loads(r.text)
    return found


async def test_a_request_reaches_a_started_machine_with_flys_headers(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """Method, path and body reach the started machine, with Fly's forwarding headers; the
    answer carries the same fly-request-id."""
    service = await cloud.machine()
    r = await edge.post("/things?x=1", content=b"payload")
    seen = echo(r)
    assert seen["machine"] == service.machine_id
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/things", "payload")
    headers = seen["headers"]
    assert headers["x-forwarded-proto"] == "https"
    assert headers["fly-client-ip"] == "127.0.0.1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["fly-request-id"] == r.headers["fly-request-id"]
    assert r.headers["x-machine"] == "yes"


async def test_requests_go_round_robin_across_started_machines(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """Two started machines take turns."""
    a, b = await cloud.machine(), await cloud.machine()
    order = [echo(await edge.get("/"))["machine"] for _ in range(4)]
    assert order in (
        [a.machine_id, b.machine_id] * 2,
        [b.machine_id, a.machine_id] * 2,
    )


async def test_a_stopped_machine_with_autostart_is_started_for_a_request(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """No machine started, one stopped with ``autostart: true``: the proxy starts it
    through the Machines API's semantics and the request reaches it."""
    service = await cloud.machine(autostart=True, state="stopped")
    assert echo(await edge.get("/"))["machine"] == service.machine_id
    assert await cloud.state(service.machine_id) == "started"


async def test_no_machine_to_answer_is_a_503_naming_the_fix(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """No machines, then a stopped one without autostart: 503 saying what to do, and the
    stopped machine stays stopped."""
    r = await edge.get("/")
    assert r.status_code == 503
    assert "autostart" in r.text
    service = await cloud.machine(state="stopped")
    assert (await edge.get("/")).status_code == 503
    assert await cloud.state(service.machine_id) == "stopped"


async def test_force_instance_routes_to_that_machine_only(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """``fly-force-instance-id`` pins every request to that machine; an unknown id is a 503
    rather than any other machine; ``fly-prefer-instance-id`` picks that machine, and an
    unknown one falls back to any."""
    await cloud.machine()
    b = await cloud.machine()
    forced = {"fly-force-instance-id": b.machine_id}
    assert {echo(await edge.get("/", headers=forced))["machine"] for _ in range(3)} == {
        b.machine_id
    }
    assert (await edge.get("/", headers={"fly-force-instance-id": "0" * 14})).status_code == 503
    preferred = {"fly-prefer-instance-id": b.machine_id}
    assert {echo(await edge.get("/", headers=preferred))["machine"] for _ in range(3)} == {
        b.machine_id
    }
    assert (await edge.get("/", headers={"fly-prefer-instance-id": "0" * 14})).status_code == 200


async def test_fly_replay_sends_the_same_request_to_the_named_instance(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """A machine answering ``fly-replay: instance=<b>`` is not passed on: b gets the same
    request (method, path, body) with ``fly-replay-src`` naming the source and the state."""
    a, b = await cloud.machine(), await cloud.machine()
    a.replay = f"instance={b.machine_id};state=lease-7"
    r = await edge.post("/turn", content=b"hello", headers={"fly-force-instance-id": a.machine_id})
    seen = echo(r)
    assert "fly-replay" not in r.headers
    assert (seen["machine"], seen["method"], seen["path"], seen["body"]) == (
        b.machine_id,
        "POST",
        "/turn",
        "hello",
    )
    src = seen["headers"]["fly-replay-src"]
    assert re.fullmatch(rf"instance={a.machine_id};region=iad;t=\d+;state=lease-7", src)
    assert len(a.seen) == 1


async def test_fly_replay_of_a_websocket_upgrade_is_performed_by_the_target(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """A socket's upgrade answered with ``fly-replay`` is upgraded by the named instance;
    messages flow both ways through the proxy; the first machine never accepted it."""
    a, b = await cloud.machine(), await cloud.machine()
    a.replay = f"instance={b.machine_id}"
    url = str(edge.base_url).replace("http://", "ws://") + "/ws"
    with anyio.fail_after(LIMIT_S):
        async with connect(
            url, additional_headers={"fly-force-instance-id": a.machine_id}
        ) as socket:
            for text in ("one", "two"):
                await socket.send(text)
                assert await socket.recv() == f"{b.machine_id}:{text}"
    assert (a.accepted, b.accepted) == (0, 1)
    assert [s["type"] for s in a.seen] == ["websocket"]


async def test_a_machine_closing_a_websocket_closes_the_clients(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """The machine's close frame and end of stream reach the client through the relay."""
    service = await cloud.machine()
    url = str(edge.base_url).replace("http://", "ws://") + "/ws"
    with anyio.fail_after(LIMIT_S):
        async with connect(url, close_timeout=3 * LIMIT_S) as socket:
            await socket.send("close")
            await socket.wait_closed()
    assert socket.close_code == 4000
    assert service.accepted == 1


async def test_a_replay_no_machine_can_take_fails_with_the_reason(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """Replays to a stopped machine without autostart and to a missing one are answered
    503 with ``fly-replay-failed: reason=no_candidate``; with ``fallback=prefer_self`` the
    source machine gets the request again, with that header."""
    a = await cloud.machine()
    stopped = await cloud.machine(state="stopped")
    for instance in (stopped.machine_id, "0" * 14):
        a.replay = f"instance={instance}"
        r = await edge.get("/")
        assert r.status_code == 503
        assert r.headers["fly-replay-failed"].startswith("reason=no_candidate;")
    a.replay = f"instance={stopped.machine_id};fallback=prefer_self"
    r = await edge.get("/")
    assert (r.status_code, r.text) == (200, "fallback")
    assert stopped.seen == []


async def test_replays_are_bounded(cloud: Cloud, edge: httpx.AsyncClient) -> None:
    """Two machines replaying to each other: 502 ``reason=retries_exhausted``."""
    a, b = await cloud.machine(), await cloud.machine()
    a.replay, b.replay = f"instance={b.machine_id}", f"instance={a.machine_id}"
    r = await edge.get("/")
    assert r.status_code == 502
    assert r.headers["fly-replay-failed"].startswith("reason=retries_exhausted;")


async def test_a_slow_response_is_streamed(cloud: Cloud, edge: httpx.AsyncClient) -> None:
    """The first chunk reaches the client while the machine still holds the rest."""
    service = await cloud.machine()
    with anyio.fail_after(LIMIT_S):
        async with edge.stream("GET", "/stream") as r:
            chunks = r.aiter_raw()
            assert await anext(chunks) == b"first"
            service.gate.set()
            assert b"".join([c async for c in chunks]) == b"rest"


async def test_the_proxy_serves_on_loopback_only(cloud: Cloud) -> None:
    """Any other address is refused with the fix."""
    with pytest.raises(FlyEmulatorError, match=r"use 127\.0\.0\.1"):
        async with serve_proxy(cloud.served.backend, APP, host="0.0.0.0"):
            pass


def test_the_public_names_are_pinned() -> None:
    """What ``kit dev --target fly`` wires in."""
    assert sorted(emulator.fly_api.proxy.__all__) == [
        "FlyProxy",
        "MAX_REPLAYS",
        "REPLAY_BODY_LIMIT",
        "serve_proxy",
    ]


async def test_a_replay_to_a_stopped_machine_with_autostart_starts_it(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """The replay's target is stopped but its service autostarts: the proxy starts it and
    the request reaches it."""
    a = await cloud.machine()
    b = await cloud.machine(autostart=True, state="stopped")
    a.replay = f"instance={b.machine_id}"
    r = await edge.get("/", headers={"fly-force-instance-id": a.machine_id})
    assert echo(r)["machine"] == b.machine_id
    assert await cloud.state(b.machine_id) == "started"


async def test_a_replay_elsewhere_goes_to_another_machine(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """``elsewhere=true`` sends the request to a machine other than the one that answered."""
    a, b = await cloud.machine(), await cloud.machine()
    a.replay = "elsewhere=true"
    for _ in range(3):
        r = await edge.get("/", headers={"fly-force-instance-id": a.machine_id})
        assert echo(r)["machine"] == b.machine_id
    assert len(a.seen) == 3  # each request went from a straight to b


async def test_a_replay_to_another_app_reaches_its_machine(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """``app=<other>;instance=<id>`` sends the request to that app's machine."""
    a = await cloud.machine()
    r = await cloud.api.post("/v1/apps", json={"name": "kit-other", "org_slug": "personal"})
    checked(r, "Apps_create", 201)
    other = await cloud.machine(app="kit-other")
    a.replay = f"app=kit-other;instance={other.machine_id}"
    assert echo(await edge.get("/"))["machine"] == other.machine_id


async def test_a_body_over_1_mb_is_streamed_through_but_not_replayed(
    cloud: Cloud, edge: httpx.AsyncClient
) -> None:
    """A 1.5 MB body reaches the machine whole; a replay of it is refused with a 502
    naming the way out."""
    a, b = await cloud.machine(), await cloud.machine()
    big = b"x" * (1024 * 1024 + 512 * 1024)
    forced = {"fly-force-instance-id": a.machine_id}
    assert echo(await edge.post("/", content=big, headers=forced))["body"] == big.decode()
    a.replay = f"instance={b.machine_id}"
    r = await edge.post("/", content=big, headers=forced)
    assert r.status_code == 502
    assert "fly-force-instance-id" in r.text
    assert b.seen == []
