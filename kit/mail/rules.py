"""Which inbound mail is answered, and in which thread.

Pure functions; the Cloudflare shim implements the same rules in TypeScript, and both replay
``golden/route.jsonl``. The order of the checks is part of the rules (the first that applies
gives the reason): malformed → loop → duplicate → token → references → new thread.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from kit.mail.message import Inbound
from kit.mail.text import strip_quotes

MAX_REPLIES_PER_THREAD = 50
"""A thread stops being answered after this many replies (a loop kit did not recognise
still ends)."""

MAX_REFERENCES = 100
"""Cloudflare's ``reply()`` throws above 100 ``References`` entries; kit caps there."""

TOKEN_BYTES = 12
_TOKEN = re.compile(r"^[a-z0-9]{16,40}$")
_SYSTEM_SENDERS = frozenset({"mailer-daemon", "postmaster"})
_BULK = frozenset({"bulk", "list", "junk"})

Refusal = Literal[
    "malformed",
    "unauthenticated",
    "auto_submitted",
    "auto_response_suppress",
    "precedence",
    "list",
    "null_sender",
    "system_sender",
    "own_address",
    "not_addressed",
    "duplicate",
    "unknown_token",
    "not_participant",
    "thread_cap",
    "empty",
]

REFUSALS: dict[str, str] = {
    "malformed": "the message has no sender address kit can answer (none, several, one "
    "that reads two ways, or not ASCII)",
    "unauthenticated": "the sender's domain failed authentication (DMARC/SPF/DKIM)",
    "auto_submitted": "Auto-Submitted says a machine sent it (RFC 3834)",
    "auto_response_suppress": "X-Auto-Response-Suppress asks for no automatic reply",
    "precedence": "Precedence: bulk, list or junk",
    "list": "mail from a mailing list (List-Id)",
    "null_sender": "the envelope sender is empty (a bounce or notification)",
    "system_sender": "sent by a mailer-daemon or postmaster",
    "own_address": "sent from the agent's own address",
    "not_addressed": "not addressed to the agent",
    "duplicate": "this Message-ID was taken already (its reply stands)",
    "unknown_token": "the plus-address token is not one kit issued",
    "not_participant": "the sender is not a participant of the thread it points at",
    "thread_cap": f"the thread had {MAX_REPLIES_PER_THREAD} replies already",
    "empty": "no text of its own (only quoted history) and no attachments",
}
"""Every refusal reason, with the sentence ``kit mail outbox`` and the docs show."""


