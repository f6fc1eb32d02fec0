"""``kit deploy --target fly`` and ``kit destroy`` as a user runs them, against the Fly API
emulator and moto on loopback, the local Docker daemon as the registry."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulator.fly_api import InProcessRunner, Served, serve
from kit.cli.deploy import mail_note
from kit.cli.flydev import LOCAL_PAGE_VARIABLE
from kit.deploy.fly.target import FlyTarget
from tests.conftest import serve_on_loopback
from tests.deploy.test_fly_apply import healthy_app
from tests.kitproc import spawn_kit

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fly-cli-test-token"
APP = "kit-cli-deploy-test"


@pytest.fixture
async def fly_api() -> AsyncIterator[Served]:
    async with serve(token=TOKEN, runner=InProcessRunner()) as served:
        yield served


@pytest.fixture
async def public() -> AsyncIterator[str]:
    """Fly's proxy and the gateways' /healthz, stood in for (in-process machines serve
    nothing)."""
    async with serve_on_loopback(healthy_app()) as url:
        yield url


def _env(kit_tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    for key in ("ANTHROPIC_API_KEY", "FLY_API_TOKEN", "FLY_API_HOSTNAME", "KIT_API_TOKEN"):
        env.pop(key, None)
    return {**env, "KIT_STATE_DIR": str(kit_tmp / "state"), **extra}


async def _kit(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await spawn_kit(*args, cwd=REPO, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_deploy_plans_applies_does_nothing_twice_and_destroys(
    kit_tmp: Path, s3_endpoint: str, fly_api: Served, public: str
) -> None:
    """Dry run prints the plan and changes nothing; the deploy makes the gateways and
    prints the URL; a second deploy says nothing changes; destroy removes it all."""
    env = _env(
        kit_tmp,
        FLY_API_TOKEN=TOKEN,
        FLY_API_HOSTNAME=fly_api.url,
        KIT_FLY_REGISTRY="local",
        ANTHROPIC_API_KEY="sk-ant-test-not-real",
        AWS_ENDPOINT_URL_S3=s3_endpoint,
        AWS_REGION="us-east-1",
        KIT_FLY_PUBLIC_URL=public,
        AWS_ACCESS_KEY_ID="kit-test",
        AWS_SECRET_ACCESS_KEY="kit-test",
    )
    args = ("--target", "fly", "--project", "skills/support-bot", "--app", APP)
    code, out, err = await _kit("deploy", *args, "--dry-run", env=env)
    assert code == 0, err
    assert "create app" in out
    assert "create gateway machine" in out
    assert not fly_api.backend.apps.all()
    assert not (kit_tmp / "state" / f"fly-{APP}.json").exists()  # a dry run writes nothing
    code, out, err = await _kit("deploy", *args, env=env)
    assert code == 0, err
    assert f"https://{APP}.fly.dev" in out
    gateways = [m for m in fly_api.backend.machines.values() if m.app == APP]
    assert len(gateways) == 2
    # Only the rehearsal's gateways hand the page sessions without the API token.
    assert all(LOCAL_PAGE_VARIABLE not in m.config["env"] for m in gateways)
    assert (kit_tmp / "state" / f"fly-{APP}.json").stat().st_mode & 0o777 == 0o600
    code, out, err = await _kit("deploy", *args, env=env)
    assert code == 0, err
    assert "Nothing to change" in out
    saved = kit_tmp / "state" / f"fly-{APP}.json"
    token = saved.read_text()
    saved.unlink()  # another machine, which never knew the token
    code, out, err = await _kit("deploy", *args, env=env)
    assert code == 1
    assert "already has a host API token" in err
    saved.write_text(token)
    code, out, err = await _kit("destroy", *args, env=env)
    assert code == 1
    assert f"Would remove: app {APP}-sandboxes, app {APP}, bucket {APP}-kit" in out
    assert "--yes" in err
    assert len(fly_api.backend.apps.all()) == 2
    code, out, err = await _kit("destroy", *args, "--yes", env=env)
    assert code == 0, err
    assert f"app {APP}," in out
    assert f"bucket {APP}-kit" in out
    assert not fly_api.backend.apps.all()


@pytest.mark.parametrize(
    ("drop", "extra", "named"),
    [
        ("FLY_API_TOKEN", {}, "FLY_API_TOKEN is not set"),
        ("ANTHROPIC_API_KEY", {}, "ANTHROPIC_API_KEY is not set"),
        ("", {"FLY_API_HOSTNAME": "ftp://nowhere"}, "FLY_API_HOSTNAME"),
        ("", {"KIT_FLY_REGISTRY": "docker.io"}, "KIT_FLY_REGISTRY"),
        ("AWS_SECRET_ACCESS_KEY", {}, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("", {"KIT_SMTP_RELAY": "http://user:hunter2@smtp.example.com"}, "KIT_SMTP_RELAY"),
        ("", {"KIT_MAIL_WEBHOOK_SECRET": "short"}, "KIT_MAIL_WEBHOOK_SECRET"),
        ("", {"KIT_POSTMARK_USER": "pm"}, "KIT_POSTMARK_PASSWORD"),
    ],
)
async def test_a_missing_or_bad_setting_is_named_and_nothing_is_made(
    kit_tmp: Path, fly_api: Served, drop: str, extra: dict[str, str], named: str
) -> None:
    """One line naming the setting, exit 1, no app made and no token file written."""
    settings = {
        "FLY_API_TOKEN": TOKEN,
        "FLY_API_HOSTNAME": fly_api.url,
        "KIT_FLY_REGISTRY": "local",
        "ANTHROPIC_API_KEY": "sk-ant-test-not-real",
        "AWS_ACCESS_KEY_ID": "kit-test",
        "AWS_SECRET_ACCESS_KEY": "kit-test",
    }
    env = _env(kit_tmp, **{**settings, **extra})
    env.pop(drop, None)
    code, _out, err = await _kit(
        "deploy", "--target", "fly", "--project", "skills/support-bot", "--app", APP, env=env
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert "hunter2" not in err
    assert not fly_api.backend.apps.all()
    assert not (kit_tmp / "state" / f"fly-{APP}.json").exists()


async def test_without_a_project_nothing_is_deployed_or_destroyed(
    kit_tmp: Path, fly_api: Served
) -> None:
    """Outside an agent's folder (no kit.toml up the tree) and with no --project, deploy and
    destroy refuse, naming the fix, instead of acting on the bundled example."""
    env = _env(kit_tmp, FLY_API_TOKEN=TOKEN, FLY_API_HOSTNAME=fly_api.url)
    for command in ("deploy", "destroy"):
        proc = await spawn_kit(command, "--target", "fly", cwd=kit_tmp, env=env)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1
        assert "No kit.toml here" in err.decode()
    assert not fly_api.backend.apps.all()


def test_the_deploy_says_what_mail_needs() -> None:
    """With [mail] address, the deploy names the webhooks and any mail secret still
    missing; without it, it says nothing about mail."""
    target = FlyTarget(app="bot")
    assert mail_note(None, target, {"KIT_SMTP_RELAY"}) is None
    missing = mail_note("bot@example.com", target, set())
    assert missing is not None
    assert "https://bot.fly.dev/v1/mail/" in missing
    assert "KIT_MAIL_WEBHOOK_SECRET" in missing
    assert "KIT_SMTP_RELAY" in missing
    ready = mail_note("bot@example.com", target, {"KIT_MAILGUN_SIGNING_KEY", "KIT_SMTP_RELAY"})
    assert ready is not None
    assert "off until" not in ready
    assert "KIT_MAILGUN_SIGNING_KEY set" in ready
