"""Email on a Fly gateway: signed inbound webhooks, the mail store in the bucket, SMTP out.

==============================  ===============================================================
variable (Fly secrets)          meaning
==============================  ===============================================================
``KIT_MAIL_WEBHOOK_SECRET``     kit's own signed webhook, ``POST /v1/mail/inbound``
                                (:mod:`kit.mail.webhook`); at least 16 characters
``KIT_MAILGUN_SIGNING_KEY``     Mailgun's webhook signing key: ``POST /v1/mail/mailgun``
``KIT_POSTMARK_USER``,          the credentials in Postmark's webhook URL:
``KIT_POSTMARK_PASSWORD``       ``POST /v1/mail/postmark``
``KIT_SMTP_RELAY``              where replies are sent (:mod:`kit.mail.relay`): required for
                                mail to be on
``KIT_MAIL_ADDRESS``            the agent's address when the bundle has no ``[mail] address``
                                (``kit dev --target fly`` sets ``NAME@localhost``)
``KIT_PUBLIC_URL``              where the channel reaches sessions, through Fly's proxy (so
                                that ``fly-replay`` finds each session's gateway):
                                ``https://$FLY_APP_NAME.fly.dev``
``KIT_MAIL_SWEEP_S``            how often a gateway looks for mail no gateway answered (a dead
                                one's): 30
==============================  ===============================================================

Mail is on when an address, a relay and at least one webhook secret are set; otherwise the
webhook routes answer 404 naming what is missing. The channel's state is in the bucket under
``mail/`` (:class:`~kit.mail.s3store.S3MailStore`), shared by every gateway: a message is
taken once and answered once whichever gateway it reaches, and a gateway that dies mid-turn
leaves its mail to the others' sweeps (or its own start).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from starlette.routing import Route

from kit.bundle import Bundle
from kit.cli.settings import SettingsError
from kit.mail.channel import MailChannel
from kit.mail.relay import Relay, RelayError, parse_relay
from kit.mail.routes import mail_routes
from kit.mail.rules import Agent
from kit.mail.s3store import S3MailStore
from kit.mail.webhook import PATHS, WebhookSecrets, webhook_routes
from kit.storage.s3io import S3Bucket

DEFAULT_SWEEP_S = 30.0
UNSENT_AGE_S = 900.0
"""A sweep sends again only replies made at least this long ago (longer than a gateway's
own tries take), so that a reply another gateway is sending now is not sent twice."""
MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class FlyMailSettings:
    """The mail part of a Fly gateway's settings (see the module docstring)."""

    secrets: WebhookSecrets
    relay: Relay | None
    public_url: str
    address: str | None
    sweep_s: float = DEFAULT_SWEEP_S


def fly_mail_settings(environ: Mapping[str, str]) -> FlyMailSettings:
    """Read them; :class:`SettingsError` names the variable and the fix (never its value)."""

    def get(name: str) -> str | None:
        return environ.get(name, "").strip() or None

    secret = get("KIT_MAIL_WEBHOOK_SECRET")
    if secret is not None and len(secret) < MIN_SECRET_CHARS:
        raise SettingsError(
            f"KIT_MAIL_WEBHOOK_SECRET is shorter than {MIN_SECRET_CHARS} characters; set it "
            "to a long random value, e.g. `openssl rand -hex 32`."
        )
    user, password = get("KIT_POSTMARK_USER"), get("KIT_POSTMARK_PASSWORD")
    if (user is None) != (password is None):
        raise SettingsError(
            "Set both KIT_POSTMARK_USER and KIT_POSTMARK_PASSWORD (the credentials in "
            "Postmark's webhook URL), or neither."
        )
    relay_url = get("KIT_SMTP_RELAY")
    try:
        relay = parse_relay(relay_url) if relay_url else None
    except RelayError as exc:
        raise SettingsError(str(exc)) from None
    public = get("KIT_PUBLIC_URL")
    if public is None:
        app = get("FLY_APP_NAME")
        public = f"https://{app}.fly.dev" if app else ""
    parts = urlsplit(public)
    if public and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise SettingsError(f"KIT_PUBLIC_URL={public!r}: give https://APP.fly.dev.")
    sweep = get("KIT_MAIL_SWEEP_S") or str(DEFAULT_SWEEP_S)
    try:
        sweep_s = float(sweep)
    except ValueError:
        sweep_s = -1.0
    if not 0.1 <= sweep_s <= 3600:
        raise SettingsError(f"KIT_MAIL_SWEEP_S={sweep!r}: give seconds from 0.1 to 3600.")
    return FlyMailSettings(
        secrets=WebhookSecrets(
            kit=secret,
            mailgun=get("KIT_MAILGUN_SIGNING_KEY"),
            postmark=(user, password) if user and password else None,
        ),
        relay=relay,
        public_url=urlunsplit((parts.scheme, parts.netloc, "", "", "")) if public else "",
        address=get("KIT_MAIL_ADDRESS"),
        sweep_s=sweep_s,
    )


