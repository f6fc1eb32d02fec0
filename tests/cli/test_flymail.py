"""A Fly gateway's mail settings: read from Fly secrets, refused with the variable named (never
its value), and mail on only when an address, a relay and a webhook secret are all set."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from kit.bundle import build_bundle, load_project
from kit.cli.flymail import FlyMail, fly_mail_settings
from kit.cli.settings import SettingsError
from kit.storage.s3io import S3Bucket
from tests.agents import write_agent

SECRET = "0123456789abcdef0123"
RELAY = "smtp://kit:hunter2@127.0.0.1:2525"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"KIT_MAIL_WEBHOOK_SECRET": "short"}, "KIT_MAIL_WEBHOOK_SECRET"),
        ({"KIT_POSTMARK_USER": "pm"}, "KIT_POSTMARK_PASSWORD"),
        ({"KIT_SMTP_RELAY": "smtp://kit:hunter2@"}, "KIT_SMTP_RELAY"),
        ({"KIT_SMTP_RELAY": "smtp://kit:hunter2@h?tls=off"}, "KIT_SMTP_RELAY"),
        ({"KIT_PUBLIC_URL": "ftp://x"}, "KIT_PUBLIC_URL"),
        ({"KIT_MAIL_SWEEP_S": "0"}, "KIT_MAIL_SWEEP_S"),
    ],
)
def test_bad_mail_settings_are_named(environ: dict[str, str], named: str) -> None:
    """Each bad value is refused with its variable's name, and no secret in the message."""
    with pytest.raises(SettingsError) as caught:
        fly_mail_settings(environ)
    assert named in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_settings_read() -> None:
    """The public URL defaults to the app's fly.dev name; secrets are kept, not shown."""
    settings = fly_mail_settings(
        {"FLY_APP_NAME": "bot", "KIT_MAIL_WEBHOOK_SECRET": SECRET, "KIT_SMTP_RELAY": RELAY}
    )
    assert settings.public_url == "https://bot.fly.dev"
    assert settings.secrets.kit == SECRET
    assert settings.relay is not None
    assert settings.relay.port == 2525
    assert SECRET not in repr(settings)
    assert "hunter2" not in repr(settings)


def _mail(tmp: Path, environ: dict[str, str], extra_toml: str = "") -> FlyMail:
    bundle = build_bundle(load_project(write_agent(tmp / "a", extra_toml=extra_toml)), tmp / "b")
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1")
    settings = fly_mail_settings({"FLY_APP_NAME": "bot", **environ})
    return FlyMail(settings, S3Bucket(client, "unused"), "t" * 32, lambda: bundle)


def test_mail_is_on_only_with_everything_it_needs(kit_tmp: Path) -> None:
    """No secret, no address, no relay: off, saying which to set; all three: on, with the
    address from [mail] or KIT_MAIL_ADDRESS."""
    assert "KIT_MAIL_WEBHOOK_SECRET" in _mail(kit_tmp / "1", {"KIT_SMTP_RELAY": RELAY}).off
    no_address = _mail(kit_tmp / "2", {"KIT_MAIL_WEBHOOK_SECRET": SECRET, "KIT_SMTP_RELAY": RELAY})
    assert "[mail] address" in no_address.off
    assert no_address.channel is None
    no_relay = _mail(
        kit_tmp / "3", {"KIT_MAIL_WEBHOOK_SECRET": SECRET, "KIT_MAIL_ADDRESS": "bot@example.com"}
    )
    assert "KIT_SMTP_RELAY" in no_relay.off
    on = _mail(
        kit_tmp / "4",
        {"KIT_MAILGUN_SIGNING_KEY": "mg-key", "KIT_SMTP_RELAY": RELAY},
        extra_toml='[mail]\naddress = "help@example.com"\n',
    )
    assert on.off == ""
    assert on.channel is not None
    assert on.channel.agent.address == "help@example.com"
    assert on.channel.base_url == "https://bot.fly.dev"
