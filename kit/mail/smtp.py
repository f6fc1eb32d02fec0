"""``kit dev``'s SMTP server: mail to the agent, on loopback, in the host's event loop.

It takes mail only for the agent's addresses (``RCPT TO`` another is refused with 550) and
only from a client that logged in (``AUTH PLAIN``/``LOGIN``, any user name, the host's API
token as password: the same secret as every other route). Mail kit cannot read is refused
with 554 and the reason; mail the rules refuse (loops, non-participants) is accepted and
dropped, recorded as refused, because bouncing an automatic message feeds the loop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import warnings
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from kit.mail.channel import MailChannel
from kit.mail.message import MAX_INBOUND_BYTES, MailError

log = logging.getLogger("kit.mail")

# aiosmtpd warns on every connection that AUTH without TLS is risky (this server listens on
# loopback only), and on every login about its own deprecated Session.login_data.
warnings.filterwarnings("ignore", "Session.login_data is deprecated", DeprecationWarning)


class _QuietAuthWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "auth_require_tls == False" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietAuthWarning())

DEFAULT_SMTP_PORT = 2525
PORT_TRIES = 20


class _Handler:
    def __init__(self, channel: MailChannel) -> None:
        self.channel = channel

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self.channel.agent.owns(address):
            return (
                f"550 5.1.1 {address}: this server takes mail for {self.channel.agent.address} only"
            )
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        try:
            receipt = await self.channel.receive(
                data, envelope_from=envelope.mail_from or "", envelope_to=list(envelope.rcpt_tos)
            )
        except MailError as exc:
            return f"554 5.6.0 {exc}"
        if receipt.action == "refuse":
            return f"250 2.6.0 accepted, not answered: {receipt.detail}"
        return f"250 2.0.0 accepted for session {receipt.session_id}"


def _authenticator(api_token: str) -> Any:
    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            ok = hmac.compare_digest(auth_data.password, api_token.encode())
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    return check


async def serve_smtp(
    channel: MailChannel, api_token: str, host: str = "127.0.0.1", port: int | None = None
) -> asyncio.Server:
    """Listen for mail; ``port`` None: 2525 or the next free port above it, else exactly
    that port (0: any)."""
    loop = asyncio.get_running_loop()
    handler = _Handler(channel)

    def protocol() -> SMTP:
        with warnings.catch_warnings():  # AUTH without TLS: it listens on loopback only
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return _smtp()

    def _smtp() -> SMTP:
        return SMTP(
            handler,
            hostname="kit-dev",
            data_size_limit=MAX_INBOUND_BYTES,
            enable_SMTPUTF8=True,
            authenticator=_authenticator(api_token),
            auth_required=True,
            auth_require_tls=False,  # loopback only
            ident="kit dev SMTP",
        )

    candidates = (
        [port]
        if port is not None
        else [*range(DEFAULT_SMTP_PORT, DEFAULT_SMTP_PORT + PORT_TRIES), 0]
    )
    last: OSError | None = None
    for candidate in candidates:
        try:
            return await loop.create_server(protocol, host, candidate)
        except OSError as exc:
            last = exc
    raise OSError(f"cannot listen for mail on {host}: {last}")


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