class FlyMail:
    """The email channel of one Fly gateway: its routes (mount them before the gateway
    serves), then :meth:`running` once it does."""

    def __init__(
        self,
        settings: FlyMailSettings,
        bucket: S3Bucket,
        api_token: str,
        bundle: Callable[[], Bundle],
    ) -> None:
        self.settings = settings
        self.store = S3MailStore(S3Bucket(bucket.client, bucket.bucket, "mail"))
        self.bundle = bundle
        self.api_token = api_token
        self.channel: MailChannel | None = None
        self.off = self._off()
        if not self.off:
            relay = settings.relay
            assert relay is not None
            self.channel = MailChannel(
                self.store,
                self._agent(),
                settings.public_url,
                api_token,
                deliver=relay.deliver,
            )

    def _address(self) -> str | None:
        return self.bundle().mail_address or self.settings.address

    def _agent(self) -> Agent:
        address = self._address()
        assert address is not None
        return Agent(address, self.bundle().agent.name)

    def _off(self) -> str:
        """Why mail is off ("" when it is on)."""
        if not self.settings.secrets.any:
            return (
                "Mail is off: set the Fly secret KIT_MAIL_WEBHOOK_SECRET (or a provider's: "
                "KIT_MAILGUN_SIGNING_KEY, KIT_POSTMARK_USER and KIT_POSTMARK_PASSWORD); "
                "docs/email.md, Fly."
            )
        if self._address() is None:
            return "Mail is off: set [mail] address in kit.toml and deploy again."
        if self.settings.relay is None:
            return (
                "Mail is off: set the Fly secret KIT_SMTP_RELAY (smtp://USER:PASSWORD@HOST:587) "
                "so that replies can be sent; docs/email.md, Fly."
            )
        if not self.settings.public_url:
            return "Mail is off: set KIT_PUBLIC_URL (https://APP.fly.dev)."
        return ""

    def routes(self) -> list[Route]:
        """The webhooks and, when mail is on, ``/_kit/mail/outbox`` and ``refused``."""
        routes = webhook_routes(self.settings.secrets, lambda: self.channel, off=self.off)
        if self.channel is not None:
            routes += mail_routes(self.store, self.channel.agent.address, self.api_token)
        return routes

    @staticmethod
    def public_paths() -> tuple[str, ...]:
        return PATHS

    def new_deploy(self) -> None:
        """A deploy changed the bundle: its ``[mail] address`` is the agent's now."""
        if self.channel is not None and self._address() is not None:
            self.channel.agent = self._agent()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Answer what was left unanswered, sweep for it while the block runs, then stop
        waiting (what is pending stays for the next start or another gateway)."""
        channel = self.channel
        if channel is None:
            yield
            return
        await channel.start(unsent_age_s=UNSENT_AGE_S)
        sweeper = asyncio.create_task(channel.sweep(self.settings.sweep_s, UNSENT_AGE_S))
        try:
            yield
        finally:
            sweeper.cancel()
            await channel.close()
