"""The gateway library: a whole host opened from a frozen config, its proxies on loopback
TCP (a session's token admitted, a wrong or absent one refused) or on unix sockets in a
folder, and an orderly stop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from emulator.sandbox import LocalSandboxProvider
from kit.bundle import build_bundle, load_project
from kit.bundle.limits import DEFAULT_LIMITS
from kit.cli.settings import EXAMPLE_PROJECT
from kit.host import Release, SQLiteLogStore
from kit.host import gateway as gateway_module
from kit.host.errors import HostError
from kit.host.gateway import Gateway, GatewayConfig, open_gateway, store_urls, tcp_socket
from kit.host.s3log import S3LogStore
from kit.host.sandbox import Endpoint, SandboxSpec
from kit.host.web import WebConfig
from kit.ids import SessionId, new_session_id
from kit.storage import StoreError, open_store
from kit.storage.s3 import unique_prefix
from kit.storage.s3io import S3Bucket
from tests.conftest import BUCKET, serve_on_loopback
from tests.host.test_auth import _upgrade
from tests.loopback import echo_server

MODEL_KEY = "sk-ant-gateway-test"
API_TOKEN = "gateway-api-token-0123456789"
TIMEOUT_S = 10.0
BODY = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def model_url() -> AsyncIterator[str]:
    """The offline model on a loopback port: the gateway's upstream."""
    app = create_model_app(ScenarioSource.empty(), api_key=MODEL_KEY)
    async with serve_on_loopback(app) as url:
        yield url


def _config(model_url: str, kit_tmp: Path, **extra: object) -> GatewayConfig:
    config = GatewayConfig(
        api_token=API_TOKEN,
        upstream_key=MODEL_KEY,
        store_url=store_urls(None, kit_tmp / "transcripts"),
        upstream_url=model_url,
    )
    return replace(config, **extra)  # type: ignore[arg-type]


def _parts(kit_tmp: Path) -> tuple[LocalSandboxProvider, SQLiteLogStore, Release]:
    provider = LocalSandboxProvider(
        kit_tmp / "sandboxes", bundles=kit_tmp / "bundles", isolation="off", user=None
    )
    return provider, SQLiteLogStore(kit_tmp / "sessions"), Release(kit_tmp, "d", "lite", 60)


