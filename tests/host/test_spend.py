"""The spend meter: per-turn and per-session counts, which limit refuses a call, what the
session is told, and the totals a host starts from after a restart."""

from __future__ import annotations

import pytest

from kit.bundle.limits import Limits, Price, Tokens
from kit.host.spend import SpendMeter, spent_in
from kit.ids import SessionId, TurnId
from kit.protocol.frames import Event

S = SessionId("s1")
MODEL = "claude-opus-5-5"  # $4 / $20 per million tokens in kit's table


def _meter(turn: str = "t1") -> SpendMeter:
    meter = SpendMeter()
    meter.begin_turn(S, TurnId(turn))
    return meter


def test_a_turn_limit_refuses_once_reached_and_a_new_turn_starts_afresh() -> None:
    """Calls go through until the turn's count reaches the limit; the next turn's count
    starts at zero, while the session's keeps growing."""
    limits = Limits(turn_tokens=1000)
    meter = _meter()
    assert meter.check(S, limits, MODEL) is None
    meter.charge(S, limits, MODEL, Tokens(input=900, output=99))
    assert meter.check(S, limits, MODEL) is None  # 999: not reached yet
    meter.charge(S, limits, MODEL, Tokens(output=1))
    refusal = meter.check(S, limits, MODEL)
    assert refusal is not None
    assert refusal.setting == "limits.turn_tokens"
    assert refusal.message == (
        "kit's model proxy refused a model call: this turn has used 1,000 model tokens, "
        "reaching limits.turn_tokens = 1000 in kit.toml. Send another message to start a "
        "new turn, or raise the limit."
    )
    meter.begin_turn(S, TurnId("t1"))  # the same turn, recovered in a new sandbox
    assert meter.check(S, limits, MODEL) is not None
    meter.begin_turn(S, TurnId("t2"))
    assert meter.check(S, limits, MODEL) is None
    assert meter.spent(S).session.total == 1000
    assert meter.spent(S).turn == Tokens()


def test_a_session_limit_keeps_refusing_in_later_turns() -> None:
    """Past limits.session_tokens every later turn is refused with the same setting."""
    limits = Limits(session_tokens=500)
    meter = _meter()
    meter.charge(S, limits, MODEL, Tokens(input=400, cache_read=100))
    for turn in ("t1", "t2", "t3"):
        meter.begin_turn(S, TurnId(turn))
        refusal = meter.check(S, limits, MODEL)
        assert refusal is not None
        assert refusal.setting == "limits.session_tokens"
        assert "this session has used 500 model tokens" in refusal.message
        assert "start a new session" in refusal.message


def test_usd_limits_price_each_call() -> None:
    """USD counts use the call's model price; a limit is reached at its amount."""
    limits = Limits(turn_usd=0.01, session_usd=0.05)
    meter = _meter()
    meter.charge(S, limits, MODEL, Tokens(input=1000, output=250))  # 0.004 + 0.005
    assert meter.spent(S).turn_usd == pytest.approx(0.009)
    assert meter.check(S, limits, MODEL) is None
    meter.charge(S, limits, MODEL, Tokens(output=50))  # + 0.001
    refusal = meter.check(S, limits, MODEL)
    assert refusal is not None
    assert refusal.setting == "limits.turn_usd"
    assert "this turn has spent $0.0100 at kit's prices, reaching limits.turn_usd = 0.01" in (
        refusal.message
    )


def test_a_usd_limit_refuses_a_model_without_a_price() -> None:
    """With a USD limit set, a call to a model kit cannot price is refused, not counted as free;
    a price in kit.toml makes it allowed."""
    meter = _meter()
    refusal = meter.check(S, Limits(session_usd=5), "claude-haiku-5-5")
    assert refusal is not None
    assert refusal.setting == "limits.prices"
    assert "limits.session_usd = 5 in kit.toml needs its price, and kit has none" in refusal.message
    priced = Limits(session_usd=5, prices=(("claude-haiku-5-5*", Price.of(0.1, 0.5)),))
    assert meter.check(S, priced, "claude-haiku-5-5") is None
    assert meter.check(S, Limits(), "claude-haiku-5-5") is None  # no USD limit: no price needed


