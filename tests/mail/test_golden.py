"""The mail rules replay their golden cases (the shim replays the same files)."""

from __future__ import annotations

from typing import Any

import pytest

from kit.mail.compose import compose_reply
from kit.mail.golden import load_cases
from kit.mail.message import Attachment, Inbound, parse
from kit.mail.rules import Agent, Thread, decide, thread_ids, tokens
from kit.mail.text import attachment_plan, strip_quotes, turn_text


def _raw(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def _route(case: dict[str, Any]) -> dict[str, Any]:
    agent = Agent(case["agent"])
    env = case.get("envelope") or {}
    msg = parse(_raw(case["mail"]), envelope_from=env.get("from"), envelope_to=env.get("to"))
    threads = case["threads"]
    as_thread = {
        t["session_id"]: Thread(t["session_id"], t["token"], tuple(t["participants"]), t["replies"])
        for t in threads
    }
    toks = tokens(msg, agent)
    by_token = next(
        (as_thread[t["session_id"]] for t in threads if toks and t["token"] == toks[0]), None
    )
    by_reference = next(
        (
            as_thread[t["session_id"]]
            for mid in thread_ids(msg)
            for t in threads
            if mid in t["message_ids"]
        ),
        None,
    )
    auth = case.get("auth")
    d = decide(
        msg,
        agent,
        seen=msg.message_id in case["seen"],
        by_token=by_token,
        by_reference=by_reference,
        authenticated=None if auth is None else auth == "pass",
    )
    got: dict[str, Any] = {"action": d.action}
    if d.thread is not None:
        got["session_id"] = d.thread.session_id
    if d.reason is not None:
        got["reason"] = d.reason
    if d.action != "refuse":
        got["text"] = turn_text(msg)
    return got


@pytest.mark.parametrize("case", load_cases("route"), ids=lambda c: c["name"])
def test_route(case: dict[str, Any]) -> None:
    assert _route(case) == case["expect"]


@pytest.mark.parametrize("case", load_cases("compose"), ids=lambda c: c["name"])
def test_compose(case: dict[str, Any]) -> None:
    msg = parse(_raw(case["mail"]))
    agent = Agent(case["agent"]["address"], case["agent"]["name"])
    reply = compose_reply(msg, agent, case["token"], case["answer"])
    for header, value in case["expect"].items():
        if header == "body":
            assert reply.get_content() == value
        else:
            assert str(reply[header]) == value, header


@pytest.mark.parametrize("case", load_cases("strip"), ids=lambda c: c["name"])
def test_strip(case: dict[str, Any]) -> None:
    assert strip_quotes(case["text"]) == case["expect"]


def test_every_refusal_reason_has_a_case() -> None:
    """A reason no golden case reaches is a rule the shim would never be checked on."""
    from kit.mail.rules import REFUSALS

    reached = {c["expect"].get("reason") for c in load_cases("route")}
    assert set(REFUSALS) - reached == set()


def _attachments_of(case: dict[str, Any]) -> Inbound:
    """The case's message: its fields, and each attachment ``count`` times (no bytes: the
    plan reads names and sizes)."""
    m = case["message"]
    attachments = tuple(
        Attachment(a["filename"], a["content_type"], a["size"], b"")
        for a in case["attachments"]
        for _ in range(a.get("count", 1))
    )
    return Inbound(
        message_id=m["message_id"],
        sender=m["sender"],
        sender_name=m["sender_name"],
        recipients=("agent@example.com",),
        return_path=None,
        subject=m["subject"],
        in_reply_to=(),
        references=(),
        headers={},
        text=m["text"],
        attachments=attachments,
    )


@pytest.mark.parametrize("case", load_cases("attachments"), ids=lambda c: c["name"])
def test_attachment_plan(case: dict[str, Any]) -> None:
    """Which attachments are saved, under which names, and what the agent reads of them
    (the shim replays the same cases)."""
    msg = _attachments_of(case)
    plan = attachment_plan(msg, case["folder"])
    assert [[name, why] for name, why in plan] == case["expect"]["plan"]
    assert turn_text(msg, [why for _, why in plan]) == case["expect"]["text"]