@dataclass(frozen=True)
class Agent:
    """The agent's mail identity."""

    address: str
    """``local@domain``, lower-cased."""
    name: str = ""

    @property
    def local(self) -> str:
        return self.address.split("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.split("@", 1)[1]

    def with_token(self, token: str) -> str:
        """The address replies come from, which routes the next message back."""
        return f"{self.local}+{token}@{self.domain}"

    def token_of(self, addr: str) -> str | None:
        """The plus-address token in ``addr`` if it is this agent's address with one."""
        local, _, domain = addr.lower().partition("@")
        base, plus, token = local.partition("+")
        if domain != self.domain or base != self.local or not plus:
            return None
        return token

    def owns(self, addr: str) -> bool:
        """Whether ``addr`` is this agent's address, with or without a token."""
        local, _, domain = addr.lower().partition("@")
        return domain == self.domain and local.partition("+")[0] == self.local


def new_token() -> str:
    """A thread's plus-address token: random, lower-case base32 (case-insensitive mail)."""
    import base64

    return base64.b32encode(secrets.token_bytes(TOKEN_BYTES)).decode().lower().rstrip("=")


@dataclass(frozen=True)
class Thread:
    """An email thread and the session that answers it."""

    session_id: str
    token: str
    participants: tuple[str, ...]
    replies: int = 0


@dataclass(frozen=True)
class Decision:
    """What to do with one inbound message."""

    action: Literal["new", "continue", "refuse"]
    thread: Thread | None = None
    """The thread it continues (``continue``)."""
    reason: Refusal | None = None

    @property
    def detail(self) -> str:
        return REFUSALS.get(self.reason or "", "")


def loop_reason(msg: Inbound, agent: Agent) -> Refusal | None:
    """Why ``msg`` must get no automatic reply (RFC 3834 §2 and common practice), if so."""
    h = msg.headers
    auto = h.get("auto-submitted", "").split(";", 1)[0].strip().lower()
    if auto and auto != "no":
        return "auto_submitted"
    if "x-auto-response-suppress" in h:
        return "auto_response_suppress"
    if h.get("precedence", "").strip().lower() in _BULK:
        return "precedence"
    if "list-id" in h:
        return "list"
    if msg.return_path == "":
        return "null_sender"
    for addr in (msg.sender, msg.return_path or ""):
        if addr.split("@", 1)[0].split("+", 1)[0] in _SYSTEM_SENDERS:
            return "system_sender"
    if agent.owns(msg.sender) or (msg.return_path and agent.owns(msg.return_path)):
        return "own_address"
    return None


def tokens(msg: Inbound, agent: Agent) -> list[str]:
    """The plus-address tokens the message was sent to."""
    return [t for t in (agent.token_of(a) for a in msg.recipients) if t is not None]


def thread_ids(msg: Inbound) -> list[str]:
    """The ids a reply points at, nearest first (``In-Reply-To``, then ``References``
    from the newest), at most ``MAX_REFERENCES + 1``: kit's replies carry no more, so a
    thread is found among them, and each is a lookup."""
    nearest = [*msg.in_reply_to[:MAX_REFERENCES], *reversed(msg.references[-MAX_REFERENCES:])]
    return list(dict.fromkeys(nearest))[: MAX_REFERENCES + 1]


def decide(
    msg: Inbound,
    agent: Agent,
    *,
    seen: bool,
    by_token: Thread | None,
    by_reference: Thread | None,
    authenticated: bool | None = None,
) -> Decision:
    """Route ``msg``.

    The caller looks up: ``seen`` (its Message-ID was taken before), ``by_token`` (the
    thread of the first token in :func:`tokens`, None when there is no token or it is
    unknown), ``by_reference`` (the thread of the first of :func:`thread_ids` kit knows).
    ``authenticated`` is the source's verdict on the sender (False: it failed; None: the
    source gives none, as kit dev's local SMTP server).
    """
    if not msg.sender:
        return Decision("refuse", reason="malformed")
    if authenticated is False:
        return Decision("refuse", reason="unauthenticated")
    loop = loop_reason(msg, agent)
    if loop is not None:
        return Decision("refuse", reason=loop)
    if not any(agent.owns(a) for a in msg.recipients):
        return Decision("refuse", reason="not_addressed")
    if seen:
        return Decision("refuse", reason="duplicate")
    if tokens(msg, agent):
        if by_token is None:
            return Decision("refuse", reason="unknown_token")
        return _continue(msg, by_token)
    if by_reference is not None:
        return _continue(msg, by_reference)
    if _empty(msg):
        return Decision("refuse", reason="empty")
    return Decision("new")


def _continue(msg: Inbound, thread: Thread) -> Decision:
    if msg.sender not in thread.participants:
        return Decision("refuse", reason="not_participant")
    if thread.replies >= MAX_REPLIES_PER_THREAD:
        return Decision("refuse", reason="thread_cap")
    if _empty(msg):
        return Decision("refuse", reason="empty")
    return Decision("continue", thread=thread)


def _empty(msg: Inbound) -> bool:
    return not strip_quotes(msg.text) and not msg.attachments


def capped_references(ids: Iterable[str]) -> list[str]:
    """``References`` for a reply: at most :data:`MAX_REFERENCES`, keeping the first (the
    thread's root) and the newest."""
    refs = list(dict.fromkeys(ids))
    if len(refs) <= MAX_REFERENCES:
        return refs
    return [refs[0], *refs[-(MAX_REFERENCES - 1) :]]
