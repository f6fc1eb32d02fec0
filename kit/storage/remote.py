"""A transcript store the session host keeps for its sandboxes, reached over HTTP.

``kit+http://HOST:PORT/PATH``: each ``SessionStore`` call is ``POST /PATH/<method>`` with a
JSON body, authenticated with the sandbox's own session token; the host
(:mod:`kit.host.store_routes`) checks that every key is the token's session and forwards
to its own store (an ``s3://`` bucket whose keys never leave the host). So a sandbox on
another machine (a Fly Machine) keeps its transcript durable without holding any storage
credentials, and can reach no session's transcript but its own.

Errors: 5xx answers and calls that got no answer are :class:`StoreUnavailable` (the
runtime's :class:`~kit.storage.retrying.RetryingStore` rides them out); any other refusal is
:class:`StoreError` with the host's message.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from kit.storage.errors import StoreError, StoreUnavailable

SCHEME = "kit+http"
CALL_TIMEOUT_S = 30.0


def check_url(url: str) -> str:
    """The ``http://`` base URL of a ``kit+http://HOST:PORT/PATH`` store URL."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or not parts.hostname or parts.port is None:
        raise StoreError(f"Store URL {url!r}: write {SCHEME}://HOST:PORT/PATH.")
    return url.removeprefix("kit+").rstrip("/")


class RemoteSessionStore:
    """The host's store, for one session (see the module docstring)."""

    def __init__(self, url: str, token: str, *, transport: httpx.AsyncBaseTransport | None = None):
        self.base = check_url(url)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=5.0),
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
            trust_env=False,  # straight to the host, never through the egress proxy
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, body: dict[str, Any]) -> Any:
        try:
            answer = await self._http.post(f"{self.base}/{method}", json=body)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"The session host's store did not answer ({exc!r}).") from exc
        if answer.status_code >= 500:  # an outage of the host or its store: retried
            raise StoreUnavailable(
                f"The session host's store answered {answer.status_code}: {answer.text[:200]}"
            )
        try:
            data = answer.json()
        except ValueError:
            data = {}
        if answer.status_code != 200:
            message = data.get("message") if isinstance(data, dict) else None
            raise StoreError(
                f"The session host refused {method} ({answer.status_code}): "
                f"{message or answer.text[:200]}"
            )
        return data.get("result") if isinstance(data, dict) else None

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        await self._call("append", {"key": dict(key), "entries": entries})

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        result = await self._call("load", {"key": dict(key)})
        return list(result) if isinstance(result, list) else None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        result = await self._call("list_sessions", {"project_key": project_key})
        return list(result or [])

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        result = await self._call("list_session_summaries", {"project_key": project_key})
        return list(result or [])

    async def delete(self, key: SessionKey) -> None:
        await self._call("delete", {"key": dict(key)})

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        result = await self._call("list_subkeys", {"key": dict(key)})
        return [str(s) for s in result or []]
