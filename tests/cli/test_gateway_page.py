"""The chat page on `kit gateway`: served at ``/`` with the bundle's ``[web] session_url``,
never handing out sessions without the API token; on Fly, only `kit dev --target fly`'s
rehearsal gateways do (``KIT_LOCAL_PAGE_ORIGIN``), and a real deploy's gateways cannot."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import boto3
import httpx
import pytest

from emulator.fly_api import InProcessRunner, serve
from kit.bundle import Bundle, build_bundle, load_project
from kit.bundle.archive import pack
from kit.cli.flydev import LOCAL_PAGE_VARIABLE
from kit.cli.gateway import fly_gateway_config, gateway_settings
from kit.cli.settings import SettingsError
from kit.deploy.fly.deploy import LISTEN, REHEARSAL_LISTEN, desired
from kit.deploy.fly.target import FlyTarget
from kit.host.web import public_paths
from tests.agents import write_agent
from tests.kitproc import start_gateway

REPO = Path(__file__).resolve().parents[2]
TOKEN = "gateway-test-token-0123456789"
SESSION_URL = "https://app.example.com/kit-session"
SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-not-real",
    "KIT_API_TOKEN": TOKEN,
    "FLY_API_TOKEN": "fly-token",
    "AWS_ACCESS_KEY_ID": "k",
    "AWS_SECRET_ACCESS_KEY": "s",
}
"""The gateway app's secrets, which Fly adds to a machine's environment."""
BUCKET_URL = "s3://kit-page-kit?endpoint_url=https%3A%2F%2Ffly.storage.tigris.dev"


def _bundle(kit_tmp: Path, url: str = SESSION_URL) -> Bundle:
    toml = f'\n[web]\nsession_url = "{url}"\n'
    project = write_agent(kit_tmp / url.split("/")[2], extra_toml=toml)
    return build_bundle(load_project(project), kit_tmp / "built")


def _proc_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("ANTHROPIC_API_KEY", None)
    return {**env, **extra}


def _machine_env(
    kit_tmp: Path, bundle: Bundle, *, listen: str, private_ip: str, **extra: str
) -> dict[str, str]:
    """What a gateway machine of this deploy runs with: the deploy's env, its secrets, and
    what Fly itself sets."""
    want = desired(
        FlyTarget(app="kit-page"),
        bundle,
        "registry.fly.io/kit-page:x",
        SECRETS,
        bucket_url=BUCKET_URL,
        listen=listen,
        extra_env=extra,
    )
    env = dict(want.gateway.get("env", {}))
    return {
        **env,
        **SECRETS,
        "FLY_PRIVATE_IP": private_ip,
        "FLY_MACHINE_ID": "gw1",
        "KIT_STATE_DIR": str(kit_tmp / "state"),
    }


def test_a_deployed_gateway_serves_no_sessions_without_the_token(kit_tmp: Path) -> None:
    """A real deploy's gateway (as ``kit deploy --target fly`` configures it, on
    ``[::]:8080``) serves the page naming the bundle's session URL, but not ``POST
    /web/session``; the rehearsal's gateways (on a loopback address, told the proxy's
    origin) do; and a deployed gateway given the rehearsal's variable refuses to start,
    naming it."""
    bundle = _bundle(kit_tmp)
    deployed = _machine_env(kit_tmp, bundle, listen=LISTEN, private_ip="fdaa:0:1::3")
    assert LOCAL_PAGE_VARIABLE not in deployed
    settings = gateway_settings(deployed)
    assert settings.fly is not None
    config = fly_gateway_config(settings, settings.fly, lambda: bundle)
    assert config.web is not None
    assert not config.web.local_sessions
    assert config.proxied_at is None
    assert "/web/session" not in public_paths(config.web)
    assert config.web.current_url() == SESSION_URL

    front = "http://127.0.0.1:41234"
    rehearsal = _machine_env(
        kit_tmp,
        bundle,
        listen=REHEARSAL_LISTEN,
        private_ip="127.3.0.2",
        **{LOCAL_PAGE_VARIABLE: front},
    )
    settings = gateway_settings(rehearsal)
    assert settings.fly is not None
    config = fly_gateway_config(settings, settings.fly, lambda: bundle)
    assert config.web is not None
    assert config.web.local_sessions
    assert config.proxied_at == front
    assert config.web.current_url() == "/web/session"

    with pytest.raises(SettingsError, match=f"{LOCAL_PAGE_VARIABLE} gives sessions"):
        gateway_settings({**deployed, LOCAL_PAGE_VARIABLE: front})


@pytest.mark.parametrize(
    ("value", "fly", "named"),
    [
        ("http://127.0.0.1:8080", False, "only on the gateways of kit dev --target fly"),
        ("https://127.0.0.1:8080", True, "give the loopback origin"),
        ("http://kit-page.fly.dev:8080", True, "give the loopback origin"),
        ("http://127.0.0.1", True, "give the loopback origin"),
        ("http://127.0.0.1:8080/page", True, "give the loopback origin"),
    ],
)
def test_a_bad_local_page_origin_is_named(kit_tmp: Path, value: str, fly: bool, named: str) -> None:
    """``KIT_LOCAL_PAGE_ORIGIN`` must be a loopback ``http`` origin with a port, on a
    Fly-mode gateway; anything else is one message naming it."""
    bundle = _bundle(kit_tmp)
    env = _machine_env(kit_tmp, bundle, listen=REHEARSAL_LISTEN, private_ip="127.3.0.2")
    if not fly:
        env = {**env, "KIT_SANDBOX": "local", "KIT_BUNDLE": str(bundle.path)}
    with pytest.raises(SettingsError, match=LOCAL_PAGE_VARIABLE) as raised:
        gateway_settings({**env, LOCAL_PAGE_VARIABLE: value})
    assert named in str(raised.value)


@pytest.mark.slow
async def test_kit_gateway_serves_the_page_with_the_bundles_session_url(kit_tmp: Path) -> None:
    """`kit gateway` serves the page without the token, its config naming the bundle's
    ``[web] session_url`` and its CSP letting the page call it; ``POST /web/session`` is
    not served, even for a same-origin page at a loopback name (401)."""
    bundle = _bundle(kit_tmp)
    env = _proc_env(
        KIT_LISTEN="127.0.0.1:0",
        KIT_API_TOKEN=TOKEN,
        KIT_BUNDLE=str(bundle.path),
        KIT_STATE_DIR=str(kit_tmp / "state"),
        ANTHROPIC_API_KEY="sk-ant-not-real",
        KIT_SANDBOX_ISOLATION="off",
        KIT_SANDBOX_USER="",
        KIT_SANDBOX_POOL="0",
    )
    proc, url = await start_gateway(env, REPO)
    try:
        here = url.removeprefix("http://")
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http:
            page = await http.get("/")
            assert page.status_code == 200
            assert '<script type="module" src="/web/app.js">' in page.text
            csp = page.headers["content-security-policy"]
            assert "connect-src 'self' https://app.example.com;" in csp
            assert (await http.get("/web/config.json")).json() == {"session_url": SESSION_URL}
            own = {"origin": f"http://{here}", "host": here, "sec-fetch-site": "same-origin"}
            assert (await http.post("/web/session", headers=own)).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


@pytest.mark.slow
async def test_the_fly_gateways_page_follows_the_deployed_bundle(
    kit_tmp: Path, s3_endpoint: str
) -> None:
    """A Fly-mode gateway's page names the deployed bundle's session URL; after a deploy
    points to a bundle with another one, the page's config and CSP name the new one with
    no restart; ``POST /web/session`` is not served."""
    first, second = _bundle(kit_tmp), _bundle(kit_tmp, "https://two.example.com/s")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = "kit-page-follow"
    s3.create_bucket(Bucket=bucket)
    for bundle in (first, second):
        s3.put_object(Bucket=bucket, Key=f"bundles/{bundle.digest}.tar", Body=pack(bundle))

    def point_to(bundle: Bundle) -> None:
        pointer = {"bundle": bundle.digest, "image": "kit-runtime:x", "deployed_at": 0}
        s3.put_object(Bucket=bucket, Key="deploy/current.json", Body=json.dumps(pointer))

    point_to(first)
    async with serve(token="fly-token", runner=InProcessRunner()) as fly_api:
        env = _proc_env(
            KIT_SANDBOX="fly",
            KIT_FLY_SANDBOX_APP="kit-page-sandboxes",
            FLY_API_TOKEN="fly-token",
            FLY_API_HOSTNAME=fly_api.url,
            KIT_BUCKET_URL=f"s3://{bucket}?endpoint_url={s3_endpoint}&region=us-east-1",
            FLY_PRIVATE_IP="127.0.0.1",
            FLY_MACHINE_ID="gw-page-1",
            KIT_LISTEN="${FLY_PRIVATE_IP}:0",
            KIT_API_TOKEN=TOKEN,
            ANTHROPIC_API_KEY="sk-ant-not-real",
            KIT_STATE_DIR=str(kit_tmp / "state"),
            AWS_ACCESS_KEY_ID="kit-test",
            AWS_SECRET_ACCESS_KEY="kit-test",
        )
        proc, url = await start_gateway(env, REPO)
        try:
            async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http:
                config = (await http.get("/web/config.json")).json()
                assert config == {"session_url": SESSION_URL}
                csp = (await http.get("/")).headers["content-security-policy"]
                assert "connect-src 'self' https://app.example.com;" in csp
                assert (await http.post("/web/session")).status_code == 401
                point_to(second)
                for _ in range(240):  # the gateway reads the pointer every 5 s
                    config = (await http.get("/web/config.json")).json()
                    if config["session_url"] != SESSION_URL:
                        break
                    await asyncio.sleep(0.25)
                assert config == {"session_url": "https://two.example.com/s"}
                csp = (await http.get("/")).headers["content-security-policy"]
                assert "connect-src 'self' https://two.example.com;" in csp
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
