"""The model proxy against a real upstream (the offline model on loopback): key swap,
refusals, byte-for-byte streaming, keep-alive, upstream down, spend limits and usage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from emulator.model import ScenarioSource, create_app
from emulator.model.app import redacted
from emulator.model.sse import decode_events
from kit.bundle.limits import Limits, Tokens
from kit.host import proxy as proxy_module
from kit.host.proxy import MAX_CALLS_IN_FLIGHT, ModelProxy
from kit.ids import SessionId, TurnId
from tests.agents import until

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


def _upstream_calls(upstream: tuple[str, Any]) -> list[dict[str, Any]]:
    return list(upstream[1].state.requests.entries())


async def test_usage_is_counted_as_it_streams(
    proxy: tuple[ModelProxy, httpx.AsyncClient], upstream: tuple[str, Any]
) -> None:
    """Streamed and whole replies both count input and output toward the session and the
    turn, priced by model; count_tokens counts nothing; upstream is asked for identity."""
    model_proxy, http = proxy
    sid = SessionId("s")
    token = model_proxy.issue(sid)
    model_proxy.meter.begin_turn(sid, TurnId("t1"))
    body = {**BODY, "model": "claude-opus-5-5"}
    streamed = await http.post("/v1/messages", json=body, headers={"x-api-key": token})
    whole = await http.post(
        "/v1/messages", json={**body, "stream": False}, headers={"x-api-key": token}
    )
    await http.post("/v1/messages/count_tokens", json=body, headers={"x-api-key": token})
    events = {e.name: e.data for e in decode_events(streamed.text)}
    started = events["message_start"]["message"]["usage"]["input_tokens"]
    ended = events["message_delta"]["usage"]["output_tokens"]
    usage = whole.json()["usage"]
    spent = model_proxy.meter.spent(sid)
    assert spent.turn.input == started + usage["input_tokens"]
    assert spent.turn.output == ended + usage["output_tokens"]
    assert spent.session == spent.turn
    assert spent.turn_usd == pytest.approx(spent.turn.input * 4e-6 + spent.turn.output * 20e-6)
    assert {c["headers"]["accept-encoding"] for c in _upstream_calls(upstream)} == {"identity"}


async def test_past_a_limit_the_call_is_refused_and_never_forwarded(
    proxy: tuple[ModelProxy, httpx.AsyncClient], upstream: tuple[str, Any]
) -> None:
    """Once a turn has reached limits.turn_tokens, a call gets 402 billing_error naming the
    setting (x-should-retry: false) and the upstream sees nothing; a new turn may call again."""
    model_proxy, http = proxy
    sid = SessionId("s")
    token = model_proxy.issue(sid, Limits(turn_tokens=5))
    model_proxy.meter.begin_turn(sid, TurnId("t1"))
    assert (await http.post("/v1/messages", json=BODY, headers={"x-api-key": token})).is_success
    calls = len(_upstream_calls(upstream))
    for _ in range(3):
        r = await http.post("/v1/messages", json=BODY, headers={"x-api-key": token})
        assert r.status_code == 402
        assert r.headers["x-should-retry"] == "false"
        assert r.json()["error"]["type"] == "billing_error"
        assert "reaching limits.turn_tokens = 5 in kit.toml" in r.json()["error"]["message"]
    assert len(_upstream_calls(upstream)) == calls
    assert model_proxy.requests_forwarded == 1
    model_proxy.meter.begin_turn(sid, TurnId("t2"))
    assert (await http.post("/v1/messages", json=BODY, headers={"x-api-key": token})).is_success


async def test_the_model_allowlist_covers_count_tokens(
    proxy: tuple[ModelProxy, httpx.AsyncClient], upstream: tuple[str, Any]
) -> None:
    """A model outside limits.models is refused for messages and count_tokens alike;
    an allowed one passes."""
    model_proxy, http = proxy
    token = model_proxy.issue(SessionId("s"), Limits(models=("claude-haiku-*",)))
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        r = await http.post(path, json=BODY, headers={"x-api-key": token})
        assert r.status_code == 402
        assert "'m': it is not in limits.models" in r.json()["error"]["message"]
    assert _upstream_calls(upstream) == []
    r = await http.post(
        "/v1/messages/count_tokens",
        json={**BODY, "model": "claude-haiku-4-5"},
        headers={"x-api-key": token},
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"messages": []}',
        b'{"model": 5}',
        b'{"model": "claude-haiku-4-5", "max_tokens": 1, "model": "claude-opus-4-1"}',
        b'{"model": "m", "metadata": {"a": 1, "a": 2}}',
    ],
)
async def test_a_body_whose_model_cannot_be_read_is_refused(
    proxy: tuple[ModelProxy, httpx.AsyncClient], upstream: tuple[str, Any], body: bytes
) -> None:
    """No JSON object, no model string, or a repeated key (the upstream might read the
    other model): 400, and nothing forwarded."""
    model_proxy, http = proxy
    token = model_proxy.issue(SessionId("s"))
    r = await http.post("/v1/messages", content=body, headers={"x-api-key": token})
    assert r.status_code == 400
    assert "reads the request's model" in r.json()["error"]["message"]
    assert _upstream_calls(upstream) == []


async def test_an_upstream_whose_usage_cannot_be_read_loses_the_connection(kit_tmp: Path) -> None:
    """A compressed reply cannot be counted: the client gets its bytes, then the proxy closes
    the connection instead of carrying more calls on it."""
    body = b"\x1f\x8b not really gzip"

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: gzip\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await reader.read()  # hold the connection open: only the proxy may end it
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    model_proxy = ModelProxy(f"http://127.0.0.1:{port}", REAL_KEY)
    await model_proxy.serve_unix(kit_tmp / "g.sock")
    token = model_proxy.issue(SessionId("s"))
    reader, writer = await asyncio.open_unix_connection(str(kit_tmp / "g.sock"))
    payload = json.dumps(BODY).encode()
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (token.encode(), len(payload), payload)
    )
    async with asyncio.timeout(10):
        received = await reader.read()  # to EOF: the proxy closed the connection
    assert received.endswith(body)
    writer.close()
    await model_proxy.aclose()
    server.close()


class HeldUpstream:
    """A raw upstream whose streamed replies stop after ``message_start`` (plus ``pad`` bytes
    of text deltas) until the test releases them; then ``output`` tokens end each reply."""

    def __init__(self, *, output: int = 5000, pad: int = 0) -> None:
        self.output, self.pad = output, pad
        self.release = asyncio.Event()
        self.started = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: *(\d+)", head, re.I)[1])  # type: ignore[index]
            await reader.readexactly(length)
            start = {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 7, "output_tokens": 1}},
            }
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "x" * 1000},
            }
            end = {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": self.output},
            }
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            writer.write(_chunk(_event(start)) + _chunk(_event(delta) * (self.pad // 1000)))
            await writer.drain()
            self.started += 1
            await self.release.wait()
            writer.write(
                _chunk(_event(end)) + _chunk(_event({"type": "message_stop"})) + b"0\r\n\r\n"
            )
            await writer.drain()
            await reader.read()
        writer.close()


def _event(data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (str(data["type"]).encode(), json.dumps(data).encode())


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


async def _send(path: Path, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    payload = json.dumps(BODY).encode()
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (token.encode(), len(payload), payload)
    )
    await writer.drain()
    return reader, writer


async def test_a_reply_the_sandbox_hangs_up_on_is_still_counted(kit_tmp: Path) -> None:
    """Output tokens come at a reply's end: a sandbox that hangs up mid-reply does not escape
    them, because the proxy reads the rest of the reply from upstream to count it."""
    held = HeldUpstream(output=5000)
    async with held as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        await model_proxy.serve_unix(kit_tmp / "h.sock")
        sid = SessionId("s")
        token = model_proxy.issue(sid)
        model_proxy.meter.begin_turn(sid, TurnId("t1"))
        reader, writer = await _send(kit_tmp / "h.sock", token)
        async with asyncio.timeout(10):
            await reader.readuntil(b"message_start")
        writer.close()
        await until(lambda: model_proxy.draining == 1, "the proxy to keep reading the reply", 10)
        assert model_proxy.meter.spent(sid).turn == Tokens(input=7, output=1)
        held.release.set()
        await until(lambda: model_proxy.draining == 0, "the reply to end", 10)
        assert model_proxy.meter.spent(sid).turn == Tokens(input=7, output=5000)
        await model_proxy.aclose()


async def test_calls_under_way_are_capped_per_session(kit_tmp: Path) -> None:
    """A session may have MAX_CALLS_IN_FLIGHT calls under way; one more gets a retryable 429
    and is not forwarded; once a call ends, the next goes through."""
    held = HeldUpstream()
    async with held as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        path = kit_tmp / "c.sock"
        await model_proxy.serve_unix(path)
        token = model_proxy.issue(SessionId("s"))
        other = model_proxy.issue(SessionId("other"))
        open_calls = [await _send(path, token) for _ in range(MAX_CALLS_IN_FLIGHT)]
        await until(lambda: held.started == MAX_CALLS_IN_FLIGHT, "every call to be under way", 10)
        reader, writer = await _send(path, token)
        async with asyncio.timeout(10):
            refused = await reader.readuntil(b"}}")
        assert refused.startswith(b"HTTP/1.1 429 ")
        assert b"x-should-retry: true" in refused
        assert b"allows 16 model calls under way at once per session" in refused
        assert model_proxy.requests_forwarded == MAX_CALLS_IN_FLIGHT
        await _send(path, other)  # another session is not held back
        await until(lambda: held.started == MAX_CALLS_IN_FLIGHT + 1, "the other session's call", 10)
        held.release.set()
        async with asyncio.timeout(10):
            await open_calls[0][0].readuntil(b"0\r\n\r\n")
        writer.close()
        reader, writer = await _send(path, token)
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        for _, w in open_calls:
            w.close()
        writer.close()
        await model_proxy.aclose()


async def test_a_sandbox_that_stops_reading_is_hung_up_on_and_counted(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox that leaves a long reply unread (so its end, with the output count, would
    stay upstream) is hung up on after CLIENT_STALL_S, and the reply is counted."""
    monkeypatch.setattr(proxy_module, "CLIENT_STALL_S", 0.3)
    held = HeldUpstream(output=4321, pad=4 * 1024 * 1024)
    held.release.set()
    async with held as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        await model_proxy.serve_unix(kit_tmp / "s.sock")
        sid = SessionId("s")
        model_proxy.meter.begin_turn(sid, TurnId("t1"))
        _, writer = await _send(kit_tmp / "s.sock", model_proxy.issue(sid))
        await until(lambda: model_proxy.meter.spent(sid).turn.output == 4321, "the count", 20)
        writer.close()
        await model_proxy.aclose()
