"""SMTP out: replies handed to a relay (the Fly gateway's ``deliver``), with ``aiosmtplib``.

The relay is one URL, a Fly secret (``KIT_SMTP_RELAY``)::

    smtp://USER:PASSWORD@HOST[:587]    STARTTLS, required (a loopback host: used if offered)
    smtps://USER:PASSWORD@HOST[:465]   TLS from the first byte
    smtp://HOST:25?tls=none            no TLS at all: only with ?tls=none, which says so

User and password are percent-decoded; without them the relay is used without ``AUTH``.
The envelope sender is the reply's ``From`` address (the thread's plus address), so a
bounce comes back to the agent, where the loop rules drop it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from kit.loopback import is_loopback_host
from kit.mail.errors import MailChannelError
from kit.mail.store import OutboxEntry

SEND_TIMEOUT_S = 60.0


class RelayError(MailChannelError):
    """``KIT_SMTP_RELAY`` is not a relay kit can use; the message says what to write."""


@dataclass(frozen=True)
class Relay:
    """Where replies go (read from ``KIT_SMTP_RELAY`` by :func:`parse_relay`)."""

    host: str
    port: int
    implicit_tls: bool
    starttls: bool | None
    """True: required; None: if the relay offers it; False: never."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """The relay for logs and banners: no password."""
        tls = (
            "TLS"
            if self.implicit_tls
            else {True: "STARTTLS", None: "STARTTLS if offered"}.get(self.starttls, "no TLS")
        )
        who = f"{self.username}@" if self.username else ""
        return f"{who}{self.host}:{self.port} ({tls})"

    async def deliver(self, entry: OutboxEntry) -> None:
        """Hand one reply to the relay; raises when it did not take it."""
        import aiosmtplib

        await aiosmtplib.send(
            entry.raw,
            sender=entry.sender,
            recipients=[entry.to],
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.implicit_tls,
            start_tls=self.starttls,
            timeout=SEND_TIMEOUT_S,
        )


def parse_relay(url: str) -> Relay:
    """Read a relay URL (see the module docstring); :class:`RelayError` names the fix."""
    parts = urlsplit(url.strip())
    shown = f"{parts.scheme}://{parts.hostname or ''}"  # never the password
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise RelayError(
            f"KIT_SMTP_RELAY={shown!r}: give smtp://USER:PASSWORD@HOST:587 (STARTTLS) or "
            "smtps://USER:PASSWORD@HOST:465 (TLS)."
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"tls"}
    if unknown or query.get("tls", "none") != "none":
        raise RelayError(f"KIT_SMTP_RELAY={shown!r}: the only option is ?tls=none.")
    try:
        port = parts.port
    except ValueError:
        raise RelayError(f"KIT_SMTP_RELAY={shown!r}: the port is not a number.") from None
    host = parts.hostname
    implicit = parts.scheme == "smtps"
    plain = query.get("tls") == "none"
    if implicit and plain:
        raise RelayError(f"KIT_SMTP_RELAY={shown!r}: smtps:// is TLS; drop ?tls=none.")
    starttls: bool | None
    starttls = False if implicit or plain else None if is_loopback_host(host) else True
    return Relay(
        host=host,
        port=port or (465 if implicit else 587),
        implicit_tls=implicit,
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
