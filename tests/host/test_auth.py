"""Every route of a running ``kit dev`` host wants its token; session sockets open only from
allowed browser origins (docs/security.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from kit.cli.settings import SettingsError, dev_settings
from kit.cli.stack import Stack, run_stack
from kit.client import create_session
from kit.host.app import PUBLIC_PATHS
from kit.host.auth import OriginPolicy
from kit.host.web import MAIL_PATH, SESSION_PATH, WebConfig, public_paths
from kit.protocol import errors as e
from tests.agents import open_session, turn_events
from tests.conftest import stack_settings
from tests.host.wsdriver import Driver

ALLOWED = "https://app.example.com"


@pytest.fixture
async def guarded(kit_tmp: Path) -> AsyncIterator[Stack]:
    """The example agent's stack, with one extra allowed origin."""
    settings = stack_settings(kit_tmp / "state", allowed_origins=(ALLOWED,))
    async with run_stack(settings) as running:
        yield running


def _walk(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, BaseRoute]]:
    """Every endpoint route under ``routes``, mounts opened, with its full path pattern."""
    found: list[tuple[str, BaseRoute]] = []
    for route in routes:
        if isinstance(route, Mount):
            found += _walk(route.routes, prefix + route.path)
        elif isinstance(route, Route | WebSocketRoute):
            found.append((prefix + route.path, route))
        else:
            raise AssertionError(f"a route the walk does not know: {route!r}")
    return found


def _fill(pattern: str, values: dict[str, str]) -> str:
    """A concrete path for ``pattern``: each ``{name}`` from ``values`` (a new parameter name
    fails here, so whoever adds a route says what to put in it)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"no test value for path parameter {name!r} in {pattern}"
        return values[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, pattern)


async def _surface(stack: Stack, http: httpx.AsyncClient) -> list[object]:
    """What a refused route could have changed: every session's summary (events, turns,
    sandbox state), the running sandboxes (ids and pids), the Durable Objects in memory,
    each session's files."""
    good = {"authorization": f"Bearer {stack.api_token}"}
    sessions = (await http.get("/_kit/sessions", headers=good)).json()
    sandboxes = (await http.get("/_kit/sandboxes", headers=good)).json()
    objects = (await http.get("/_emulator/do/SessionLog/objects", headers=good)).json()
    files = [
        (await http.get(f"/v1/sessions/{s['session_id']}/files", headers=good)).json()
        for s in sessions["sessions"]
    ]
    return [sessions, sandboxes, objects, files]


async def test_every_route_wants_the_token(guarded: Stack) -> None:
    """Walking every mounted route: without the API token, or with a wrong one, each HTTP
    route answers 401 and changes nothing (a session whose sandbox runs keeps it, its
    object stays in memory, no session appears); with it, none does; only /healthz (no more
    than ``{"ok": true}``) and the chat page's static files and config are public, and the
    page's ``POST /web/session`` and ``POST /web/mail`` without a page's Origin are 403 and
    make nothing; a session
    socket with a wrong token is closed 4401; an unknown path is 401 too (routes are not
    discoverable), a file under /web/ the page does not list included."""
    assert guarded.app is not None
    client, session = await open_session(guarded)
    turn = await turn_events(client, "Where is my order 1042?")
    assert "1Z999AA10123456784" in str(turn[-1].data.get("text"))
    assert session.sandbox is not None
    values = {
        "session_id": session.id,
        "session": session.id,
        "object_id": session.id,
        "namespace": "SessionLog",
        "action": "evict",
        "name": "README.md",  # in kit/web, but not one of the page's files
        "path": "notes/refused.txt",
    }
    routes = _walk(guarded.app.routes)
    http_routes = [
        (method, _fill(pattern, values))
        for pattern, route in routes
        if isinstance(route, Route)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"})
    ]
    ws_routes = [_fill(p, values) for p, r in routes if isinstance(r, WebSocketRoute)]
    # The walk sees the whole surface: the session API, the control API, the DO hooks.
    paths = {path for _, path in http_routes}
    assert {"/v1/sessions", "/_kit/sessions", "/healthz"} <= paths
    assert f"/_kit/sandboxes/{session.id}/kill" in paths
    assert any(path.startswith("/_emulator/do/") for path in paths)
    assert len(ws_routes) == 1
    bad_headers = [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": guarded.api_token},  # no scheme
        {"authorization": f"Basic {base64.b64encode(guarded.api_token.encode()).decode()}"},
        {"x-api-key": guarded.api_token},
    ]
    page_paths = (*public_paths(WebConfig(local_sessions=True)), MAIL_PATH)
    assert {SESSION_PATH, MAIL_PATH, "/", "/web/README.md"} <= paths
    http_routes += [("GET", path) for path in page_paths if path not in paths]
    async with httpx.AsyncClient(base_url=guarded.url, trust_env=False) as http:
        before = await _surface(guarded, http)
        assert before[1], "the session's sandbox should be running"
        for method, path in [*http_routes, ("GET", "/nowhere"), ("POST", "/_kit/nowhere")]:
            if path in PUBLIC_PATHS:
                public = await http.request(method, path)
                assert (public.status_code, public.json()) == (200, {"ok": True}), path
                continue
            if path in page_paths:
                answer = await http.request(method, path, json={})
                expected = 403 if path in (SESSION_PATH, MAIL_PATH) else 200
                assert answer.status_code == expected, (method, path, answer.text)
                continue
            for headers in bad_headers:
                refused = await http.request(method, path, headers=headers, json={})
                assert refused.status_code == 401, (method, path, headers, refused.text)
                assert refused.json()["error"] == "unauthorized"
                assert refused.headers["www-authenticate"] == "Bearer"
        assert await _surface(guarded, http) == before
        good = {"authorization": f"Bearer {guarded.api_token}"}
        for method, path in http_routes:
            if "follow" not in path:
                answer = await http.request(method, path, headers=good, json={})
                assert answer.status_code != 401, (method, path)
    await client.close()
    driver = await Driver.open(guarded.url.replace("http", "ws", 1) + ws_routes[0])
    await driver.send({"type": "hello", "token": "wrong", "last_seq": None})
    assert (await driver.recv())["code"] == "unauthorized"
    assert await driver.close_code() == e.CLOSE_UNAUTHORIZED


