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

from kit.cli.stack import Stack
from kit.host.app import create_app
from kit.host.auth import OriginPolicy, loopback_hosts
from kit.host.web import WebConfig, local_refusal

GOLDEN = Path(__file__).resolve().parents[2] / "kit" / "host" / "golden" / "web_session.jsonl"


def _cases() -> list[dict[str, Any]]:
    lines = GOLDEN.read_text(encoding="utf-8").splitlines()
    return [case for case in map(json.loads, lines) if "case" in case]


CASES = _cases()


def _policy(listen: str) -> OriginPolicy:
    """The policy of a host listening on ``listen`` (kit/host/gateway.py's rule: its own
    loopback names when the address is loopback, else none)."""
    address, port = listen.rsplit(":", 1)
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


async def test_the_route_answers_each_case(stack: Stack) -> None:
    """Through ``kit dev``'s route (a host with that case's policy): 201 with a session, or
    403 ``forbidden_origin`` with the golden message. (Cases without a Host header are
    left to the rule's own test: an HTTP/1.1 client always sends one.)"""
    for case in CASES:
        if case["host"] is None:
            continue
        app = create_app(
            stack.host,
            api_token=stack.api_token,
            origins=_policy(case["listen"]),
            web=WebConfig(local_sessions=True),
        )
        headers = {"host": case["host"]}
        if case["origin"] is not None:
            headers["origin"] = case["origin"]
        if case["sec_fetch_site"] is not None:
            headers["sec-fetch-site"] = case["sec_fetch_site"]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=stack.url) as http:
            answer = await http.post("/web/session", headers=headers)
        if case["refused"] is None:
            assert answer.status_code == 201, (case["case"], answer.text)
            assert answer.json()["token"].startswith("kit-session-")
        else:
            assert answer.status_code == 403, case["case"]
            assert answer.json() == {"error": "forbidden_origin", "message": case["refused"]}