async def _connect(url: str, target: str, token: str | None) -> bytes:
    """CONNECT ``target`` through the egress proxy at ``url``; the reply's status line."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    auth = ""
    if token is not None:
        credential = base64.b64encode(f"kit:{token}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {credential}\r\n"
    writer.write(f"CONNECT {target} HTTP/1.1\r\n{auth}\r\n".encode())
    try:
        async with asyncio.timeout(TIMEOUT_S):
            return (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0]
    finally:
        writer.close()


async def test_proxies_on_tcp_admit_only_a_sessions_token(model_url: str, kit_tmp: Path) -> None:
    """With ``proxy_host``, both proxies listen on loopback TCP and sandboxes are told
    ``http://`` endpoints; the model proxy forwards a session token's call (401 for a wrong
    or absent one) and the egress proxy tunnels a session token's CONNECT to a listed host
    (407 for a wrong or absent one)."""
    async with echo_server() as echo:
        target = f"127.0.0.1:{echo.port}"
        config = _config(model_url, kit_tmp, proxy_host="127.0.0.1", egress_allow=(target,))
        provider, logs, release = _parts(kit_tmp)
        async with open_gateway(config, provider, logs, lambda: release) as gateway:
            env = gateway.env
            assert env.model_endpoint.startswith("http://127.0.0.1:")
            assert env.egress_endpoint is not None
            assert env.egress_endpoint.startswith("http://127.0.0.1:")
            session = SessionId("s1")
            model_token = env.issue_model_token(session, DEFAULT_LIMITS)
            assert env.issue_egress_token is not None
            egress_token = env.issue_egress_token(session)
            async with httpx.AsyncClient(base_url=env.model_endpoint, timeout=TIMEOUT_S) as http:
                ok = await http.post("/v1/messages", json=BODY, headers={"x-api-key": model_token})
                wrong = await http.post("/v1/messages", json=BODY, headers={"x-api-key": "nope"})
                absent = await http.post("/v1/messages", json=BODY)
            assert ok.status_code == 200, ok.text
            assert wrong.status_code == 401
            assert absent.status_code == 401
            egress_url = env.egress_endpoint
            assert (await _connect(egress_url, target, egress_token)).startswith(b"HTTP/1.1 200")
            assert (await _connect(egress_url, target, "wrong")).startswith(b"HTTP/1.1 407")
            assert (await _connect(egress_url, target, None)).startswith(b"HTTP/1.1 407")
            env.revoke_model_token(model_token)
            async with httpx.AsyncClient(base_url=env.model_endpoint, timeout=TIMEOUT_S) as http:
                revoked = await http.post(
                    "/v1/messages", json=BODY, headers={"x-api-key": model_token}
                )
            assert revoked.status_code == 401
        assert echo.accepted == 1


async def test_proxies_in_a_folder_are_unix_sockets_and_exit_closes_all(
    model_url: str, kit_tmp: Path
) -> None:
    """With ``proxy_dir``, the endpoints are ``unix:`` sockets in it, open to any user (the
    token authenticates); the app serves ``/healthz`` and wants the API token elsewhere;
    on exit the host's port and both sockets are closed."""
    run = kit_tmp / "run"
    run.mkdir()
    config = _config(model_url, kit_tmp, proxy_dir=run)
    provider, logs, release = _parts(kit_tmp)
    async with open_gateway(config, provider, logs, lambda: release) as gateway:
        assert gateway.env.model_endpoint == f"unix:{run / 'model.sock'}"
        assert gateway.env.egress_endpoint == f"unix:{run / 'egress.sock'}"
        assert (run / "model.sock").stat().st_mode & 0o777 == 0o666
        async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.post("/v1/sessions")).status_code == 401
            made = await http.post("/v1/sessions", headers={"authorization": f"Bearer {API_TOKEN}"})
            assert made.status_code in (200, 201), made.text
        port = gateway.sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S).close()
    for name in ("model.sock", "egress.sock"):
        probe = socket.socket(socket.AF_UNIX)
        with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
            probe.connect(str(run / name))
        probe.close()


def test_the_public_names_are_pinned() -> None:
    """kit.host.gateway exports exactly what kit dev, kit gateway and the bench use."""
    assert sorted(gateway_module.__all__) == [
        "Gateway",
        "GatewayConfig",
        "Server",
        "open_gateway",
        "serve",
        "store_urls",
        "tcp_socket",
        "url_of",
    ]


async def test_a_sandbox_a_dead_host_left_is_stopped_at_start(
    model_url: str, kit_tmp: Path
) -> None:
    """A sandbox the provider still runs when a gateway opens (a host that died left it) is
    stopped, reason ``orphan``, before recovery can start another for its session; with
    ``reap_at_start`` off (gateways sharing one provider) it is left alone. (Broken on
    purpose once: without the reap it kept running.)"""
    provider, logs, _ = _parts(kit_tmp)
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")
    release = Release(bundle.path, bundle.digest, "standard-4", 60)
    spec = SandboxSpec(
        new_session_id(),
        "standard-4",
        bundle.digest,
        "memory://",
        Endpoint("http://localhost", "m"),
        "rt",
        60,
    )
    left = await provider.start(spec)
    async with open_gateway(
        _config(model_url, kit_tmp, reap_at_start=False), provider, logs, lambda: release
    ):
        assert await provider.find(spec.session_id) is left
    provider, logs, _ = _parts(kit_tmp)
    left = await provider.start(spec)
    async with open_gateway(_config(model_url, kit_tmp), provider, logs, lambda: release):
        assert await provider.find(spec.session_id) is None
        assert (await left.wait()).reason == "orphan"


