"""Spend limits at the model proxy: each session's and turn's model usage, and the refusals.

The proxy (:mod:`kit.host.proxy`) asks :meth:`SpendMeter.check` before it forwards a call
and reports what the upstream's responses say the calls used (:meth:`SpendMeter.charge`,
fed by :mod:`kit.host.usage` as the bytes stream). The session host says when a turn
starts (:meth:`SpendMeter.begin_turn`): the per-turn counts start again at zero, a turn
recovered in a new sandbox keeps its counts. A refused call is answered by the proxy and
kept here until the session takes it (:meth:`SpendMeter.take_refusals`) to tell its
clients, once per turn and setting, in an ``error`` event with code ``spend_limit``.

The counts live in this host's memory for as long as it runs, across a session's
sandboxes and its unloads. A host that loads a session it has not counted (after a
restart, or a takeover from another host) starts its session totals from the session's
stored ``result`` events (:func:`spent_in`): the usage and ``total_cost_usd`` the CLI
reported for each finished turn. Those figures come from the sandbox, not from this
meter, and leave out turns that ended without a result.

The Cloudflare shim makes the same decisions in the same words (worker_shim/src/spend.ts);
the golden cases of kit/host/golden/spend.jsonl are replayed against both
(tests/host/test_spend_golden.py, worker_shim/test/spend.test.ts).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kit.bundle.limits import Limits, Tokens
from kit.ids import SessionId, TurnId
from kit.protocol.frames import Event

log = logging.getLogger("kit.host")

SPEND_LIMIT = "spend_limit"
"""The ``code`` of the ``error`` event that tells clients a call was refused."""
USD_EPSILON = 1e-9
"""Sums of float prices drift: a USD limit counts as reached within this much of it."""


@dataclass(frozen=True)
class Refusal:
    """A model call the proxy refused, and why."""

    setting: str
    """The kit.toml key that refused it, such as ``limits.turn_tokens``."""
    message: str
    """One sentence for the user: what was reached, the setting's value, what to do."""
    turn_id: TurnId | None

    def event(self) -> dict[str, Any]:
        """The ``error`` event's data."""
        return {"code": SPEND_LIMIT, "setting": self.setting, "message": self.message}


@dataclass
class Spent:
    """What one session has used, in this host's count."""

    session: Tokens = field(default_factory=Tokens)
    session_usd: float = 0.0
    turn: Tokens = field(default_factory=Tokens)
    turn_usd: float = 0.0
    turn_id: TurnId | None = None


@dataclass
class _Account:
    spent: Spent = field(default_factory=Spent)
    seeded: bool = False
    refusals: list[Refusal] = field(default_factory=list)
    told: set[str] = field(default_factory=set)
    """Settings already reported in this turn."""


