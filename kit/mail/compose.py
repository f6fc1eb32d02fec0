"""The reply to an inbound message: threaded, marked as automatic, unique id."""

from __future__ import annotations

import email.utils
import hashlib
import re
from email.message import EmailMessage
from email.policy import SMTP, Policy

from kit.mail.message import Inbound, one_line
from kit.mail.rules import Agent, capped_references

_RE = re.compile(r"^\s*(re|aw|sv)\s*:", re.I)


def reply_subject(subject: str) -> str:
    """``Re: subject``, without stacking ``Re:``."""
    subject = one_line(subject)
    if _RE.match(subject):
        return subject
    return f"Re: {subject}" if subject else "Re: your message"


def reply_message_id(inbound_id: str, agent: Agent) -> str:
    """The reply's ``Message-ID`` (no brackets): derived from the inbound id, so a reply
    sent again after a crash carries the same id and receivers drop the copy."""
    digest = hashlib.sha256(inbound_id.encode()).hexdigest()[:32]
    return f"kit-{digest}@{agent.domain}"


def reply_references(msg: Inbound) -> list[str]:
    """``References`` of the reply: the inbound's (or its ``In-Reply-To``) then its id."""
    parent = list(msg.references) or list(msg.in_reply_to[:1])
    return capped_references([*parent, msg.message_id])


def compose_reply(
    msg: Inbound, agent: Agent, token: str, answer: str, *, date: float | None = None
) -> EmailMessage:
    """The reply to ``msg`` carrying ``answer``, from the thread's plus address."""
    reply = EmailMessage(policy=SMTP)
    reply["From"] = email.utils.formataddr((agent.name, agent.with_token(token)))
    reply["To"] = email.utils.formataddr((one_line(msg.sender_name), msg.sender))
    reply["Subject"] = reply_subject(msg.subject)
    reply["Date"] = email.utils.formatdate(date, usegmt=True)
    reply["Message-ID"] = f"<{reply_message_id(msg.message_id, agent)}>"
    reply["In-Reply-To"] = _IdList("In-Reply-To", [msg.message_id])
    reply["References"] = _IdList("References", reply_references(msg))
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Auto-Response-Suppress"] = "All"
    reply.set_content(answer if answer.endswith("\n") else answer + "\n")
    return reply


class _IdList(str):
    """An ``In-Reply-To``/``References`` value, folded only between ids.

    The email package folds a long header by turning what does not fit into RFC 2047
    encoded words, which mail clients (and Cloudflare's ``reply()``) do not read as message
    ids: an 80-character Outlook id would break the thread. Ids are printable ASCII of at
    most ``MAX_ID_CHARS`` (:func:`kit.mail.message.message_ids`), so a line stays under
    RFC 5322's 998.
    """

    name: str

    def __new__(cls, name: str, ids: list[str]) -> _IdList:
        value = super().__new__(cls, " ".join(f"<{i}>" for i in ids))
        value.name = name
        return value

    def fold(self, *, policy: Policy) -> str:
        lines = [f"{self.name}:"]
        for token in self.split(" "):
            if len(lines[-1]) + 1 + len(token) > 78 and lines[-1] != f"{self.name}:":
                lines.append("")
            lines[-1] += " " + token
        return policy.linesep.join(lines) + policy.linesep
