"""The golden cases of ``POST /web/session`` (kit/host/golden/web_session.jsonl) replayed
against kit's Python rule, as worker_shim/test/web.test.ts replays them against the shim's:
``kit dev`` and ``kit dev --target cloudflare`` give a page a session without the API
token in exactly the same cases, and refuse the others in the same words."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.bundle.config import parse_session_url
from kit.bundle.errors import ConfigError
from kit.cli.stack import Stack
from kit.host.app import create_app
from kit.host.auth import OriginPolicy, loopback_hosts
from kit.host.web import WebConfig, content_security_policy, local_refusal
from kit.mail.routes import page_threads
from kit.mail.store import SqliteMailStore

GOLDEN = Path(__file__).resolve().parents[2] / "kit" / "host" / "golden" / "web_session.jsonl"


def _cases() -> list[dict[str, Any]]:
    lines = GOLDEN.read_text(encoding="utf-8").splitlines()
    return [case for case in map(json.loads, lines) if "case" in case]


CASES = _cases()


def _policy(listen: str) -> OriginPolicy:
    """The policy of a host listening on ``listen`` (kit/host/gateway.py's rule: its own
    loopback names when the address is loopback, else none)."""
    address, port = listen.rsplit(":", 1)
    address = address.removeprefix("[").removesuffix("]")
    loopback = ipaddress.ip_address(address).is_loopback
    return OriginPolicy(own=loopback_hosts(address, int(port)) if loopback else None)


def test_the_golden_cases_cover_both_outcomes() -> None:
    """The file holds cases that are given a session and cases refused for each rule."""
    refused = [c["refused"] for c in CASES if c["refused"] is not None]
    assert len(refused) < len(CASES)
    for rule in ("loopback address", "no Origin", "loopback origin", "is not the page's"):
        assert any(rule in why for why in refused), rule
    assert any(why.startswith("Sec-Fetch-Site") for why in refused)


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_local_refusal_decides_each_case(case: dict[str, Any]) -> None:
    """``local_refusal`` gives a session, or refuses in the golden words, in every case."""
    got = local_refusal(
        _policy(case["listen"]), case["origin"], case["host"], case["sec_fetch_site"]
    )
    assert got == case["refused"]


async def test_the_route_answers_each_case(stack: Stack, tmp_path: Path) -> None:
    """Through ``kit dev``'s routes (a host with that case's policy): ``/web/session`` 201
    with a session, and ``/web/mail`` (the same rule) 200 with the threads, or both 403
    ``forbidden_origin`` with the golden message. (Cases without a Host header are left to
    the rule's own test: an HTTP/1.1 client always sends one.)"""
    mail = SqliteMailStore(tmp_path / "mail.sqlite")
    for case in CASES:
        if case["host"] is None:
            continue
        app = create_app(
            stack.host,
            api_token=stack.api_token,
            origins=_policy(case["listen"]),
            web=WebConfig(local_sessions=True, local_mail=page_threads(mail, "a@example.com")),
        )
        # As a server reads them: one byte a character (Starlette decodes latin-1).
        headers = {"host": case["host"].encode("latin-1")}
        if case["origin"] is not None:
            headers["origin"] = case["origin"].encode("latin-1")
        if case["sec_fetch_site"] is not None:
            headers["sec-fetch-site"] = case["sec_fetch_site"].encode("latin-1")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=stack.url) as http:
            answer = await http.post("/web/session", headers=headers)
            listed = await http.post("/web/mail", headers=headers)
        if case["refused"] is None:
            assert answer.status_code == 201, (case["case"], answer.text)
            assert answer.json()["token"].startswith("kit-session-")
            assert listed.status_code == 200, (case["case"], listed.text)
            assert listed.json() == {"address": "a@example.com", "threads": []}
        else:
            refused = {"error": "forbidden_origin", "message": case["refused"]}
            assert answer.status_code == 403, case["case"]
            assert answer.json() == refused
            assert listed.status_code == 403, case["case"]
            assert listed.json() == refused
    mail.close()


CSP_GOLDEN = GOLDEN.with_name("web_csp.jsonl")
CSP_CASES = [
    case
    for case in map(json.loads, CSP_GOLDEN.read_text(encoding="utf-8").splitlines())
    if "case" in case
]


@pytest.mark.parametrize("case", CSP_CASES, ids=[c["case"] for c in CSP_CASES])
def test_the_pages_connect_src_names_only_a_well_formed_origin(case: dict[str, Any]) -> None:
    """The page's CSP adds the session URL's origin to ``connect-src`` only when it is one
    well-formed ``scheme://host[:port]`` source, lower-cased (never text that ends the
    directive, adds a source or cannot be sent in a header); the shim gives the same."""
    policy = content_security_policy(case["session_url"])
    assert f"; connect-src {case['connect_src']}; base-uri 'none';" in policy
    assert policy.isprintable()


@pytest.mark.parametrize(
    "case",
    [c for c in CSP_CASES if c["session_url"] not in (None, "/web/session")],
    ids=lambda c: c["case"],
)
def test_kit_toml_takes_a_session_url_exactly_when_the_page_can_call_it(
    case: dict[str, Any],
) -> None:
    """``[web] session_url`` (and a bundle's manifest) takes a URL only when the page's CSP
    names its origin: none is accepted that the page could not then call."""
    added = case["connect_src"] != "'self'"
    try:
        parse_session_url("kit.toml", case["session_url"])
    except ConfigError:
        accepted = False
    else:
        accepted = True
    assert accepted == added
