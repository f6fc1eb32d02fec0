"""The egress proxy against real loopback servers: tunnels, plain-HTTP forwarding, the
token, the allowlist and its grammar, oversize heads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.sandbox import LocalSandbox
from kit.bundle.allowlist import allows, parse_rule
from kit.bundle.errors import EgressRuleError
from kit.cli.stack import run_stack
from kit.host import egress as egress_module
from kit.host.egress import MAX_HEAD_BYTES, EgressProxy
from kit.ids import SessionId
from kit.protocol.frames import Event
from tests.agents import open_session, until, write_agent
from tests.conftest import stack_settings
from tests.loopback import HTTP_BODY, Upstream, echo_server, http_server

TIMEOUT_S = 10.0


@dataclass
class Rig:
    """An egress proxy on a Unix socket admitting the echo and HTTP servers' ports only."""

    proxy: EgressProxy
    socket: Path
    echo: Upstream
    http: Upstream
    unlisted: Upstream
    """A live server whose port is not on the allowlist."""
    token: str


@pytest.fixture
async def rig(kit_tmp: Path) -> AsyncIterator[Rig]:
    """The proxy, its upstreams and a live token."""
    async with echo_server() as echo, http_server() as http, echo_server() as unlisted:
        proxy = EgressProxy([f"127.0.0.1:{echo.port}", f"127.0.0.1:{http.port}", "*.example.org"])
        path = kit_tmp / "egress.sock"
        await proxy.serve_unix(path)
        try:
            yield Rig(proxy, path, echo, http, unlisted, proxy.issue(SessionId("s1")))
        finally:
            await proxy.aclose()


def auth(token: str, user: str = "kit") -> bytes:
    """A ``Proxy-Authorization`` header line."""
    return b"Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{token}".encode()) + b"\r\n"


