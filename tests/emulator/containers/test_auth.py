"""Every route of the container emulator wants its token."""

from __future__ import annotations

import httpx
import pytest

from emulator.containers import DockerRunner, serve

TOKEN = "auth-test-token"
ROUTES = [
    ("POST", "/containers/abc/start"),
    ("GET", "/containers/abc"),
    ("GET", "/containers/abc/monitor"),
    ("POST", "/containers/abc/signal"),
    ("POST", "/containers/abc/destroy"),
    ("GET", "/containers/abc/ports/8080/healthz"),
    ("POST", "/containers/abc/ports/8080/v1/turns"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"x-kit-emulator-authorization": "Bearer wrong-token", "Authorization": f"Bearer {TOKEN}"},
    ],
    ids=["none", "wrong", "not-bearer", "wrong-emulator-header"],
)
async def test_every_route_refuses_without_the_token(
    method: str, path: str, headers: dict[str, str]
) -> None:
    """No token, a wrong one, or a non-Bearer one: 401 ``unauthorized`` JSON, nothing done."""
    async with (
        DockerRunner() as runner,
        serve(token=TOKEN, runner=runner) as served,
        httpx.AsyncClient(base_url=served.url, timeout=30) as http,
    ):
        r = await http.request(method, path, headers=headers, json={})
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"
        assert "Bearer" in r.json()["message"]
        assert served.backend.containers == {}


async def test_token_is_accepted_in_either_header() -> None:
    """``Authorization: Bearer`` or ``x-kit-emulator-authorization: Bearer`` both admit."""
    async with (
        DockerRunner() as runner,
        serve(token=TOKEN, runner=runner) as served,
        httpx.AsyncClient(base_url=served.url, timeout=30) as http,
    ):
        for headers in (
            {"Authorization": f"Bearer {TOKEN}"},
            {"x-kit-emulator-authorization": f"Bearer {TOKEN}", "Authorization": "Bearer x"},
        ):
            r = await http.get("/containers/abc", headers=headers)
            assert r.status_code == 200
            assert r.json() == {"running": False, "exit_code": None, "oom": False}