class SpendMeter:
    """Counts model usage per session and per turn, and decides which calls are refused."""

    def __init__(self) -> None:
        self._accounts: dict[SessionId, _Account] = {}

    def _account(self, session_id: SessionId) -> _Account:
        account = self._accounts.get(session_id)
        if account is None:
            account = self._accounts[session_id] = _Account()
        return account

    def spent(self, session_id: SessionId) -> Spent:
        """The session's counts so far (zero for a session never counted)."""
        return self._account(session_id).spent

    def begin_turn(self, session_id: SessionId, turn_id: TurnId) -> None:
        """``turn_id`` is the session's running turn: a new one starts its counts at zero."""
        account = self._account(session_id)
        if account.spent.turn_id != turn_id:
            account.spent.turn_id = turn_id
            account.spent.turn = Tokens()
            account.spent.turn_usd = 0.0
            account.told.clear()
            account.refusals.clear()

    def seeded(self, session_id: SessionId) -> bool:
        """Whether the session's stored spend was added (:meth:`seed`)."""
        return self._account(session_id).seeded

    def seed(self, session_id: SessionId, tokens: Tokens, usd: float) -> None:
        """Add what the session spent before this host counted it (once)."""
        account = self._account(session_id)
        if not account.seeded:
            account.seeded = True
            account.spent.session += tokens
            account.spent.session_usd += usd

    def check(
        self, session_id: SessionId, limits: Limits, model: str, *, costs: bool = True
    ) -> Refusal | None:
        """Why a call to ``model`` must be refused now, or None to forward it.

        ``costs`` is False for ``count_tokens``, which only the model allowlist applies to.
        A refusal is also kept for :meth:`take_refusals` (once per turn and setting).
        """
        refusal = self._why(session_id, limits, model, costs)
        if refusal is not None:
            account = self._account(session_id)
            if refusal.setting not in account.told:
                account.told.add(refusal.setting)
                log.warning("session %s: model call refused (%s)", session_id, refusal.setting)
                if refusal.turn_id is not None:
                    account.refusals.append(refusal)
        return refusal

    def _why(
        self, session_id: SessionId, limits: Limits, model: str, costs: bool
    ) -> Refusal | None:
        spent = self.spent(session_id)
        turn = spent.turn_id
        if not limits.allows(model):
            return Refusal(
                "limits.models",
                f"kit's model proxy refused a call to model {model!r}: it is not in "
                f"{limits.describe('models')}. Set agent.model to an allowed model, or add "
                "this one to limits.models.",
                turn,
            )
        if not costs:
            return None
        if limits.in_usd and limits.price_of(model) is None:
            key = "turn_usd" if limits.turn_usd is not None else "session_usd"
            return Refusal(
                "limits.prices",
                f"kit's model proxy refused a call to model {model!r}: "
                f"{limits.describe(key)} needs its price, and kit has none. Add one under "
                "[limits.prices] in kit.toml (USD per million tokens), or allow only priced "
                "models with limits.models.",
                turn,
            )
        reached = self._reached(spent, limits)
        if reached is None:
            return None
        key, used = reached
        scope = "session" if key.startswith("session") else "turn"
        then = (
            "Its later turns are refused too: start a new session, or raise the limit."
            if scope == "session"
            else "Send another message to start a new turn, or raise the limit."
        )
        return Refusal(
            f"limits.{key}",
            f"kit's model proxy refused a model call: this {scope} has {used}, reaching "
            f"{limits.describe(key)}. {then}",
            turn,
        )

    @staticmethod
    def _reached(spent: Spent, limits: Limits) -> tuple[str, str] | None:
        """The first limit reached (session ones first) and what was used, in words."""
        if limits.session_tokens is not None and spent.session.total >= limits.session_tokens:
            return "session_tokens", f"used {spent.session.total:,} model tokens"
        if spent.turn.total >= limits.turn_token_limit:
            return "turn_tokens", f"used {spent.turn.total:,} model tokens"
        if limits.session_usd is not None and spent.session_usd >= limits.session_usd - USD_EPSILON:
            return "session_usd", f"spent ${spent.session_usd:.4f} at kit's prices"
        if limits.turn_usd is not None and spent.turn_usd >= limits.turn_usd - USD_EPSILON:
            return "turn_usd", f"spent ${spent.turn_usd:.4f} at kit's prices"
        return None

    def charge(self, session_id: SessionId, limits: Limits, model: str, tokens: Tokens) -> None:
        """A call of the session used ``tokens`` more (priced with ``limits``'s prices)."""
        spent = self.spent(session_id)
        price = limits.price_of(model)
        usd = price.usd(tokens) if price is not None else 0.0
        spent.session += tokens
        spent.turn += tokens
        spent.session_usd += usd
        spent.turn_usd += usd

    def take_refusals(self, session_id: SessionId, turn_id: TurnId) -> list[Refusal]:
        """The refusals of ``turn_id`` not taken yet (each setting once per turn)."""
        account = self._accounts.get(session_id)
        if account is None or not account.refusals:
            return []
        taken = [r for r in account.refusals if r.turn_id == turn_id]
        account.refusals.clear()
        return taken


def spent_in(events: Iterable[Event]) -> tuple[Tokens, float]:
    """What a session's stored ``result`` events say its finished turns used: tokens from
    their ``usage``, USD from their ``total_cost_usd`` (both as the CLI reported them)."""
    tokens, usd = Tokens(), 0.0
    for event in events:
        if event.kind != "result":
            continue
        usage = event.data.get("usage")
        if isinstance(usage, dict):
            tokens += Tokens(
                input=_count(usage.get("input_tokens")),
                output=_count(usage.get("output_tokens")),
                cache_write=_count(usage.get("cache_creation_input_tokens")),
                cache_read=_count(usage.get("cache_read_input_tokens")),
            )
        cost = event.data.get("total_cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost):
            usd += max(0.0, float(cost))
    return tokens, usd


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