async def send(rig: Rig, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to the proxy and write ``head``."""
    reader, writer = await asyncio.open_unix_connection(str(rig.socket))
    writer.write(head)
    await writer.drain()
    return reader, writer


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and everything after the head up to the end of the stream."""
    async with asyncio.timeout(TIMEOUT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


async def test_connect_tunnels_bytes_both_ways(rig: Rig) -> None:
    """CONNECT to a listed port opens a tunnel: a MiB goes through and comes back intact,
    and the client's half-close reaches the server, whose close ends the tunnel."""
    reader, writer = await send(
        rig, f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n".encode() + auth(rig.token) + b"\r\n"
    )
    async with asyncio.timeout(TIMEOUT_S):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        payload = bytes(range(256)) * 4096
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        echoed = await reader.read()  # to the end: the server closed after echoing all
    assert echoed == payload
    assert rig.echo.accepted == 1
    assert rig.proxy.forwarded == 1
    writer.close()


async def test_unlisted_port_is_403_naming_kit_toml(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A live port that is not on the allowlist gets 403 saying where to add it, is never
    contacted, and the refusal is logged in one line without the token."""
    caplog.set_level(logging.WARNING, logger="kit.host")
    target = f"127.0.0.1:{rig.unlisted.port}"
    reader, writer = await send(
        rig, f"CONNECT {target} HTTP/1.1\r\n".encode() + auth(rig.token) + b"\r\n"
    )
    status, _, body = await response(reader)
    assert status == 403
    assert b"[sandbox] egress in kit.toml" in body
    assert target.encode() in body
    assert rig.unlisted.accepted == 0
    assert rig.proxy.forwarded == 0
    refusals = [
        r.getMessage() for r in caplog.records if "egress proxy answered 403" in r.getMessage()
    ]
    assert len(refusals) == 1
    assert target in refusals[0]
    assert rig.token not in caplog.text
    writer.close()


@pytest.mark.parametrize(
    "credential",
    [
        b"",
        b"Proxy-Authorization: Basic " + base64.b64encode(b"kit:kit-egress-made-up") + b"\r\n",
        b"WRONG_USER",
        b"Proxy-Authorization: Bearer TOKEN\r\n",
        b"Proxy-Authorization: Basic not*base64\r\n",
        b"REVOKED",
    ],
    ids=["none", "unknown", "wrong-user", "bearer", "garbage", "revoked"],
)
async def test_missing_or_dead_token_is_407(
    rig: Rig, credential: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a live token for user 'kit' the answer is 407 with Proxy-Authenticate, and
    nothing is contacted."""
    caplog.set_level(logging.WARNING, logger="kit.host")
    if credential == b"WRONG_USER":
        credential = auth(rig.token, user="root")
    elif credential == b"REVOKED":
        rig.proxy.revoke(rig.token)
        credential = auth(rig.token)
    else:
        credential = credential.replace(b"TOKEN", rig.token.encode())
    reader, writer = await send(
        rig, f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n".encode() + credential + b"\r\n"
    )
    status, headers, body = await response(reader)
    assert status == 407
    assert headers["proxy-authenticate"].startswith("Basic")
    assert b"token" in body
    assert rig.echo.accepted == 0
    assert rig.proxy.forwarded == 0
    assert "egress proxy answered 407" in caplog.text
    assert rig.token not in caplog.text
    writer.close()


async def test_plain_http_is_forwarded_in_origin_form(rig: Rig) -> None:
    """An absolute-URI request reaches a listed server in origin form with its Host set,
    its body intact and no proxy credentials; its response comes back as sent."""
    target = f"127.0.0.1:{rig.http.port}"
    reader, writer = await send(
        rig,
        f"POST http://{target}/path/x?q=1 HTTP/1.1\r\nHost: wrong.example\r\n".encode()
        + auth(rig.token)
        + b"Proxy-Connection: keep-alive\r\nAccept: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    )
    status, headers, body = await response(reader)
    assert (status, body) == (200, HTTP_BODY)
    assert headers["content-type"] == "text/plain"
    (head,) = rig.http.heads
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /path/x?q=1 HTTP/1.1"
    assert f"Host: {target}".encode() in lines
    assert b"accept: text/plain" in lines
    assert b"Connection: close" in lines
    assert b"proxy-" not in head.lower()
    assert rig.token.encode() not in head
    assert rig.http.bodies == [b"hello"]
    writer.close()


@pytest.mark.parametrize(
    ("head", "status", "says"),
    [
        (b"GET /path HTTP/1.1\r\n", 400, b"absolute"),
        (b"GET https://127.0.0.1:{http}/ HTTP/1.1\r\n", 400, b"CONNECT"),
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n", 400, b"host:port"),
        (b"CONNECT [::1]:443 HTTP/1.1\r\n", 400, b"IPv6"),
        (b"CONNECT 127.1:{echo} HTTP/1.1\r\n", 400, b"host:port"),
        (
            b"POST http://127.0.0.1:{http}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
            411,
            b"Content-Length",
        ),
        (b"GET http://pypi.org.evil.test/ HTTP/1.1\r\n", 403, b"kit.toml"),
        (b"GET http://127.0.0.1:{http}/x\nHost: evil.test HTTP/1.1\r\n", 400, b"bare CR or LF"),
        (
            b"POST http://127.0.0.1:{http}/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 0\r\n",
            400,
            b"twice",
        ),
    ],
    ids=[
        "origin-form",
        "https-uri",
        "no-port",
        "ipv6",
        "numeric-short",
        "chunked",
        "suffix",
        "bare-lf",
        "two-lengths",
    ],
)
async def test_requests_that_cannot_pass(rig: Rig, head: bytes, status: int, says: bytes) -> None:
    """Malformed or unforwardable requests are refused with a status and a message that says
    what to do, and nothing is contacted."""
    head = head.replace(b"{http}", str(rig.http.port).encode())
    head = head.replace(b"{echo}", str(rig.echo.port).encode())
    reader, writer = await send(rig, head + auth(rig.token) + b"\r\n")
    got, _, body = await response(reader)
    assert got == status
    assert says in body
    assert rig.proxy.forwarded == 0
    assert rig.http.accepted == rig.echo.accepted == 0
    writer.close()


async def test_oversize_head_is_431_and_closed(rig: Rig) -> None:
    """A head over the limit gets 431 and the connection is closed without reading on."""
    padding = b"X-Pad: " + b"a" * MAX_HEAD_BYTES + b"\r\n"
    reader, writer = await send(
        rig, f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n".encode() + padding
    )
    status, _, body = await response(reader)  # reads to the end: the proxy closed
    assert status == 431
    assert str(MAX_HEAD_BYTES).encode() in body
    assert rig.echo.accepted == 0
    writer.close()


async def test_revoking_a_token_ends_its_tunnels(rig: Rig) -> None:
    """An open tunnel closes when its token is revoked (its sandbox is gone)."""
    reader, writer = await send(
        rig, f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n".encode() + auth(rig.token) + b"\r\n"
    )
    async with asyncio.timeout(TIMEOUT_S):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        rig.proxy.revoke(rig.token)
        assert await reader.read() == b""
    writer.close()


async def test_unreachable_target_is_502(kit_tmp: Path) -> None:
    """A listed target with nothing listening gets 502 naming it."""
    async with echo_server() as gone:
        port = gone.port
    proxy = EgressProxy([f"127.0.0.1:{port}"])
    await proxy.serve_unix(kit_tmp / "e.sock")
    try:
        reader, writer = await asyncio.open_unix_connection(str(kit_tmp / "e.sock"))
        token = proxy.issue(SessionId("s"))
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode() + auth(token) + b"\r\n")
        status, _, body = await response(reader)
        assert status == 502
        assert f"127.0.0.1:{port}".encode() in body
        writer.close()
    finally:
        await proxy.aclose()


async def test_a_listed_name_resolving_to_loopback_is_refused(kit_tmp: Path) -> None:
    """DNS rebinding: `localhost:PORT` on the allowlist resolves to 127.0.0.1, a host-local
    address; the proxy refuses (403 naming the address to list instead) and the live
    server behind it is never contacted. The same port listed as an address is reached."""
    async with echo_server() as local:
        for listed, status in ((f"localhost:{local.port}", 403), (f"127.0.0.1:{local.port}", 200)):
            proxy = EgressProxy([listed])
            await proxy.serve_unix(kit_tmp / "r.sock")
            try:
                reader, writer = await asyncio.open_unix_connection(str(kit_tmp / "r.sock"))
                token = proxy.issue(SessionId("s"))
                target = listed.encode()
                writer.write(b"CONNECT " + target + b" HTTP/1.1\r\n" + auth(token) + b"\r\n")
                async with asyncio.timeout(TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                assert int(head.split(b" ")[1]) == status, head
                if status == 403:
                    body = await reader.read()
                    assert f"127.0.0.1:{local.port}".encode() in body
                writer.close()
            finally:
                await proxy.aclose()
            if status == 403:
                assert local.accepted == 0
        assert local.accepted == 1


# -- the allowlist's grammar -------------------------------------------------------------

RULES = [
    parse_rule(e) for e in ("api.github.com", "*.pypi.org", "127.0.0.1:8080", "Git.Example:22")
]


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("api.github.com", 443, True),
        ("api.github.com", 80, True),
        ("API.GitHub.com.", 443, True),
        ("api.github.com", 8443, False),
        ("github.com", 443, False),
        ("x.api.github.com", 443, False),
        ("files.pypi.org", 443, True),
        ("a.b.pypi.org", 80, True),
        ("pypi.org", 443, False),
        ("evilpypi.org", 443, False),
        ("pypi.org.evil.test", 443, False),
        ("files.pypi.org", 22, False),
        ("127.0.0.1", 8080, True),
        ("127.0.0.1", 443, False),
        ("127.1", 8080, False),
        ("2130706433", 8080, False),
        ("0x7f.0.0.1", 8080, False),
        ("git.example", 22, True),
        ("git.example", 443, False),
        ("*.pypi.org", 443, False),
        ("", 443, False),
    ],
)
def test_allowlist_matching(host: str, port: int, allowed: bool) -> None:
    """Exact hosts, *. wildcards (subdomains only) and IPv4 entries; default ports 443/80."""
    assert allows(RULES, host, port) is allowed


_LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z")
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@given(domain=_NAME, host=_NAME, port=st.sampled_from([80, 443]))
def test_a_host_outside_a_wildcard_never_matches(domain: str, host: str, port: int) -> None:
    """A random host name matches *.domain only when it ends in '.domain'."""
    if "." not in domain or domain.rsplit(".", 1)[1].isdigit():
        return  # not a valid wildcard entry
    rule = parse_rule("*." + domain)
    assert allows([rule], host, port) == host.endswith("." + domain)


@given(listed=st.lists(_NAME, min_size=1, max_size=4), host=_NAME)
def test_a_host_not_listed_never_matches(listed: list[str], host: str) -> None:
    """A random host name that is no listed name (nor under a listed wildcard) is refused."""
    rules = []
    for name in listed:
        with contextlib.suppress(
            EgressRuleError
        ):  # numeric-looking names ("0x", "1.2") are refused
            rules.append(parse_rule(name))
    if host in listed:
        return
    assert not allows(rules, host, 443)


class _Ended:
    """A session subscriber that notes when its sandbox has ended."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    def deliver(self, event: Event) -> None:
        if event.kind == "sandbox" and event.data.get("state") in ("died", "stopped"):
            self.ended.set()

    def moved(self, message: str) -> None:
        raise AssertionError(message)


async def test_each_sandbox_gets_a_token_that_dies_with_it(kit_tmp: Path) -> None:
    """`kit dev` serves the bundle's allowlist on egress.sock and starts each sandbox with
    that socket and a token of its own, which stops working once the sandbox has ended."""
    project = write_agent(kit_tmp / "agent", extra_toml='egress = ["api.github.com"]\n')
    async with run_stack(stack_settings(kit_tmp / "state", project)) as stack:
        assert stack.egress is not None
        assert allows(stack.egress.rules, "api.github.com", 443)
        client, session = await open_session(stack)
        events = [e async for e in client.turn("hello")]
        assert events[-1].kind == "result"
        sandbox = session.sandbox
        assert isinstance(sandbox, LocalSandbox)
        access = sandbox.spec.egress
        assert access is not None
        assert access.url == f"unix:{stack.provider.run_root / 'egress.sock'}"
        assert stack.egress.session_for(access.token.encode()) == session.id
        ended = _Ended()
        async with session.quiet():
            session.subscribe(ended)
        await sandbox.kill()
        async with asyncio.timeout(TIMEOUT_S):
            await ended.ended.wait()
        assert stack.egress.session_for(access.token.encode()) is None
        await client.close()


async def test_connections_without_a_token_are_capped(
    kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_UNPROVEN_CONNECTIONS open without a token, a new connection is closed at once,
    unanswered; once one closes, a new one is served again."""
    monkeypatch.setattr(egress_module, "MAX_UNPROVEN_CONNECTIONS", 2)
    async with echo_server() as echo:
        proxy = EgressProxy([f"127.0.0.1:{echo.port}"])
        path = kit_tmp / "cap.sock"
        await proxy.serve_unix(path)
        token = proxy.issue(SessionId("s1"))
        connect = f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n".encode() + auth(token) + b"\r\n"
        idle = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
        await until(lambda: proxy._gate.unproven == 2, "two idle connections", TIMEOUT_S)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(connect)
        async with asyncio.timeout(TIMEOUT_S):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()
        idle.pop()[1].close()
        await until(lambda: proxy._gate.unproven == 1, "a connection to close", TIMEOUT_S)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(connect)
        async with asyncio.timeout(TIMEOUT_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        for _, w in idle:
            w.close()
        await proxy.aclose()


async def test_connections_per_token_are_capped(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token with MAX_CONNECTIONS_PER_TOKEN connections open gets 429 for one more."""
    monkeypatch.setattr(rig.proxy._gate, "per_token_cap", 2)
    connect = f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n".encode() + auth(rig.token)
    tunnels = [await send(rig, connect + b"\r\n") for _ in range(2)]
    for reader, _ in tunnels:
        async with asyncio.timeout(TIMEOUT_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    reader, writer = await send(rig, connect + b"\r\n")
    status, _, body = await response(reader)
    assert status == 429
    assert b"open connections per sandbox" in body
    writer.close()
    for _, w in tunnels:
        w.close()


async def test_a_tab_in_a_header_name_is_400(rig: Rig) -> None:
    """A header name with a tab before its colon is refused (the target might read it)."""
    head = f"GET http://127.0.0.1:{rig.http.port}/ HTTP/1.1\r\nContent-Length\t: 5\r\n".encode()
    reader, writer = await send(rig, head + auth(rig.token) + b"\r\n")
    status, _, _ = await response(reader)
    assert status == 400
    assert rig.proxy.forwarded == 0
    writer.close()
