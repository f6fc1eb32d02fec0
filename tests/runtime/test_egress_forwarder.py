"""The runtime's end of egress: the loopback forwarder piped to the host's egress proxy,
the proxy settings the CLI gets, and a real runtime whose CLI and tools go out through it."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from kit.bundle import build_bundle, load_project
from kit.host.egress import EgressProxy
from kit.host.proxy import ModelProxy
from kit.host.runtime_client import RuntimeClient, wait_ready
from kit.ids import SessionId, new_session_id
from kit.protocol.runtime_api import RuntimeEvent, TurnRequest
from kit.protocol.runtime_config import CONFIG_ENV, RuntimeConfig
from kit.runtime.agent import Agent
from kit.runtime.egress_forwarder import Forwarder, proxy_env
from tests.agents import write_agent
from tests.conftest import serve_on_loopback
from tests.loopback import HTTP_BODY, Upstream, echo_server, http_server

TIMEOUT_S = 10.0
TURN_TIMEOUT_S = 120.0


@dataclass
class Rig:
    """A host egress proxy on a Unix socket and a forwarder in front of it."""

    proxy: EgressProxy
    forwarder: Forwarder
    token: str
    echo: Upstream
    http: Upstream


@pytest.fixture
async def rig(kit_tmp: Path) -> AsyncIterator[Rig]:
    """Egress proxy admitting the echo and HTTP servers, and a started forwarder."""
    async with echo_server() as echo, http_server() as http:
        proxy = EgressProxy([f"127.0.0.1:{echo.port}", f"127.0.0.1:{http.port}"])
        await proxy.serve_unix(kit_tmp / "egress.sock")
        forwarder = Forwarder(f"unix:{kit_tmp / 'egress.sock'}")
        await forwarder.start()
        try:
            yield Rig(proxy, forwarder, proxy.issue(SessionId("s")), echo, http)
        finally:
            await forwarder.aclose()
            await proxy.aclose()


async def test_a_tunnel_goes_through_forwarder_and_proxy(rig: Rig) -> None:
    """CONNECT over the loopback forwarder reaches the listed server; bytes flow both ways
    and a half-close travels the whole chain."""
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.forwarder.port)
    credential = base64.b64encode(f"kit:{rig.token}".encode()).decode()
    writer.write(
        f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n"
        f"Proxy-Authorization: Basic {credential}\r\n\r\n".encode()
    )
    async with asyncio.timeout(TIMEOUT_S):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        payload = os.urandom(256 * 1024)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        assert await reader.read() == payload
    assert rig.echo.accepted == 1
    writer.close()


async def test_an_http_client_uses_the_proxy_url(rig: Rig) -> None:
    """A stock HTTP client given proxy_url() (credentials in the URL) gets the listed
    server's answer, and a server off the list is refused with 403."""
    async with httpx.AsyncClient(proxy=rig.forwarder.proxy_url(rig.token)) as http:
        ok = await http.get(f"http://127.0.0.1:{rig.http.port}/from/sandbox")
        refused = await http.get(f"http://127.0.0.1:{rig.forwarder.port}/")
    assert (ok.status_code, ok.content) == (200, HTTP_BODY)
    assert rig.http.heads[0].startswith(b"GET /from/sandbox HTTP/1.1\r\n")
    assert refused.status_code == 403
    assert "kit.toml" in refused.text


async def test_a_missing_proxy_socket_is_a_clear_502(kit_tmp: Path) -> None:
    """With the host proxy's socket absent the client gets 502 saying so, not a hang."""
    forwarder = Forwarder(f"unix:{kit_tmp / 'absent.sock'}")
    await forwarder.start()
    try:
        async with httpx.AsyncClient(proxy=forwarder.proxy_url("t")) as http:
            r = await http.get("http://127.0.0.1:9/")
        assert r.status_code == 502
        assert "egress proxy cannot be reached" in r.text
    finally:
        await forwarder.aclose()


def _config(kit_tmp: Path, **extra: object) -> RuntimeConfig:
    return RuntimeConfig(
        session_id=str(new_session_id()),
        bundle_dir=kit_tmp,
        workspace=kit_tmp,
        home=kit_tmp,
        tmp_dir=kit_tmp,
        store_url="memory://",
        listen="unix:/r.sock",
        model_base_url="http://localhost",
        model_unix_socket="/m.sock",
        model_token="m",
        runtime_token="r",
        **extra,  # type: ignore[arg-type]
    )


