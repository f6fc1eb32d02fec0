"""The host's client for a runtime's HTTP API (:mod:`kit.protocol.sandbox`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from kit.host.errors import SandboxError
from kit.protocol.errors import ProtocolError
from kit.protocol.sandbox import INTERRUPT_PATH, NDJSON, TURNS_PATH, RuntimeEvent, TurnRequest

TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)


class SandboxGone(SandboxError):
    """The runtime stopped answering mid-turn (it died or its connection broke)."""


class RuntimeClient:
    """Talks to one sandbox's runtime at ``unix:/path`` or ``http://host:port``."""

    def __init__(self, endpoint: str, token: str) -> None:
        # No TLS on a Unix socket or plain-HTTP endpoint: skip loading a CA bundle, which
        # costs ~20 ms of event-loop time per client.
        if endpoint.startswith("unix:"):
            transport = httpx.AsyncHTTPTransport(uds=endpoint.removeprefix("unix:"), verify=False)
            base = "http://sandbox"
        else:
            transport = httpx.AsyncHTTPTransport(verify=endpoint.startswith("https:"))
            base = endpoint
        self._client = httpx.AsyncClient(
            base_url=base,
            transport=transport,
            timeout=TIMEOUT,
            headers={"authorization": f"Bearer {token}"},
        )

    async def stream_turn(self, request: TurnRequest) -> AsyncIterator[RuntimeEvent]:
        """Run a turn; yield its events. :class:`SandboxGone` if the runtime goes away."""
        try:
            async with self._client.stream(
                "POST",
                TURNS_PATH,
                content=request.to_json(),
                headers={"content-type": "application/json"},
            ) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")[:300]
                    raise SandboxError(
                        f"The runtime refused the turn ({response.status_code}): {body}"
                    )
                if not response.headers.get("content-type", "").startswith(NDJSON):
                    raise SandboxError(
                        "The runtime answered a turn with something other than NDJSON."
                    )
                async for line in response.aiter_lines():
                    if line.strip():
                        yield RuntimeEvent.from_line(line)
        except (httpx.TransportError, ProtocolError) as exc:
            raise SandboxGone(f"The sandbox stopped answering: {type(exc).__name__}.") from exc

    async def interrupt(self) -> None:
        """Ask the runtime to stop the running turn."""
        try:
            await self._client.post(INTERRUPT_PATH)
        except httpx.TransportError as exc:
            raise SandboxGone(f"The sandbox stopped answering: {type(exc).__name__}.") from exc

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
