"""The host's readiness probe against something that is not a well-behaved runtime."""

from __future__ import annotations

import asyncio

import pytest

from kit.host.errors import SandboxError
from kit.host.runtime_client import RuntimeClient, wait_ready


@pytest.mark.parametrize("answer", [b"garbage\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n"])
async def test_a_malformed_answer_is_not_ready_and_raises_nothing_else(answer: bytes) -> None:
    """Whatever answers on the runtime's endpoint (here: a status line with no code, or
    a bad one) is "not ready yet": the probe keeps trying until its timeout. Any other
    exception would leave the provider's just-started sandbox running with no owner."""
    seen = 0

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RuntimeClient(f"http://127.0.0.1:{port}", "token")
    try:
        with pytest.raises(SandboxError):
            await client.health()
        with pytest.raises(TimeoutError):
            await wait_ready(client, lambda: True, 0.3)
    finally:
        server.close()
        await server.wait_closed()
    assert seen >= 2


async def test_an_answer_for_another_session_is_never_ready() -> None:
    """Something else on the runtime's socket answering ``ready`` for another session (a
    leftover process of the sandbox user) is refused, not taken for the runtime. (Broken
    on purpose once: without the check the probe returned its answer.)"""
    body = b'{"ok": true, "ready": true, "session_id": "someone-else", "state": "ready"}'

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RuntimeClient(f"http://127.0.0.1:{port}", "token")
    try:
        with pytest.raises(SandboxError, match="answered for session 'someone-else'"):
            await wait_ready(client, lambda: True, 5.0, session_id="mine")
    finally:
        server.close()
        await server.wait_closed()
