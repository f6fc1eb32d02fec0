"""The app end to end: real uvicorn on port 0, a real httpx client, and the real bundled CLI."""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ResultMessage,
    ToolUseBlock,
    query,
)
from starlette.applications import Starlette
from starlette.routing import Route

import emulator.model
from emulator.model import ScenarioSource, create_app
from emulator.model.app import RequestLog, redacted
from emulator.model.sse import decode_events

SCENARIO = """
[[rule]]
name = "bash"
contains = "run bash"
[[rule.step]]
text = "Running it."
tool = "Bash"
input = { command = "echo hi-from-bash", description = "Say hi" }
[[rule.step]]
text = "Done: {tool_result}"

[[rule]]
contains = "overload"
[[rule.step]]
error = { status = 529, message = "Overloaded" }

[[rule]]
contains = "slow"
[[rule.step]]
text = "never sent"
delay_ms = 600000

[[rule]]
contains = "trickle"
[[rule.step]]
text = "one two three four"
chunk_chars = 4
chunk_delay_ms = 150
"""

KEY = {"x-api-key": "placeholder"}


def request(text: str, *, stream: bool = True) -> dict[str, Any]:
    """A Messages API request body with one user message."""
    return {
        "model": "claude-test-1",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }


class ReadyServer(uvicorn.Server):
    """A uvicorn server that sets :attr:`ready` once it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then say so."""
        await super().startup(sockets)
        self.ready.set()


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port with uvicorn; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = ReadyServer(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(10):
            await server.ready.wait()
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


def scenario_app(tmp_path: Path, text: str = SCENARIO) -> Starlette:
    """The app answering from one scenario file written under ``tmp_path``."""
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    return create_app(ScenarioSource.from_paths([path]), api_key=KEY["x-api-key"])


def test_public_api_is_pinned() -> None:
    """The package exports exactly its documented names."""
    assert sorted(emulator.model.__all__) == [
        "ApiError",
        "Check",
        "OfflineModelError",
        "Rule",
        "Scenario",
        "ScenarioError",
        "ScenarioSource",
        "Step",
        "create_app",
        "load_scenario_file",
    ]


def test_request_log_keeps_the_newest() -> None:
    """The log forgets the oldest entries past its limit."""
    log = RequestLog(limit=3)
    for n in range(5):
        log.add({"n": n})
    assert log.entries() == [{"n": 2}, {"n": 3}, {"n": 4}]
    log.clear()
    assert log.entries() == []


async def test_streams_a_tool_round_trip(tmp_path: Path) -> None:
    """A streamed reply has SSE headers, echoes the model and carries the tool call."""
    async with serve(scenario_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client:
        async with client.stream(
            "POST", "/v1/messages?beta=true", json=request("please run bash"), headers=KEY
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = [chunk async for chunk in response.aiter_text()]
        events = decode_events("".join(chunks))
        assert events[0].data["message"]["model"] == "claude-test-1"
        assert events[0].data["message"]["id"].startswith("msg_emu_")
        assert events[-2].data["delta"]["stop_reason"] == "tool_use"
        tool = [e.data["content_block"] for e in events if e.name == "content_block_start"][1]
        assert (tool["name"], tool["id"][:10]) == ("Bash", "toolu_emu_")


async def test_answers_without_streaming(tmp_path: Path) -> None:
    """stream=false gets one JSON message; Bearer credentials work too."""
    async with serve(scenario_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/messages",
            json=request("hello", stream=False),
            headers={"authorization": f"Bearer {KEY['x-api-key']}"},
        )
        body = response.json()
        assert (response.status_code, body["type"], body["stop_reason"]) == (
            200,
            "message",
            "end_turn",
        )
        assert body["content"][0]["text"].endswith("You said: hello")
        assert body["usage"]["input_tokens"] > 0


async def test_stream_is_not_buffered(tmp_path: Path) -> None:
    """message_start arrives before a long delay_ms ends, and hanging up stops the reply."""
    async with serve(scenario_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client:
        with anyio.fail_after(20):
            async with client.stream(
                "POST", "/v1/messages", json=request("slow please"), headers=KEY
            ) as response:
                received = ""
                async for chunk in response.aiter_text():
                    received += chunk
                    if "\n\n" in received:
                        break
            assert [e.name for e in decode_events(received)] == ["message_start"]
    # Leaving `serve` waits for the server to stop; it would hang on a 600 s sleep.


async def test_chunk_delay_spaces_the_deltas(tmp_path: Path) -> None:
    """chunk_delay_ms: the deltas of a step arrive apart, not in one burst."""
    async with serve(scenario_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client:
        arrivals: list[float] = []
        received = ""
        with anyio.fail_after(20):
            async with client.stream(
                "POST", "/v1/messages", json=request("trickle"), headers=KEY
            ) as response:
                async for chunk in response.aiter_text():
                    received += chunk
                    arrivals += [time.monotonic()] * chunk.count("content_block_delta\n")
    deltas = [e for e in decode_events(received) if e.name == "content_block_delta"]
    assert "".join(e.data["delta"]["text"] for e in deltas) == "one two three four"
    assert len(arrivals) == len(deltas) >= 4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.1


@pytest.mark.parametrize(
    ("headers", "content", "status", "kind"),
    [
        ({}, json.dumps(request("hi")), 401, "authentication_error"),
        ({"x-api-key": ""}, json.dumps(request("hi")), 401, "authentication_error"),
        ({"authorization": "Bearer"}, json.dumps(request("hi")), 401, "authentication_error"),
        ({"authorization": "Basic abc"}, json.dumps(request("hi")), 401, "authentication_error"),
        ({"x-api-key": "wrong"}, json.dumps(request("hi")), 401, "authentication_error"),
        ({"authorization": "Bearer wrong"}, json.dumps(request("hi")), 401, "authentication_error"),
        (KEY, "{not json", 400, "invalid_request_error"),
        (KEY, json.dumps({"model": "m"}), 400, "invalid_request_error"),
        (
            KEY,
            json.dumps({"model": "m", "messages": [{"role": "user"}]}),
            400,
            "invalid_request_error",
        ),
        (KEY, '{"model": "m", "messages": [], "x": NaN}', 400, "invalid_request_error"),
        (KEY, json.dumps(request("overload now")), 529, "overloaded_error"),
    ],
)
async def test_errors_have_anthropics_shape(
    tmp_path: Path, headers: dict[str, str], content: str, status: int, kind: str
) -> None:
    """Bad credentials, bad bodies and scripted errors answer {"type":"error","error":{...}}."""
    async with serve(scenario_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/messages", content=content, headers=headers)
        body = response.json()
        assert (response.status_code, body["type"], body["error"]["type"]) == (
            status,
            "error",
            kind,
        )
        assert body["error"]["message"]
        if status == 529:
            assert body["error"]["message"] == "Overloaded"
            assert response.headers["x-should-retry"] == "false"


async def test_side_routes(tmp_path: Path) -> None:
    """healthz, count_tokens and unknown /v1 paths answer like the real service."""
    async with serve(scenario_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/healthz", headers=KEY)).json() == {"ok": True}
        body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
        tokens = await client.post("/v1/messages/count_tokens?beta=true", json=body, headers=KEY)
        assert 100 <= tokens.json()["input_tokens"] <= 120
        missing = await client.get("/v1/models", headers=KEY)
        assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")


async def test_request_log(tmp_path: Path) -> None:
    """/_emulator/requests lists path, query, lowercased headers (credentials redacted) and
    body; DELETE clears it."""
    async with serve(scenario_app(tmp_path)) as url, httpx.AsyncClient(base_url=url) as client:
        await client.post(
            "/v1/messages?beta=true",
            json=request("hi", stream=False),
            headers={"X-Api-Key": KEY["x-api-key"], "Anthropic-Beta": "b1"},
        )
        await client.get("/healthz", headers=KEY)
        (entry,) = (await client.get("/_emulator/requests", headers=KEY)).json()
        assert (entry["path"], entry["query"]) == ("/v1/messages", "beta=true")
        assert (entry["headers"]["x-api-key"], entry["headers"]["anthropic-beta"]) == (
            redacted(KEY["x-api-key"]),
            "b1",
        )
        assert entry["body"] == request("hi", stream=False)
        assert (await client.delete("/_emulator/requests", headers=KEY)).status_code == 200
        assert (await client.get("/_emulator/requests", headers=KEY)).json() == []


async def test_every_route_wants_the_key(tmp_path: Path) -> None:
    """Walking every route of the app (and a path it does not have): without the emulator's
    key (none, or a wrong one) each method of each is 401, and a refused request is not
    logged: the log holds every session's prompts, and DELETE would wipe it."""
    app = scenario_app(tmp_path)
    walked = [
        (method, route.path.replace("{rest:path}", "models"))
        for route in app.routes
        if isinstance(route, Route)
        for method in sorted(route.methods or {"GET"})
    ]
    assert ("DELETE", "/_emulator/requests") in walked
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        await client.post("/v1/messages", json=request("hi", stream=False), headers=KEY)
        for method, path in [*walked, ("GET", "/nowhere")]:
            for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
                refused = await client.request(method, path, json=request("x"), headers=headers)
                assert refused.status_code == 401, (method, path, headers)
                if method != "HEAD":
                    assert refused.json()["error"]["type"] == "authentication_error"
        kept = (await client.get("/_emulator/requests", headers=KEY)).json()
        assert [entry["body"] for entry in kept] == [request("hi", stream=False)]


async def test_scenario_edits_apply_without_restart(tmp_path: Path) -> None:
    """Editing the scenario file changes the next reply; breaking it gives a 500 naming the file."""
    app = scenario_app(tmp_path, '[[rule]]\n[[rule.step]]\ntext = "first"\n')
    path = tmp_path / "scenario.toml"

    def edit(text: str) -> None:
        path.write_text(text, encoding="utf-8")
        stamp = path.stat().st_mtime_ns + 1_000_000_000
        os.utime(path, ns=(stamp, stamp))

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        body = request("hi", stream=False)
        reply = await client.post("/v1/messages", json=body, headers=KEY)
        assert reply.json()["content"][0]["text"] == "first"
        edit('[[rule]]\n[[rule.step]]\ntext = "second"\n')
        reply = await client.post("/v1/messages", json=body, headers=KEY)
        assert reply.json()["content"][0]["text"] == "second"
        edit("[[rule]]\n[[rule.step]]\ntxt = 1\n")
        broken = await client.post("/v1/messages", json=body, headers=KEY)
        assert broken.status_code == 500
        assert broken.headers["x-should-retry"] == "false"
        assert str(path) in broken.json()["error"]["message"]


@pytest.mark.slow
async def test_real_cli_runs_a_scripted_bash_round(tmp_path: Path) -> None:
    """The bundled claude CLI, pointed at the app, runs Bash and gets the scripted final reply."""
    (tmp_path / "tmp").mkdir()
    scenario = tmp_path / "scenarios"
    scenario.mkdir()
    app = scenario_app(scenario)
    async with serve(app) as url:
        options = ClaudeAgentOptions(
            env={
                "ANTHROPIC_BASE_URL": url,
                "ANTHROPIC_API_KEY": "placeholder",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_TELEMETRY": "1",
                "HOME": str(tmp_path),
                "CLAUDE_CONFIG_DIR": str(tmp_path / ".claude"),
                "TMPDIR": str(tmp_path / "tmp"),
                # We run as root in CI; the CLI refuses bypassPermissions as root without it.
                "IS_SANDBOX": "1",
            },
            cwd=str(tmp_path),
            setting_sources=[],
            allowed_tools=["Bash"],
            permission_mode="bypassPermissions",
            max_turns=4,
        )
        tools: list[str] = []
        results: list[ResultMessage] = []
        with anyio.fail_after(120):
            async for message in query(prompt="please run bash", options=options):
                if isinstance(message, AssistantMessage):
                    tools += [b.name for b in message.content if isinstance(b, ToolUseBlock)]
                elif isinstance(message, ResultMessage):
                    results.append(message)
    assert tools == ["Bash"]
    (result,) = results
    assert not result.is_error
    assert result.result is not None
    assert "Done: hi-from-bash" in result.result
