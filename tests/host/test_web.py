"""The chat page's routes: a page of ``kit dev`` gets a session without the API token only
from its own loopback origin; hosts without local sessions do not serve ``/web/session``."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from kit.cli.dev import banner
from kit.cli.stack import Stack
from kit.client import SessionClient
from kit.host.app import create_app
from kit.host.auth import OriginPolicy
from kit.host.web import WebConfig


def _netloc(stack: Stack) -> str:
    return urlsplit(stack.url).netloc


async def _sessions(stack: Stack) -> int:
    return len(await stack.host.session_ids())


async def test_a_loopback_page_gets_a_session_without_the_token(stack: Stack) -> None:
    """``POST /web/session`` from the host's own page (same-origin, at 127.0.0.1 or
    localhost) answers as ``POST /v1/sessions`` does, and the session token it gives opens
    the session."""
    port = urlsplit(stack.url).port
    async with httpx.AsyncClient(base_url=stack.url, trust_env=False) as http:
        for name in ("127.0.0.1", "localhost"):
            origin = f"http://{name}:{port}"
            answer = await http.post(
                "/web/session",
                headers={
                    "origin": origin,
                    "host": f"{name}:{port}",
                    "sec-fetch-site": "same-origin",
                },
            )
            assert answer.status_code == 201, answer.text
            body = answer.json()
            assert body["ws_url"] == f"ws://{name}:{port}/v1/sessions/{body['session_id']}/ws"
            assert body["token"].startswith("kit-session-")
    client = SessionClient(
        stack.url.replace("http", "ws", 1) + urlsplit(body["ws_url"]).path, body["token"]
    )
    await client.connect()
    await client.close()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no Origin header"),
        ({"origin": "null"}, "is not this host's own loopback origin"),
        ({"origin": "http://evil.example"}, "is not this host's own loopback origin"),
        ({"origin": "https://{here}"}, "is not this host's own loopback origin"),
        # DNS rebinding: a page of evil.example, whose name now resolves to 127.0.0.1.
        (
            {"origin": "http://evil.example:{port}", "host": "evil.example:{port}"},
            "loopback origin",
        ),
        ({"origin": "http://{here}", "host": "evil.example:{port}"}, "is not the page's origin"),
        ({"origin": "http://{here}", "sec-fetch-site": "cross-site"}, "Sec-Fetch-Site"),
    ],
)
async def test_other_requests_get_403_naming_why(
    stack: Stack, headers: dict[str, str], reason: str
) -> None:
    """Without the page's own loopback Origin and Host (a foreign site: CSRF; a rebound
    name; a tool sending no Origin), ``POST /web/session`` is 403 ``forbidden_origin``
    saying why, and no session is made."""
    here, port = _netloc(stack), str(urlsplit(stack.url).port)
    sent = {k: v.format(here=here, port=port) for k, v in headers.items()}
    before = await _sessions(stack)
    async with httpx.AsyncClient(base_url=stack.url, trust_env=False) as http:
        answer = await http.post("/web/session", headers=sent)
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden_origin"
    assert reason in answer.json()["message"]
    assert await _sessions(stack) == before


async def test_the_page_is_served_under_a_strict_policy(stack: Stack) -> None:
    """``/`` is the page, under a CSP allowing only its own scripts and styles (no inline
    code); its files and config need no token; other files of kit/web are not served."""
    async with httpx.AsyncClient(base_url=stack.url, trust_env=False) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert '<script type="module" src="/web/app.js">' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self';" in policy
        assert "unsafe" not in policy
        assert "frame-ancestors 'none'" in policy
        for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
            asset = await http.get(f"/web/{name}")
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(kind)
            assert asset.headers["x-content-type-options"] == "nosniff"
        assert (await http.get("/web/config.json")).json() == {
            "session_url": "/web/session",
            "mail_url": "/web/mail",  # kit dev's list of email threads
        }
        assert (await http.get("/web/__init__.py")).status_code == 401


async def test_hosts_without_local_sessions_do_not_serve_them(stack: Stack) -> None:
    """A host without the page, or with a production page whose sessions come from the
    operator's endpoint, answers ``/web/session`` 401 like any route it does not make
    public; the page's config names the operator's endpoint and its CSP lets the page
    call it. On an address that is not loopback, local sessions are refused."""
    here = _netloc(stack)
    good = {"origin": f"http://{here}", "host": here}
    own = OriginPolicy(own=[here])
    operator = WebConfig(session_url="https://app.example.com/kit-session")
    for web in (None, operator):
        app = create_app(stack.host, api_token=stack.api_token, origins=own, web=web)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=stack.url) as http:
            assert (await http.post("/web/session", headers=good)).status_code == 401
            config = await http.get("/web/config.json")
            if web is None:
                assert config.status_code == 401
                assert (await http.get("/")).status_code == 401
            else:
                assert config.json() == {"session_url": operator.session_url}
                csp = (await http.get("/")).headers["content-security-policy"]
                assert "connect-src 'self' https://app.example.com;" in csp
    anywhere = create_app(
        stack.host, api_token=stack.api_token, origins=OriginPolicy(), web=WebConfig(True)
    )
    transport = httpx.ASGITransport(app=anywhere)
    async with httpx.AsyncClient(transport=transport, base_url=stack.url) as http:
        refused = await http.post("/web/session", headers=good)
    assert refused.status_code == 403
    assert "loopback address" in refused.json()["message"]


async def test_the_dev_banner_names_the_page(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kit dev``'s banner gives the page's URL, to open in a browser on this machine."""
    banner(stack)
    assert f"page       {stack.url}/  (the chat page: open it in a browser on this machine)" in (
        capsys.readouterr().out
    )


async def test_the_config_and_policy_follow_the_current_session_url(stack: Stack) -> None:
    """A host whose session URL is read at each request (the Fly gateway: the deployed
    bundle's, which a deploy changes without a restart) tells the page the current one and
    lets the page's CSP reach that URL's origin only; with none, the config says null and
    the page connects to the host alone."""
    current: list[str | None] = ["https://one.example.com/kit-session"]
    web = WebConfig(session_url_from=lambda: current[0])
    app = create_app(stack.host, api_token=stack.api_token, web=web)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=stack.url) as http:
        for url, connect in [
            ("https://one.example.com/kit-session", "'self' https://one.example.com;"),
            ("https://two.example.com:8443/s", "'self' https://two.example.com:8443;"),
            (None, "'self';"),
        ]:
            current[0] = url
            assert (await http.get("/web/config.json")).json() == {"session_url": url}
            csp = (await http.get("/")).headers["content-security-policy"]
            assert f"connect-src {connect}" in csp
            assert (await http.post("/web/session")).status_code == 401
