"""A loopback SMTP relay that keeps what it is given: ``kit dev --target fly``'s stand-in for
the relay replies are sent through (``KIT_SMTP_RELAY``), and the tests' witness of what a
mail client would receive. It runs in the event loop (``loop.create_server``, no thread),
takes any recipient, and logs in with one user and password."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hmac
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Relayed:
    """One message the relay took."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes = field(repr=False)

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def text(self) -> str:
        """The plain-text body, as a mail client shows it."""
        body = self.message.get_body(("plain",))
        return "" if body is None else str(body.get_content())


class RelaySink:
    """Keeps every message in :attr:`received` (and, given ``folder``, as ``NNNN.eml``)."""

    def __init__(self, user: str, password: str, folder: Path | None = None) -> None:
        self.user = user
        self._password = password
        self.folder = folder
        self.received: list[Relayed] = []
        self._arrived = asyncio.Event()

    async def until(self, done: Callable[[list[Relayed]], bool], timeout_s: float) -> None:
        """Wait until ``done(received)`` holds (checked as each message arrives), or
        :class:`TimeoutError` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not done(self.received):
                self._arrived.clear()
                await self._arrived.wait()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        item = Relayed(envelope.mail_from or "", tuple(envelope.rcpt_tos), data)
        self.received.append(item)
        self._arrived.set()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{len(self.received):04d}.eml").write_bytes(data)
        return "250 2.0.0 relayed (kit's loopback relay keeps it)"

    def _check(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            ok = hmac.compare_digest(data.login, self.user.encode()) and hmac.compare_digest(
                data.password, self._password.encode()
            )
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    def protocol(self) -> SMTP:
        """An SMTP protocol instance for ``loop.create_server``."""
        with warnings.catch_warnings():  # AUTH without TLS: on loopback, on purpose
            warnings.simplefilter("ignore", UserWarning)
            return SMTP(
                self,
                hostname="kit-relay",
                data_size_limit=MAX_BYTES,
                enable_SMTPUTF8=True,
                authenticator=self._check,
                auth_required=True,
                auth_require_tls=False,  # loopback only
                ident="kit loopback relay",
            )
