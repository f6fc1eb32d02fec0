"""The golden spend cases (kit/host/golden/spend.jsonl) replayed against kit's meter and usage
reader, as worker_shim/test/spend.test.ts replays them against the shim's: both hosts make
the same decisions, in the same words, from the same replies."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from kit.bundle.limits import Limits, Tokens
from kit.host.spend import SpendMeter
from kit.host.usage import Call, UsageReader
from kit.ids import SessionId, TurnId

GOLDEN = Path(__file__).resolve().parents[2] / "kit" / "host" / "golden" / "spend.jsonl"
S = SessionId("s")
PIECE = 7
"""Reply bodies are fed in pieces this long, so lines and JSON are split mid-way."""


def _cases() -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        step = json.loads(line)
        if "note" in step:
            continue
        if "case" in step:
            current = cases[step["case"]] = []
        current.append(step)
    return cases


CASES = _cases()


def _response(reply: dict[str, Any]) -> bytes:
    """The reply as the upstream sends it: its head, then its body (SSE events or JSON)."""
    if "sse" in reply:
        kind = "text/event-stream"
        body = "".join(
            f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n"
            for e in reply["sse"]
        ).encode()
    else:
        kind = "application/json"
        body = json.dumps(reply["json"], separators=(",", ":")).encode()
    head = f"HTTP/1.1 {reply['status']} X\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_the_golden_file_has_the_cases_both_sides_need() -> None:
    """Every kind of decision is there: each setting refuses, told and not told."""
    refused = [s["refused"] for steps in CASES.values() for s in steps if s.get("refused")]
    settings = {r["setting"] for r in refused}
    assert settings == {
        "limits.models",
        "limits.prices",
        "limits.turn_tokens",
        "limits.session_tokens",
        "limits.turn_usd",
        "limits.session_usd",
    }
    assert {r["told"] for r in refused} == {True, False}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_golden_case(name: str) -> None:
    """Each call is refused or forwarded as the case says, refusals told once per turn and
    setting, and the counts after the replies' usage are the case's."""
    steps = CASES[name]
    limits = Limits.from_manifest(steps[0]["limits"])
    meter = SpendMeter()
    for number, step in enumerate(steps[1:], 2):
        where = f"{name}, step {number}: {step}"
        if "turn" in step:
            meter.begin_turn(S, TurnId(step["turn"]))
        elif "spent" in step:
            spent = meter.spent(S)
            got = {
                "session": asdict(spent.session),
                "turn": asdict(spent.turn),
                "session_usd": spent.session_usd,
                "turn_usd": spent.turn_usd,
            }
            assert got == step["spent"], where
        else:
            model, costs = step["call"], not step.get("count_tokens", False)
            refusal = meter.check(S, limits, model, costs=costs)
            turn = meter.spent(S).turn_id
            told = bool(meter.take_refusals(S, turn)) if turn is not None else False
            if step["refused"] is None:
                assert refusal is None, where
                reader = UsageReader()

                def charge(tokens: Tokens, model: str = model) -> None:
                    meter.charge(S, limits, model, tokens)

                reader.expect(Call(costs, charge))
                data = _response(step["reply"])
                for at in range(0, len(data), PIECE):
                    reader.feed(data[at : at + PIECE])
                reader.eof()
                assert reader.broken is None, where
            else:
                assert refusal is not None, where
                got_refusal = {"setting": refusal.setting, "message": refusal.message, "told": told}
                assert got_refusal == step["refused"], where