async def _upgrade(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send a WebSocket upgrade with exactly ``headers`` (``Host`` included); the status
    and what came with it (the body of a refusal)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            *(f"{name}: {value}" for name, value in headers.items()),
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
        return status, body
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("origin", "host_name", "status"),
    [
        (None, None, 101),  # not a browser: no Origin, unaffected
        ("{own}", None, 101),  # a page the host itself served
        ("http://localhost:{port}", "localhost:{port}", 101),
        (ALLOWED, None, 101),  # listed in KIT_ALLOWED_ORIGINS
        ("HTTPS://APP.EXAMPLE.COM", None, 101),  # origins compare case-insensitively
        ("https://evil.example", None, 403),
        ("http://evil.example:{port}", "evil.example:{port}", 403),  # DNS rebinding
        ("http://127.0.0.1:1", None, 403),  # the same machine, another port
        ("https://app.example.com.evil.example", None, 403),
        ("null", None, 403),  # a file: page or a sandboxed frame
        ("not an origin", None, 403),
        ("http://[::1", None, 403),  # malformed (urlsplit raises ValueError): refused, no 500
    ],
)
async def test_origin_policy(
    guarded: Stack, origin: str | None, host_name: str | None, status: int
) -> None:
    """Browser pages open session sockets from the host's own origin and the listed ones;
    any other Origin is refused with 403 and a JSON reason naming the setting, before the
    socket opens; clients that send no Origin are unaffected."""
    new = await create_session(guarded.url, api_token=guarded.api_token)
    port = str(urlsplit(guarded.url).port)
    netloc = urlsplit(guarded.url).netloc
    headers = {"Host": (host_name or netloc).replace("{port}", port)}
    if origin is not None:
        headers["Origin"] = origin.replace("{own}", guarded.url).replace("{port}", port)
    got, body = await _upgrade(guarded.url, f"/v1/sessions/{new.session_id}/ws", headers)
    assert got == status
    if status == 403:
        refusal = json.loads(body)
        assert refusal["error"] == "forbidden_origin"
        assert "KIT_ALLOWED_ORIGINS" in refusal["message"]


def test_origin_policy_behind_a_proxy() -> None:
    """Without known own names (a host behind a platform's router), the own origin is the
    one whose host[:port] is the request's Host."""
    policy = OriginPolicy(["http://localhost:3000"])
    assert policy.allows("https://agent.fly.dev", "agent.fly.dev")
    assert policy.allows("https://Agent.Fly.Dev", "agent.fly.dev")
    assert policy.allows("http://localhost:3000", "agent.fly.dev")
    assert not policy.allows("https://evil.example", "agent.fly.dev")
    assert not policy.allows("https://agent.fly.dev", None)
    assert not policy.allows("https://agent.fly.dev/path", "agent.fly.dev")
    assert policy.allows(None, "agent.fly.dev")


@pytest.mark.parametrize(
    "value",
    ["app.example.com", "https://app.example.com/chat", "ftp://x", "https://", "http://[::1"],
)
def test_bad_allowed_origins_are_one_line(tmp_path: Path, value: str) -> None:
    """A KIT_ALLOWED_ORIGINS entry that is not scheme://host[:port] is refused, naming the
    setting and the form it wants."""
    with pytest.raises(SettingsError, match=r"KIT_ALLOWED_ORIGINS.*https://app\.example\.com"):
        dev_settings(
            project=tmp_path,
            host=None,
            port=None,
            environ={"KIT_ALLOWED_ORIGINS": f"http://localhost:3000,{value}"},
        )


def test_allowed_origins_are_read(tmp_path: Path) -> None:
    """KIT_ALLOWED_ORIGINS is a comma-separated list, normalised."""
    settings = dev_settings(
        project=tmp_path,
        host=None,
        port=None,
        environ={"KIT_ALLOWED_ORIGINS": " HTTPS://App.Example.com , http://localhost:3000,"},
    )
    assert settings.allowed_origins == ("https://app.example.com", "http://localhost:3000")