async def test_a_served_store_keeps_transcripts_on_the_host(model_url: str, kit_tmp: Path) -> None:
    """With ``served_store``, sandboxes are told a ``kit+http://`` store on the proxy host:
    a sandbox's store token writes its transcript into the host's own store; a revoked one
    is refused, and so is its model token (which the CLI and its tools hold). (Sandboxes
    then hold no storage keys.)"""
    backing = f"sqlite:///{kit_tmp}/host-store.db"
    config = _config(model_url, kit_tmp, proxy_host="127.0.0.1", served_store=backing)
    provider, logs, release = _parts(kit_tmp)
    key: Any = {"project_key": "kit", "session_id": "s1"}
    entry: Any = {"type": "user", "uuid": "u1", "message": {"content": "hi"}}
    async with open_gateway(config, provider, logs, lambda: release) as gateway:
        url = gateway.env.store_url("s1")
        assert url.startswith("kit+http://127.0.0.1:")
        assert gateway.env.issue_store_token is not None
        assert gateway.env.revoke_store_token is not None
        token = gateway.env.issue_store_token(SessionId("s1"))
        assert token.startswith("kit-store-")
        model_token = gateway.env.issue_model_token(SessionId("s1"), DEFAULT_LIMITS)
        store = open_store(url, token=token)
        with_model_token = open_store(url, token=model_token)
        try:
            await store.append(key, [entry])
            assert await store.load(key) == [entry]
            with pytest.raises(StoreError, match="401"):
                await with_model_token.load(key)
            gateway.env.revoke_store_token(token)
            with pytest.raises(StoreError, match="401"):
                await store.load(key)
        finally:
            await store.aclose()
            await with_model_token.aclose()
    assert await open_store(backing).load(key) == [entry]


