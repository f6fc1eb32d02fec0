"""The model proxy against hostile sandboxes: slow or silent connections, floods of
connections, bodies sent before a token, ambiguous heads, pipelined refusals, and replies
hung up on for longer than the proxy drains them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kit.bundle.limits import Tokens
from kit.host import proxy as proxy_module
from kit.host.proxy import ModelProxy
from kit.ids import SessionId, TurnId
from tests.agents import until
from tests.host.test_proxy import BODY, REAL_KEY, HeldUpstream, _send

TIMEOUT_S = 10.0
PAYLOAD = json.dumps(BODY).encode()


@pytest.fixture
async def held(kit_tmp: Path) -> AsyncIterator[tuple[ModelProxy, Path, HeldUpstream]]:
    """A proxy on a Unix socket in front of a :class:`HeldUpstream` (released)."""
    upstream = HeldUpstream(output=5)
    upstream.release.set()
    async with upstream as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        path = kit_tmp / "m.sock"
        await model_proxy.serve_unix(path)
        yield model_proxy, path, upstream
        await model_proxy.aclose()


def _request(token: str, *extra: bytes, body: bytes = PAYLOAD) -> bytes:
    head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: %s\r\ncontent-length: %d\r\n" % (
        token.encode(),
        len(body),
    )
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


async def _exchange(path: Path, data: bytes, end: bytes | None = None) -> bytes:
    """What the proxy sends back on a connection that sent ``data``: up to ``end``, or
    (None) to its close; b"" when the proxy reset the connection."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT_S):
            return await (reader.read() if end is None else reader.readuntil(end))
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_a_silent_head_gets_408_and_is_closed(
    held: tuple[ModelProxy, Path, HeldUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that sends part of a head and then nothing is answered 408 and closed."""
    monkeypatch.setattr(proxy_module, "HEAD_TIMEOUT_S", 0.2)
    _, path, _ = held
    received = await _exchange(path, b"POST /v1/messages HTTP/1.1\r\n")
    assert received.startswith(b"HTTP/1.1 408 ")


async def test_a_slow_body_gets_408_and_is_closed(
    held: tuple[ModelProxy, Path, HeldUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that does not arrive in BODY_TIMEOUT_S is answered 408, and nothing is forwarded."""
    monkeypatch.setattr(proxy_module, "BODY_TIMEOUT_S", 0.2)
    model_proxy, path, _ = held
    token = model_proxy.issue(SessionId("s"))
    received = await _exchange(path, _request(token)[:-10])
    assert received.startswith(b"HTTP/1.1 408 ")
    assert model_proxy.requests_forwarded == 0


async def test_no_body_is_read_before_the_token_is_checked(
    held: tuple[ModelProxy, Path, HeldUpstream],
) -> None:
    """A head without a live token is answered 401 at once, its promised 32 MiB unread."""
    _, path, _ = held
    head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 33554432\r\n\r\n"
    received = await _exchange(path, head)
    assert received.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in received


async def test_connections_without_a_token_are_capped(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_UNPROVEN_CONNECTIONS open without a token, a new connection is closed at once
    (unanswered); once one closes, a new one is served again."""
    monkeypatch.setattr(proxy_module, "MAX_UNPROVEN_CONNECTIONS", 3)
    upstream = HeldUpstream(output=5)
    upstream.release.set()
    async with upstream as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        path = kit_tmp / "u.sock"
        await model_proxy.serve_unix(path)
        token = model_proxy.issue(SessionId("s"))
        idle = [await asyncio.open_unix_connection(str(path)) for _ in range(3)]
        await until(lambda: model_proxy._gate.unproven == 3, "three idle connections", TIMEOUT_S)
        assert await _exchange(path, _request(token)) == b""
        idle.pop()[1].close()
        await until(lambda: model_proxy._gate.unproven == 2, "a connection to close", TIMEOUT_S)
        reader, writer = await _send(path, token)
        async with asyncio.timeout(TIMEOUT_S):
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        for _, w in idle:
            w.close()
        await model_proxy.aclose()


async def test_connections_per_token_are_capped(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_CONNECTIONS_PER_TOKEN connections that showed one token, the next request on
    a new connection gets a retryable 429 and is closed; other tokens are not held back."""
    monkeypatch.setattr(proxy_module, "MAX_CONNECTIONS_PER_TOKEN", 2)
    upstream = HeldUpstream(output=5)
    upstream.release.set()
    async with upstream as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        path = kit_tmp / "t.sock"
        await model_proxy.serve_unix(path)
        token = model_proxy.issue(SessionId("s"))
        open_ = [await _send(path, token) for _ in range(2)]
        for reader, _ in open_:
            async with asyncio.timeout(TIMEOUT_S):
                await reader.readuntil(b"0\r\n\r\n")
        refused = await _exchange(path, _request(token))
        assert refused.startswith(b"HTTP/1.1 429 ")
        assert b"allows 2 open connections per session" in refused
        assert b"x-should-retry: true" in refused
        other = await _exchange(path, _request(model_proxy.issue(SessionId("o"))), b"0\r\n\r\n")
        assert other.startswith(b"HTTP/1.1 200 ")
        for _, w in open_:
            w.close()
        await model_proxy.aclose()


@pytest.mark.parametrize(
    "extra",
    [
        [b"Transfer-Encoding: Chunked"],
        [b"transfer-encoding: chunked"],
        [b"content-length: 3"],
        [b"x-api-key: kit-model-other"],
        [b"authorization: Bearer kit-model-other"],
        [b"x-pad: a", b" folded"],
        [b"x-pad : a"],
        [b"x-pad\t: a"],
    ],
    ids=["te-case", "te", "two-lengths", "two-keys", "key-and-auth-twice", "fold", "space", "tab"],
)
async def test_ambiguous_heads_are_400_and_closed(
    held: tuple[ModelProxy, Path, HeldUpstream], extra: list[bytes]
) -> None:
    """Heads the upstream might read otherwise are refused with 400 and never forwarded."""
    model_proxy, path, upstream = held
    token = model_proxy.issue(SessionId("s"))
    data = _request(token, *extra)
    if extra[0].startswith(b"authorization"):
        data = _request(token, extra[0], extra[0])
    received = await _exchange(path, data)
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in received
    assert model_proxy.requests_forwarded == 0
    assert upstream.started == 0


@pytest.mark.parametrize("length", [b"abc", b"-1", b"+5", b"0x10"])
async def test_a_malformed_content_length_is_400(
    held: tuple[ModelProxy, Path, HeldUpstream], length: bytes
) -> None:
    """A Content-Length that is not digits is a 400, not an error inside the proxy."""
    model_proxy, path, _ = held
    token = model_proxy.issue(SessionId("s"))
    head = b"POST /v1/messages HTTP/1.1\r\nx-api-key: %s\r\ncontent-length: %s\r\n\r\n" % (
        token.encode(),
        length,
    )
    received = await _exchange(path, head)
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Length" in received


async def test_the_bearer_scheme_is_read_in_any_case(
    held: tuple[ModelProxy, Path, HeldUpstream],
) -> None:
    """``Authorization: bearer TOKEN`` is as good as ``Bearer``."""
    model_proxy, path, _ = held
    token = model_proxy.issue(SessionId("s"))
    head = b"POST /v1/messages HTTP/1.1\r\nauthorization: bEaReR %s\r\ncontent-length: %d\r\n" % (
        token.encode(),
        len(PAYLOAD),
    )
    received = await _exchange(path, head + b"\r\n" + PAYLOAD, b"0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 ")


async def test_a_pipelined_refusal_comes_after_the_reply_before_it(kit_tmp: Path) -> None:
    """A request sent while a reply streams is answered only after that reply has ended, so
    the proxy's own refusal cannot overtake it."""
    upstream = HeldUpstream(output=5)
    async with upstream as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        path = kit_tmp / "p.sock"
        await model_proxy.serve_unix(path)
        reader, writer = await _send(path, model_proxy.issue(SessionId("s")))
        async with asyncio.timeout(TIMEOUT_S):
            first = await reader.readuntil(b"message_start")
        writer.write(_request("kit-model-unknown"))
        await writer.drain()
        upstream.release.set()
        async with asyncio.timeout(TIMEOUT_S):
            rest = first + await reader.read()
        assert rest.startswith(b"HTTP/1.1 200 ")
        assert rest.index(b"0\r\n\r\n") < rest.index(b"HTTP/1.1 401 ")
        writer.close()
        await model_proxy.aclose()


async def test_a_reply_given_up_on_is_charged_its_max_tokens(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply hung up on that still streams after DRAIN_LIMIT_S is charged the request's
    max_tokens as output (its real count would only have come at its end)."""
    monkeypatch.setattr(proxy_module, "DRAIN_LIMIT_S", 0.2)
    upstream = HeldUpstream(output=5000)
    async with upstream as url:
        model_proxy = ModelProxy(url, REAL_KEY)
        path = kit_tmp / "g.sock"
        await model_proxy.serve_unix(path)
        sid = SessionId("s")
        model_proxy.meter.begin_turn(sid, TurnId("t1"))
        reader, writer = await _send(path, model_proxy.issue(sid))
        async with asyncio.timeout(TIMEOUT_S):
            await reader.readuntil(b"message_start")
        writer.close()
        await until(lambda: model_proxy.draining == 1, "the proxy to drain the reply", TIMEOUT_S)
        await until(lambda: model_proxy.draining == 0, "the proxy to give up", TIMEOUT_S)
        assert model_proxy.meter.spent(sid).turn == Tokens(input=7, output=10)  # BODY["max_tokens"]
        upstream.release.set()
        await model_proxy.aclose()
