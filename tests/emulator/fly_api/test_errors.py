"""Errors on the wire: 401 without the token, 404, 400, rate limits (429, then recovery on
the fake clock), a fly-request-id on every answer, loopback only."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import httpx
import pytest

from emulator.fly_api import FakeClock, FlyEmulatorError, InProcessRunner, serve
from tests.emulator.fly_api.conftest import TOKEN, Fly
from tests.emulator.fly_api.spec_check import checked

APP = "kit-test"


async def test_without_the_token_every_route_is_401(fly: Fly) -> None:
    """No Authorization, a wrong token or a wrong scheme: 401 with Fly's text."""
    async with httpx.AsyncClient(base_url=fly.served.url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            r = await anonymous.get("/v1/apps", params={"org_slug": "x"}, headers=headers)
            body = checked(r, "Apps_list", 401)
            assert body["error"] == "Authenticate: token validation error"
        r = await anonymous.get("/v1/apps", headers={"Authorization": f"FlyV1 {TOKEN}"})
        checked(r, "Apps_list", 200)


async def test_unknown_app_machine_and_route_are_404_and_bad_bodies_400(fly: Fly) -> None:
    """404 for what does not exist; 400 for a body that is not JSON or lacks config."""
    checked(await fly.http.get("/v1/apps/nope"), "Apps_show", 404)
    await fly.app(APP)
    checked(await fly.http.get(f"/v1/apps/{APP}/machines/0123"), "Machines_show", 404)
    checked(await fly.http.get("/v1/volumes"), "Apps_show", 404)
    r = await fly.http.post(f"/v1/apps/{APP}/machines", content=b"{not json")
    checked(r, "Machines_create", 400)
    r = await fly.http.post(f"/v1/apps/{APP}/machines", json={"config": {}})
    assert "config.image" in checked(r, "Machines_create", 400)["error"]
    r = await fly.http.post(
        f"/v1/apps/{APP}/machines", json={"config": {"image": "x"}, "lease_ttl": "soon"}
    )
    checked(r, "Machines_create", 400)
    r = await fly.http.post(f"/v1/apps/{APP}/machines", json={"config": {"image": "x"}})
    mid = checked(r, "Machines_create", 200)["id"]
    listed = checked(await fly.http.get(f"/v1/apps/{APP}/machines"), "Machines_list", 200)
    assert [m["id"] for m in listed] == [mid]
    r = await fly.http.post(f"/v1/apps/{APP}/machines/{mid}/stop", json={"timeout": "soon"})
    checked(r, "Machines_stop", 400)


async def test_rate_limit_429_per_action_per_machine_then_recovery() -> None:
    """Burst 3 at 1/s per action per machine: the 4th start is a 429 while another action
    and another machine still pass; a second later on the clock, one more passes. Get
    Machine has its own 10 burst."""
    clock = FakeClock()
    async with serve(token=TOKEN, runner=InProcessRunner(), clock=clock) as served:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=served.url, headers=headers) as http:
            await http.post("/v1/apps", json={"name": APP, "org_slug": "personal"})
            body = {"config": {"image": "x"}, "skip_launch": True}
            one = (await http.post(f"/v1/apps/{APP}/machines", json=body)).json()["id"]
            two = (await http.post(f"/v1/apps/{APP}/machines", json=body)).json()["id"]
            path = f"/v1/apps/{APP}/machines/{one}"
            for _ in range(3):
                checked(await http.get(path + "/metadata"), "Machines_show_metadata", 200)
            limited = await http.get(path + "/metadata")
            assert "rate limit" in checked(limited, "Machines_show_metadata", 429)["error"]
            other = f"/v1/apps/{APP}/machines/{two}/metadata"
            checked(await http.get(other), "Machines_show_metadata", 200)
            checked(await http.get(path + "/events"), "Machines_list_events", 200)
            clock.advance(1.0)
            checked(await http.get(path + "/metadata"), "Machines_show_metadata", 200)
            checked(await http.get(path + "/metadata"), "Machines_show_metadata", 429)
            for _ in range(10):
                checked(await http.get(path), "Machines_show", 200)
            checked(await http.get(path), "Machines_show", 429)
            clock.advance(0.2)
            checked(await http.get(path), "Machines_show", 200)


async def test_serve_refuses_a_non_loopback_host() -> None:
    """The emulator binds loopback only."""
    with pytest.raises(FlyEmulatorError, match="loopback"):
        async with serve(token=TOKEN, host="0.0.0.0"):
            pass


async def test_leaving_serve_ends_a_pending_wait() -> None:
    """A client still in a 60 s /wait does not hold the emulator open when it stops."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    http = httpx.AsyncClient(headers=headers, timeout=90)
    try:
        with anyio.fail_after(30):
            async with serve(token=TOKEN, rate_limits=None) as served:
                base = f"{served.url}/v1/apps/{APP}/machines"
                await http.post(f"{served.url}/v1/apps", json={"name": APP, "org_slug": "o"})
                body = {"config": {"image": "x"}, "skip_launch": True}
                mid = (await http.post(base, json=body)).json()["id"]
                pending = asyncio.create_task(http.get(f"{base}/{mid}/wait?timeout=60"))
                machine = served.backend.machines[mid]
                for _ in range(1000):
                    if machine.waiters or pending.done():
                        break
                    await asyncio.sleep(0.01)
                assert machine.waiters == 1
        with contextlib.suppress(httpx.HTTPError):
            await pending
    finally:
        await http.aclose()
