"""`kit gateway` as a container runs it: settings from the environment, proxies on TCP with
per-session tokens, a real client's turn, SIGTERM → sockets closed with 1001 and exit 0;
a bad setting → one line naming it, exit 1, nothing written."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest

from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from kit.cli.gateway import gateway_settings
from kit.cli.settings import SettingsError
from kit.client import SessionClient, create_session
from kit.durability import Durability
from tests.agents import write_agent
from tests.conftest import serve_on_loopback
from tests.host.wsdriver import Driver
from tests.kitproc import spawn_kit, start_gateway
from tests.loopback import HTTP_BODY, http_server
from tests.runtime.test_egress_forwarder import EGRESS_SCENARIO

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
TURN_TIMEOUT_S = 120.0
TOKEN = "gateway-test-token-0123456789"
MODEL_KEY = "offline-key"


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without proxy settings or a model key, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("ANTHROPIC_API_KEY", None)
    return {**env, **extra}


async def _start(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    """Start `kit gateway` and read the URL from its one ready line."""
    return await start_gateway(env, REPO, START_TIMEOUT_S)


async def test_a_turn_goes_through_tcp_proxies_and_sigterm_closes_with_1001(
    kit_tmp: Path,
) -> None:
    """A real client creates a session and runs one turn whose Bash tool fetches a listed
    server through the egress proxy on TCP (an unlisted one refused), the model reached
    through the model proxy on TCP; SIGTERM closes the client's socket with 1001 and the
    gateway exits 0."""
    async with http_server() as listed, http_server() as unlisted:
        project = write_agent(
            kit_tmp / "agent", extra_toml=f'egress = ["127.0.0.1:{listed.port}"]\n'
        )
        (project / "scenarios" / "test.toml").write_text(EGRESS_SCENARIO)
        model_app = create_model_app(
            ScenarioSource.from_paths([project / "scenarios"]), api_key=MODEL_KEY
        )
        async with serve_on_loopback(model_app) as model_url:
            env = _env(
                KIT_LISTEN="127.0.0.1:0",
                KIT_API_TOKEN=TOKEN,
                KIT_PROJECT=str(project),
                KIT_STATE_DIR=str(kit_tmp / "state"),
                ANTHROPIC_API_KEY=MODEL_KEY,
                KIT_MODEL_UPSTREAM=model_url,
                # The targets' own address: nothing on the proxies' host may go direct
                # (NO_PROXY is only localhost; an unisolated sandbox could connect).
                KIT_PROXY_LISTEN="127.0.0.1",
                KIT_SANDBOX_ISOLATION="off",
                # Unconfined, another user could not reach a clone in a private folder.
                KIT_SANDBOX_USER="",
                KIT_SANDBOX_POOL="0",
            )
            proc, url = await _start(env)
            try:
                async with httpx.AsyncClient() as http:
                    health = await http.get(f"{url}/healthz")
                assert health.status_code == 200
                info = await create_session(url, TOKEN)
                async with (
                    asyncio.timeout(TURN_TIMEOUT_S),
                    SessionClient(info.ws_url, info.token) as client,
                ):
                    events = [
                        e
                        async for e in client.turn(
                            f"fetch http://127.0.0.1:{listed.port}/from-sandbox "
                            f"and http://127.0.0.1:{unlisted.port}/nope"
                        )
                    ]
                assert events[-1].kind == "result", events[-1]
                answer = str(events[-1].data["text"])
                assert HTTP_BODY.decode() in answer
                assert "[sandbox] egress in kit.toml" in answer
                assert [h.split(b"\r\n")[0] for h in listed.heads] == [
                    b"GET /from-sandbox HTTP/1.1"
                ]
                assert unlisted.accepted == 0
                driver = await Driver.open(info.ws_url)
                await driver.send({"type": "hello", "token": info.token, "last_seq": None})
                assert (await driver.recv())["resume"] == "resuming"
                proc.send_signal(signal.SIGTERM)
                assert await driver.close_code() == 1001
                assert await asyncio.wait_for(proc.wait(), 30) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


@pytest.mark.parametrize(
    ("unset", "extra", "named"),
    [
        ("KIT_API_TOKEN", {}, "KIT_API_TOKEN"),
        ("ANTHROPIC_API_KEY", {}, "ANTHROPIC_API_KEY"),
        ("", {"KIT_LISTEN": "8080"}, "KIT_LISTEN"),
        ("", {"KIT_SANDBOX": "kubernetes"}, "KIT_SANDBOX"),
        ("", {"KIT_SANDBOX_POOL": "lots"}, "KIT_SANDBOX_POOL"),
        ("", {"KIT_PROXY_LISTEN": "sockets/here"}, "KIT_PROXY_LISTEN"),
        ("", {"KIT_PROXY_LISTEN": "/no/such/folder"}, "KIT_PROXY_LISTEN"),
        ("", {"KIT_LISTEN": "127.0.0.1:{busy}"}, "KIT_LISTEN"),
        ("KIT_PROJECT", {}, "KIT_BUNDLE"),
        ("", {"KIT_SANDBOX": "fly"}, "KIT_FLY_SANDBOX_APP"),
        (
            "",
            {
                "KIT_SANDBOX": "fly",
                "KIT_FLY_SANDBOX_APP": "a",
                "FLY_API_TOKEN": "t",
                "FLY_PRIVATE_IP": "127.0.0.1",
                "KIT_BUCKET_URL": "s3://b/logs",
            },
            "KIT_BUCKET_URL",
        ),
    ],
)
async def test_a_bad_setting_is_one_line_and_exit_1(
    kit_tmp: Path, unset: str, extra: dict[str, str], named: str
) -> None:
    """Each missing or bad setting: exit 1, one stderr line naming the variable, and the
    state dir never made."""
    state = kit_tmp / "state"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    env = _env(
        KIT_API_TOKEN=TOKEN,
        KIT_PROJECT=str(REPO / "skills" / "support-bot"),
        KIT_STATE_DIR=str(state),
        ANTHROPIC_API_KEY=MODEL_KEY,
        **{k: v.replace("{busy}", str(port)) for k, v in extra.items()},
    )
    env.pop(unset, None)
    proc = await spawn_kit(
        "gateway",
        cwd=kit_tmp,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    busy.close()
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert out == b""
    assert not state.exists()


def test_settings_are_read_once_into_a_frozen_object(kit_tmp: Path) -> None:
    """A folder KIT_PROXY_LISTEN means unix sockets, a host means TCP; a folder
    KIT_LOG_URL is a SQLite log folder; kit dev's variables parse as kit dev's, but
    KIT_DURABILITY defaults to fsync here."""
    base = {
        "KIT_API_TOKEN": TOKEN,
        "KIT_BUNDLE": str(kit_tmp / "bundle"),
        "KIT_STATE_DIR": str(kit_tmp / "state"),
        "ANTHROPIC_API_KEY": MODEL_KEY,
        "KIT_SANDBOX_GRACE_S": "7",
    }
    (kit_tmp / "run").mkdir()
    unix = gateway_settings({**base, "KIT_PROXY_LISTEN": str(kit_tmp / "run")})
    assert unix.proxy_dir == kit_tmp / "run"
    assert unix.proxy_host is None
    assert unix.common.grace_s == 7
    assert unix.common.durability is Durability.FSYNC  # a production host's default
    relaxed = gateway_settings({**base, "KIT_DURABILITY": "os"})
    assert relaxed.common.durability is Durability.OS
    tcp = gateway_settings(
        {**base, "KIT_PROXY_LISTEN": "[::1]", "KIT_LOG_URL": str(kit_tmp / "logs")}
    )
    assert tcp.proxy_host == "::1"
    assert tcp.proxy_dir is None
    assert tcp.log_url is None
    assert tcp.log_dir == kit_tmp / "logs"
    assert (tcp.host, tcp.port) == ("127.0.0.1", 8787)
    with pytest.raises(SettingsError, match="KIT_SANDBOX_GRACE_S"):
        gateway_settings({**base, "KIT_SANDBOX_GRACE_S": "forever"})


async def test_a_second_gateway_on_the_same_state_dir_is_refused(kit_tmp: Path) -> None:
    """Two gateways on one state dir would share its host id, so the second one's reap at
    start would kill the first's sandboxes: it is refused in one line naming the fix, and
    the first serves on. (Broken on purpose once: without the lock the second started.)"""
    env = _env(
        KIT_LISTEN="127.0.0.1:0",
        KIT_API_TOKEN=TOKEN,
        KIT_PROJECT=str(REPO / "skills" / "support-bot"),
        KIT_STATE_DIR=str(kit_tmp / "state"),
        ANTHROPIC_API_KEY=MODEL_KEY,
        KIT_SANDBOX_ISOLATION="off",
        KIT_SANDBOX_USER="",
        KIT_SANDBOX_POOL="0",
    )
    first, url = await _start(env)
    try:
        second = await spawn_kit("gateway", cwd=REPO, env=env)
        _out, err = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 1
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "is using the state dir" in lines[0]
        assert "KIT_STATE_DIR" in lines[0]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/healthz")).status_code == 200
    finally:
        first.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.wait(), 30) == 0