def test_the_model_allowlist_applies_to_count_tokens_too() -> None:
    """A model outside limits.models is refused even for count_tokens, which no count limit
    applies to."""
    limits = Limits(models=("claude-haiku-*",), turn_tokens=10)
    meter = _meter()
    refusal = meter.check(S, limits, MODEL, costs=False)
    assert refusal is not None
    assert refusal.setting == "limits.models"
    assert refusal.message == (
        "kit's model proxy refused a call to model 'claude-opus-5-5': it is not in "
        'limits.models = ["claude-haiku-*"] in kit.toml. Set agent.model to an allowed model, '
        "or add this one to limits.models."
    )
    meter.charge(S, limits, "claude-haiku-4-5", Tokens(input=50))
    assert meter.check(S, limits, "claude-haiku-4-5", costs=False) is None
    assert meter.check(S, limits, "claude-haiku-4-5") is not None


def test_the_session_is_told_each_setting_once_per_turn() -> None:
    """Refusals are kept for the session's running turn, one per setting; a new turn tells
    again; a refusal outside any turn is not kept."""
    limits = Limits(turn_tokens=1)
    meter = SpendMeter()
    meter.charge(S, limits, MODEL, Tokens(input=5))
    assert meter.check(S, limits, MODEL) is not None  # no turn yet
    meter.begin_turn(S, TurnId("t1"))
    meter.charge(S, limits, MODEL, Tokens(input=5))
    for _ in range(3):
        assert meter.check(S, limits, MODEL) is not None
    (told,) = meter.take_refusals(S, TurnId("t1"))
    assert told.event()["code"] == "spend_limit"
    assert told.event()["setting"] == "limits.turn_tokens"
    assert meter.take_refusals(S, TurnId("t1")) == []
    meter.check(S, limits, MODEL)
    assert meter.take_refusals(S, TurnId("t1")) == []  # already told in this turn
    meter.begin_turn(S, TurnId("t2"))
    meter.charge(S, limits, MODEL, Tokens(input=5))
    meter.check(S, limits, MODEL)
    assert [r.turn_id for r in meter.take_refusals(S, TurnId("t2"))] == ["t2"]


def test_the_default_turn_ceiling_applies_without_limits() -> None:
    """With no [limits], a turn is refused at 4,000,000 tokens, and the message says it is
    kit's default."""
    meter = _meter()
    meter.charge(S, Limits(), MODEL, Tokens(cache_read=4_000_000))
    refusal = meter.check(S, Limits(), MODEL)
    assert refusal is not None
    assert "reaching limits.turn_tokens = 4000000 (kit's default; set another in kit.toml)" in (
        refusal.message
    )


def test_a_restarted_host_starts_from_the_stored_results() -> None:
    """spent_in sums the usage and cost of stored results; seeding adds it once."""
    events = [
        Event(1, "user", {"text": "hi"}, 0, "t1"),
        Event(2, "result", {"usage": {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 50}, "total_cost_usd": 0.25}, 0, "t1"),
        Event(3, "result", {"usage": {"input_tokens": 1, "output_tokens": True}, "total_cost_usd": float("nan")}, 0, "t2"),
        Event(4, "error", {"code": "turn_failed"}, 0, "t3"),
    ]  # fmt: skip
    tokens, usd = spent_in(events)
    assert (tokens.total, usd) == (201, 0.25)
    meter = SpendMeter()
    assert not meter.seeded(S)
    meter.seed(S, tokens, usd)
    meter.seed(S, tokens, usd)
    assert meter.seeded(S)
    assert (meter.spent(S).session.total, meter.spent(S).session_usd) == (201, 0.25)
    assert meter.check(S, Limits(session_tokens=201), MODEL) is not None