async def _upgrade_head(url: str, session_id: str, extra: str = "") -> bytes:
    """Send a session socket's upgrade request to ``url``; the head of the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /v1/sessions/{session_id}/ws HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n".encode()
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def test_a_socket_for_a_session_another_gateway_holds_is_replayed_there(
    model_url: str, kit_tmp: Path, s3_endpoint: str
) -> None:
    """Two gateways on one leased S3 log store, behind Fly's proxy: a session socket that
    reaches the one not holding the session's lease gets 409 with ``fly-replay:
    instance=<owner>`` (not an upgrade); the owner upgrades it. (Broken on purpose once:
    with the check off, the other gateway upgraded it.)"""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    prefix = unique_prefix()
    config = _config(model_url, kit_tmp, replay_to_owner=True, lease_ttl_s=30.0)
    provider_a, _, release = _parts(kit_tmp / "a")
    provider_b, _, _ = _parts(kit_tmp / "b")
    logs_a = S3LogStore(S3Bucket(client, BUCKET, prefix), owner="machine-a", ttl_s=30)
    logs_b = S3LogStore(S3Bucket(client, BUCKET, prefix), owner="machine-b", ttl_s=30)
    async with (
        open_gateway(config, provider_a, logs_a, lambda: release) as a,
        open_gateway(config, provider_b, logs_b, lambda: release) as b,
    ):
        async with httpx.AsyncClient() as http:
            made = await http.post(
                f"{a.url}/v1/sessions", headers={"Authorization": f"Bearer {API_TOKEN}"}
            )
        session_id = made.json()["session_id"]
        await a.host.get(SessionId(session_id))  # a loaded session holds its lease
        head = await _upgrade_head(b.url, session_id)
        assert head.startswith(b"HTTP/1.1 409"), head
        assert b"fly-replay: instance=machine-a;fallback=prefer_self\r\n" in head.lower()
        assert (await _upgrade_head(a.url, session_id)).startswith(b"HTTP/1.1 101")
        # A replay that failed (the owner gone, its lease not yet run out) falls back here:
        # let in, the socket's hello then says where the session is.
        fell_back = await _upgrade_head(b.url, session_id, "fly-replay-failed: reason=timeout\r\n")
        assert fell_back.startswith(b"HTTP/1.1 101")


def _gateway_at(
    host: str, config: GatewayConfig, kit_tmp: Path
) -> contextlib.AbstractAsyncContextManager[Gateway]:
    """A gateway of local sandboxes listening on ``host`` (a free port)."""
    provider, logs, release = _parts(kit_tmp)
    return open_gateway(config, provider, logs, lambda: release, sock=tcp_socket(host, 0))


FRONT_PORT = 41234
"""The port of the loopback proxy a rehearsal's gateway is reached through (only its
headers matter here: the proxy passes Host and Origin on as the browser sent them)."""


async def test_a_gateway_behind_a_loopback_proxy_serves_its_page_there_only(
    model_url: str, kit_tmp: Path
) -> None:
    """A gateway on its own loopback address (a ``kit dev --target fly`` machine) with
    ``proxied_at`` the proxy's loopback origin: a same-origin request of a page loaded
    from the proxy gets a session without the API token, and its socket opens; a page of
    another site (CSRF), a name rebound to 127.0.0.1, another local port, or a request
    without Origin gets 403 and no session. Without ``proxied_at`` the proxy's page gets
    none either."""
    front = f"127.0.0.1:{FRONT_PORT}"
    cases = [
        ({"origin": f"http://{front}", "host": front, "sec-fetch-site": "same-origin"}, 201),
        ({"origin": f"http://localhost:{FRONT_PORT}", "host": f"localhost:{FRONT_PORT}"}, 201),
        ({"origin": "https://evil.example", "host": front}, 403),
        (
            {"origin": f"http://evil.example:{FRONT_PORT}", "host": f"evil.example:{FRONT_PORT}"},
            403,
        ),
        ({"origin": "http://127.0.0.1:1", "host": front}, 403),
        ({"origin": f"http://{front}", "host": front, "sec-fetch-site": "cross-site"}, 403),
        ({"host": front}, 403),
    ]
    for proxied_at in (f"http://{front}", None):
        config = _config(
            model_url, kit_tmp, web=WebConfig(local_sessions=True), proxied_at=proxied_at
        )
        async with (
            _gateway_at("127.0.0.2", config, kit_tmp) as gateway,
            httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http,
        ):
            for headers, status in cases:
                before = len(await gateway.host.session_ids())
                answer = await http.post("/web/session", headers=headers)
                want = status if proxied_at else 403
                assert answer.status_code == want, (proxied_at, headers, answer.text)
                made = len(await gateway.host.session_ids()) - before
                assert made == (1 if want == 201 else 0)
                if want == 201:
                    body = answer.json()
                    assert body["ws_url"].startswith(f"ws://{headers['host']}/v1/sessions/")
                    path = f"/v1/sessions/{body['session_id']}/ws"
                    page = {"Host": headers["host"], "Origin": headers["origin"]}
                    assert (await _upgrade(gateway.url, path, page))[0] == 101
                else:
                    assert answer.json()["error"] == "forbidden_origin"


async def test_a_proxied_gateway_must_be_on_loopback(model_url: str, kit_tmp: Path) -> None:
    """``proxied_at`` is refused, naming the fix, for a gateway not on a loopback address
    and for an origin that is not a loopback one."""
    for host, proxied_at, needle in [
        ("0.0.0.0", "http://127.0.0.1:8080", "listen on 127.0.0.1"),
        ("127.0.0.1", "https://kit.fly.dev", "not a loopback origin"),
        ("127.0.0.1", "http://127.0.0.1", "not a loopback origin"),
    ]:
        config = _config(model_url, kit_tmp, proxied_at=proxied_at)
        with pytest.raises(HostError, match=needle):
            async with _gateway_at(host, config, kit_tmp):
                raise AssertionError("the gateway started")


async def test_a_session_reached_through_a_tls_proxy_gets_a_wss_url(
    model_url: str, kit_tmp: Path
) -> None:
    """Behind a proxy that ends TLS (Fly's: not a loopback peer, so uvicorn ignores its
    forwarded headers), a new session's ``ws_url`` is ``wss://`` when ``X-Forwarded-Proto``
    says https (an https page could not open a ``ws://`` socket), ``ws://`` otherwise."""
    config = _config(model_url, kit_tmp)
    peer = httpx.AsyncHTTPTransport(local_address="127.0.0.3")  # not uvicorn's trusted peer
    auth = {"authorization": f"Bearer {API_TOKEN}"}
    async with (
        _gateway_at("127.0.0.2", config, kit_tmp) as gateway,
        httpx.AsyncClient(base_url=gateway.url, transport=peer, timeout=TIMEOUT_S) as http,
    ):
        for proto, scheme in (
            ("https", "wss"),
            ("https, http", "wss"),
            ("http", "ws"),
            (None, "ws"),
        ):
            headers = auth if proto is None else {**auth, "x-forwarded-proto": proto}
            answer = await http.post("/v1/sessions", headers=headers)
            assert answer.status_code == 201, answer.text
            assert answer.json()["ws_url"].startswith(f"{scheme}://"), (proto, answer.text)