async def test_the_sdk_env_carries_the_proxy_only_when_configured(kit_tmp: Path) -> None:
    """With an egress proxy the CLI gets all four proxy variables and NO_PROXY=localhost
    (its model calls to http://localhost stay on the Unix socket); without, none of them."""
    bundle = build_bundle(load_project(write_agent(kit_tmp / "agent")), kit_tmp / "bundles")
    url = "http://kit:tok@127.0.0.1:4242"
    with_proxy = await Agent(_config(kit_tmp), bundle, egress_proxy=url).options()
    without = await Agent(_config(kit_tmp), bundle).options()
    assert with_proxy.env == {**without.env, **proxy_env(url)}
    assert {with_proxy.env[k] for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy")} == {url}
    assert with_proxy.env["NO_PROXY"] == with_proxy.env["no_proxy"] == "localhost"
    assert not {k for k in without.env if k.lower().endswith("_proxy")}


async def test_a_model_proxy_on_tcp_is_reached_through_localhost() -> None:
    """A forwarder to a TCP target answers at http://localhost:<port> on both loopback
    addresses (where the sandbox has IPv6) and pipes requests there unchanged: so the CLI
    reaches a model proxy on another host through ``localhost``, and NO_PROXY names nothing
    else (a tool's request to that host goes through the egress proxy)."""
    async with http_server() as target:
        forwarder = Forwarder(f"http://127.0.0.1:{target.port}")
        await forwarder.start()
        try:
            assert forwarder.url == f"http://localhost:{forwarder.port}"
            hosts = ["127.0.0.1"]
            if socket.has_ipv6 and _has_ipv6_loopback():
                hosts.append("[::1]")
            async with httpx.AsyncClient() as http:
                for host in hosts:
                    answer = await http.get(f"http://{host}:{forwarder.port}/v1/messages")
                    assert (answer.status_code, answer.content) == (200, HTTP_BODY)
        finally:
            await forwarder.aclose()
    assert [h.split(b"\r\n")[0] for h in target.heads] == [b"GET /v1/messages HTTP/1.1"] * len(
        hosts
    )
    assert proxy_env("http://kit:t@127.0.0.1:1")["NO_PROXY"] == "localhost"


def _has_ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


EGRESS_SCENARIO = r"""
[[rule]]
name = "fetch through egress"
match = 'fetch (\S+) and (\S+)'
[[rule.step]]
tool = "Bash"
input = { command = "curl -sS --max-time 20 {match[1]}; echo; curl -sS --max-time 20 {match[2]}; echo; env | grep -i _proxy= | cut -d= -f1 | sort | tr '\\n' ' '", description = "fetch" }
[[rule.step]]
text = "Fetched:\n{tool_result}"
"""


async def test_a_real_runtime_sends_its_tools_through_the_proxy(kit_tmp: Path) -> None:
    """A runtime started with egress settings reaches the model over its Unix socket (the
    proxy variables do not take it over) while the agent's Bash tool reaches a listed server
    through the forwarder and the host proxy and is refused an unlisted one."""
    async with http_server() as listed, http_server() as unlisted:
        project = write_agent(
            kit_tmp / "agent", extra_toml=f'egress = ["127.0.0.1:{listed.port}"]\n'
        )
        (project / "scenarios" / "test.toml").write_text(EGRESS_SCENARIO)
        bundle = build_bundle(load_project(project), kit_tmp / "bundles")
        assert bundle.egress == (f"127.0.0.1:{listed.port}",)
        model_app = create_model_app(
            ScenarioSource.from_paths([project / "scenarios"]), api_key="offline-key"
        )
        async with serve_on_loopback(model_app) as model_url:
            model = ModelProxy(model_url, "offline-key")
            egress = EgressProxy(bundle.egress)
            await model.serve_unix(kit_tmp / "model.sock")
            await egress.serve_unix(kit_tmp / "egress.sock")
            try:
                events = await _one_turn(
                    kit_tmp,
                    bundle.path,
                    model,
                    egress,
                    f"fetch http://127.0.0.1:{listed.port}/from-sandbox "
                    f"and http://127.0.0.1:{unlisted.port}/nope",
                )
            finally:
                await egress.aclose()
                await model.aclose()
    kinds = [e.kind for e in events]
    assert kinds[-1] == "result", kinds
    (result,) = [str(e.data["content"]) for e in events if e.kind == "tool_result"]
    assert HTTP_BODY.decode() in result
    assert "[sandbox] egress in kit.toml" in result
    assert "HTTPS_PROXY HTTP_PROXY NO_PROXY http_proxy https_proxy no_proxy" in result
    assert [h.split(b"\r\n")[0] for h in listed.heads] == [b"GET /from-sandbox HTTP/1.1"]
    assert unlisted.accepted == 0
    assert model.requests_forwarded >= 2  # the tool call and the reply after it


async def _one_turn(
    kit_tmp: Path, bundle_dir: Path, model: ModelProxy, egress: EgressProxy, text: str
) -> list[RuntimeEvent]:
    """Start ``python -m kit.runtime`` with egress settings, run one turn, stop it."""
    session = new_session_id()
    dirs = {name: kit_tmp / name for name in ("workspace", "home", "tmp")}
    for path in dirs.values():
        path.mkdir()
    config = RuntimeConfig(
        session_id=session,
        bundle_dir=bundle_dir,
        workspace=dirs["workspace"],
        home=dirs["home"],
        tmp_dir=dirs["tmp"],
        store_url=f"sqlite:///{kit_tmp / 'transcript.sqlite'}",
        listen=f"unix:{kit_tmp / 'runtime.sock'}",
        model_base_url="http://localhost",
        model_unix_socket=str(kit_tmp / "model.sock"),
        model_token=model.issue(session),
        runtime_token="runtime-token",
        egress_url=f"unix:{kit_tmp / 'egress.sock'}",
        egress_token=egress.issue(session),
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    config_file = kit_tmp / "config.json"
    config_file.write_text(config.to_json())
    with (kit_tmp / "runtime.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kit.runtime",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**env, "HOME": str(dirs["home"]), CONFIG_ENV: str(config_file)},
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            client = RuntimeClient(config.listen, "runtime-token")
            ready = await wait_ready(client, lambda: proc.returncode is None, TURN_TIMEOUT_S)
            assert ready, (kit_tmp / "runtime.log").read_text()[-3000:]
            assert not config_file.exists()  # the runtime deleted its tokens once read
            events = [
                event
                async for batch in client.stream_turn(TurnRequest("t1", text))
                for event in batch
            ]
            await client.aclose()
        return events
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
