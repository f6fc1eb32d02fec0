"""The model proxy against a real upstream (the offline model on loopback): key swap,
refusals, byte-for-byte streaming, keep-alive, upstream down."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from emulator.model import ScenarioSource, create_app
from emulator.model.app import redacted
from kit.host.proxy import ModelProxy
from kit.ids import SessionId

REAL_KEY = "sk-ant-real-key-for-proxy-tests"
BODY = {
    "model": "m",
    "max_tokens": 10,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, Any]]:
    """The offline model served on a free loopback port; yields its URL and app."""
    app = create_app(ScenarioSource.empty(), api_key=REAL_KEY)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    server.should_exit = True
    await task


@pytest.fixture
async def proxy(
    upstream: tuple[str, Any], kit_tmp: Path
) -> AsyncIterator[tuple[ModelProxy, httpx.AsyncClient]]:
    """A proxy on a Unix socket and an httpx client speaking to it."""
    model_proxy = ModelProxy(upstream[0], REAL_KEY)
    path = kit_tmp / "p.sock"
    await model_proxy.serve_unix(path)
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://localhost"
    ) as http:
        yield model_proxy, http
    await model_proxy.aclose()


async def test_token_is_swapped_for_the_real_key(
    proxy: tuple[ModelProxy, httpx.AsyncClient], upstream: tuple[str, Any]
) -> None:
    """Upstream sees the real key and never the session token; other headers pass through."""
    model_proxy, http = proxy
    token = model_proxy.issue(SessionId("s"))
    r = await http.post(
        "/v1/messages?beta=true",
        json=BODY,
        headers={"x-api-key": token, "anthropic-beta": "a,b", "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 200
    assert "event: message_start" in r.text
    seen = upstream[1].state.requests.entries()[-1]
    assert seen["headers"]["x-api-key"] == redacted(REAL_KEY)
    assert token not in json.dumps(seen)
    assert seen["headers"]["anthropic-beta"] == "a,b"
    assert seen["query"] == "beta=true"


async def test_bytes_arrive_exactly_as_upstream_sent_them(
    proxy: tuple[ModelProxy, httpx.AsyncClient], upstream: tuple[str, Any]
) -> None:
    """The SSE body through the proxy is identical to the body straight from upstream."""
    model_proxy, http = proxy
    token = model_proxy.issue(SessionId("s"))
    via = await http.post("/v1/messages", json=BODY, headers={"x-api-key": token})
    async with httpx.AsyncClient() as direct:
        straight = await direct.post(
            upstream[0] + "/v1/messages", json=BODY, headers={"x-api-key": REAL_KEY}
        )
    assert _without_ids(via.text) == _without_ids(straight.text)
    assert via.headers["content-type"] == straight.headers["content-type"]


async def test_keep_alive_carries_several_requests(
    proxy: tuple[ModelProxy, httpx.AsyncClient],
) -> None:
    """Several requests on one kept-alive connection all succeed."""
    model_proxy, http = proxy
    token = model_proxy.issue(SessionId("s"))
    for _ in range(3):
        r = await http.post("/v1/messages/count_tokens", json=BODY, headers={"x-api-key": token})
        assert r.status_code == 200
        assert "input_tokens" in r.json()
    assert model_proxy.requests_forwarded == 3


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("POST", "/v1/messages", "kit-model-unknown", 401),
        ("POST", "/v1/messages", None, 401),
        ("GET", "/v1/messages", "valid", 403),
        ("POST", "/v1/complete", "valid", 403),
        ("POST", "/v1/messages/../admin", "valid", 403),
    ],
)
async def test_refusals(
    proxy: tuple[ModelProxy, httpx.AsyncClient],
    method: str,
    path: str,
    token: str | None,
    status: int,
) -> None:
    """Unknown tokens are 401, other methods and paths 403, in the Messages API's error shape."""
    model_proxy, http = proxy
    valid = model_proxy.issue(SessionId("s"))
    headers = {} if token is None else {"x-api-key": valid if token == "valid" else token}
    r = await http.request(method, path, json=BODY, headers=headers)
    assert r.status_code == status
    assert r.json()["type"] == "error"
    assert model_proxy.requests_forwarded == 0


async def test_revoked_token_is_refused(proxy: tuple[ModelProxy, httpx.AsyncClient]) -> None:
    """A token stops working when its sandbox is gone."""
    model_proxy, http = proxy
    token = model_proxy.issue(SessionId("s"))
    model_proxy.revoke(token)
    r = await http.post("/v1/messages", json=BODY, headers={"x-api-key": token})
    assert r.status_code == 401


async def test_upstream_down_is_a_502(kit_tmp: Path) -> None:
    """When upstream refuses connections the client gets 502 api_error, not a hang."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    model_proxy = ModelProxy(f"http://127.0.0.1:{port}", REAL_KEY)
    await model_proxy.serve_unix(kit_tmp / "q.sock")
    token = model_proxy.issue(SessionId("s"))
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(kit_tmp / "q.sock")), base_url="http://x"
    ) as http:
        r = await http.post("/v1/messages", json=BODY, headers={"x-api-key": token})
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "api_error"
    await model_proxy.aclose()


def _without_ids(text: str) -> list[str]:
    """SSE lines minus those carrying random message/tool ids."""
    return [line for line in text.splitlines() if '"id"' not in line]
