"""A container reaches the loopback services its env names (the shim under ``wrangler
dev``), at the same URL, and nothing else of the host."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from emulator.containers.egress import EGRESS_TOKEN, EGRESS_URL
from emulator.containers.runner import loopback_ports
from emulator.loopback import serve_app
from tests.emulator.containers.conftest import Emu, python_image

FETCH = """
import os, sys, urllib.request
try:
    body = urllib.request.urlopen(os.environ["TARGET"], timeout=10).read()
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(7)
sys.exit(0 if b'"ok"' in body else 1)
"""


def test_loopback_ports_are_read_from_every_url_in_the_env() -> None:
    """Plain and JSON values, ``127.0.0.1`` and ``localhost``; once each; not other hosts."""
    env = {
        "A": "http://127.0.0.1:8787/store",
        "B": '{"model_base_url": "http://localhost:9000", "x": "kit+http://127.0.0.1:8787/s"}',
        "C": "https://api.anthropic.com:443/v1",
        "D": "not a url 127.0.0.1:5",
    }
    assert loopback_ports(env) == [8787, 9000]


async def test_a_loopback_url_in_the_env_is_reachable_inside(emu: Emu) -> None:
    """The container fetches the emulator's own ``/healthz`` at its host URL: exit 0."""
    await emu.start(
        "c1",
        image=python_image(),
        env={"TARGET": f"{emu.served.url}/healthz"},
        entrypoint=["python3", "-c", FETCH],
    )
    assert (await emu.monitor("c1")).json() == {"exit_code": 0, "oom": False}


async def test_a_port_the_env_does_not_name_is_unreachable(emu: Emu) -> None:
    """The same fetch with the URL hidden from the env's scan (built inside): refused."""
    port = emu.served.url.rsplit(":", 1)[1]
    await emu.start(
        "c1",
        image=python_image(),
        env={"TARGET_PORT": port},
        entrypoint=[
            "python3",
            "-c",
            "import os; os.environ['TARGET'] = 'http://127.0.0.1:' + os.environ['TARGET_PORT'] "
            "+ '/healthz'\n" + FETCH,
        ],
    )
    assert (await emu.monitor("c1")).json() == {"exit_code": 7, "oom": False}


INTERCEPTED = """
import sys, urllib.request
request = urllib.request.Request(
    "http://kit.internal/v1/sessions/s1/model/v1/a%2Fb?beta=true",
    data=b'{"hello": 1}', method="POST", headers={"x-api-key": "kit-model-1"},
)
try:
    answer = urllib.request.urlopen(request, timeout=20)
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(7)
sys.exit(0 if answer.read() == b"delivered" else 1)
"""


async def test_an_intercepted_containers_http_to_kit_internal_reaches_the_worker(
    emu: Emu,
) -> None:
    """After ``intercept``, kit.internal resolves inside the container and its request
    reaches the Worker's delivery URL with the token, the URL it asked for, its headers and
    body; the answer comes back. The relay answers no one else."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def worker(request: Request) -> Response:
        seen.append((request.url.path, dict(request.headers), await request.body()))
        return PlainTextResponse("delivered")

    app = Starlette(routes=[Route("/_egress/{id}", worker, methods=["POST"])])
    async with serve_app(app, host="127.0.0.1", port=0, what="worker", error=RuntimeError) as url:
        r = await emu.http.post(
            "/containers/c1/intercept", json={"url": f"{url}/_egress/c1", "token": "tok-1"}
        )
        assert r.status_code == 204, r.text
        await emu.start("c1", image=python_image(), entrypoint=["python3", "-c", INTERCEPTED])
        assert (await emu.monitor("c1")).json() == {"exit_code": 0, "oom": False}
    [(path, headers, body)] = seen
    assert path == "/_egress/c1"
    assert headers[EGRESS_TOKEN] == "tok-1"
    # The URL as the container wrote it (%2F is no slash), its body still sized, and
    # nothing of the relay's own HTTP client added.
    assert headers[EGRESS_URL] == "http://kit.internal/v1/sessions/s1/model/v1/a%2Fb?beta=true"
    assert headers["x-api-key"] == "kit-model-1"
    assert headers["content-length"] == "12"
    assert "transfer-encoding" not in headers
    assert "httpx" not in headers.get("user-agent", "")
    assert body == b'{"hello": 1}'
    # A connection from anywhere but an intercepted container's address is refused, also
    # one that claims to forward for it.
    relay = emu.served.backend.relay
    assert relay is not None
    async with httpx.AsyncClient(trust_env=False) as client:
        url = f"http://127.0.0.1:{relay.port}/"
        assert (await client.get(url)).status_code == 403
        spoof = {"x-forwarded-for": str(relay.source_of("c1"))}
        assert (await client.get(url, headers=spoof)).status_code == 403


async def test_intercept_wants_a_loopback_url_and_a_token(emu: Emu) -> None:
    """Bad input is a 400 naming the fix, and nothing is kept."""
    for body in (
        {"url": "http://10.0.0.1:8787/_egress/c1", "token": "t"},
        {"url": "https://127.0.0.1:8787/_egress/c1", "token": "t"},
        {"url": "http://127.0.0.1:8787/_egress/c1", "token": " "},
        {"url": 5, "token": "t"},
    ):
        r = await emu.http.post("/containers/c1/intercept", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"] in ("bad_url", "bad_token")
    assert emu.served.backend.interceptions == {}


async def test_intercept_without_docker_says_what_it_needs(local_emu: Emu) -> None:
    """The local runner shares the host's /etc/hosts: 501 naming Docker."""
    r = await local_emu.http.post(
        "/containers/c1/intercept", json={"url": "http://127.0.0.1:1/_egress/c1", "token": "t"}
    )
    assert r.status_code == 501
    assert "Docker" in r.json()["message"]
