"""``getTcpPort(port).fetch``: HTTP relayed into ``--network none`` containers, streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio

from tests.emulator.containers.conftest import TOKEN, Emu

STREAM_LIMIT_S = 30.0


async def test_not_listening_is_503(emu: Emu) -> None:
    """A running container with nothing on the port: 503 ``not_listening``; a container
    that is not running: 503 ``not_running``."""
    await emu.start("c1", entrypoint=["sleep", "1000"])
    r = await emu.http.get("/containers/c1/ports/8080/healthz")
    assert r.status_code == 503
    assert r.json()["error"] == "not_listening"
    r = await emu.http.get("/containers/c2/ports/8080/healthz")
    assert r.status_code == 503
    assert r.json()["error"] == "not_running"


async def test_a_port_that_hangs_up_is_502(emu: Emu) -> None:
    """A server that closes the connection without answering: 502 ``bad_gateway`` JSON
    naming the port (not a 500), and the next request to the port is served."""
    await emu.serve_echo("c1")
    r = await emu.http.get("/containers/c1/ports/8080/hangup")
    assert r.status_code == 502
    assert r.json()["error"] == "bad_gateway"
    assert "8080" in r.json()["message"]
    assert (await emu.http.get("/containers/c1/ports/8080/v1/x")).json()["path"] == "/v1/x"


async def test_request_reaches_the_port_with_the_shims_headers(emu: Emu) -> None:
    """Path and query arrive; the shim's own ``Authorization`` passes when the emulator's
    token came in ``x-kit-emulator-authorization`` (which never reaches the container)."""
    await emu.serve_echo("c1")
    r = await emu.http.get(
        "/containers/c1/ports/8080/v1/x",
        params={"a": "1"},
        headers={
            "x-kit-emulator-authorization": f"Bearer {TOKEN}",
            "Authorization": "Bearer runtime-token",
        },
    )
    assert r.json() == {
        "path": "/v1/x?a=1",
        "name": "c1",
        "authorization": "Bearer runtime-token",
        "emulator": None,
    }
    r = await emu.http.get("/containers/c1/ports/8080/v1/y")
    assert r.json()["authorization"] is None  # the emulator's token stays here


async def test_two_containers_share_a_port_number(emu: Emu) -> None:
    """Each container has its own loopback: both listen on 8080, each answers its own."""
    await emu.serve_echo("c1")
    await emu.serve_echo("c2")
    for cid in ("c1", "c2"):
        r = await emu.http.get(f"/containers/{cid}/ports/8080/{cid}")
        assert r.json()["path"] == f"/{cid}"
        assert r.json()["name"] == cid


async def test_request_body_streams_in(emu: Emu) -> None:
    """A chunked request body of unknown length arrives whole (5 MB in 64 KiB parts)."""
    await emu.serve_echo("c1")

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 65536

    r = await emu.http.post("/containers/c1/ports/8080/count", content=parts())
    assert r.status_code == 200
    assert r.json() == {"bytes": 80 * 65536}


async def test_ndjson_answer_streams_event_by_event(emu: Emu) -> None:
    """Each NDJSON line reaches the client before the container has written the next
    (the server writes line i+1 only after the test asks for it having read line i)."""
    await emu.serve_echo("c1")
    seen: list[int] = []
    with anyio.fail_after(STREAM_LIMIT_S):
        async with emu.http.stream("GET", "/containers/c1/ports/8080/events?n=3") as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-ndjson"
            async for line in r.aiter_lines():
                if not line:
                    continue
                seen.append(json.loads(line)["i"])
                if len(seen) < 3:
                    assert (
                        await emu.http.post("/containers/c1/ports/8080/next")
                    ).status_code == 200
    assert seen == [0, 1, 2]


async def test_a_repeated_header_comes_back_repeated(emu: Emu) -> None:
    """Two ``set-cookie`` lines from the container reach the shim as two, not one."""
    await emu.serve_echo("c1")
    r = await emu.http.get("/containers/c1/ports/8080/cookies")
    assert r.status_code == 200
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
