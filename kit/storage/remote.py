"""A transcript store the session host keeps for its sandboxes, reached over HTTP.

Each ``SessionStore`` call is ``POST <base>/<method>`` with a JSON body, authenticated
with a per-session token, to one of two servers that speak the same wire
(tests/storage/golden/store_wire.jsonl):

- ``kit+http://HOST:PORT/PATH``: kit's Python host (:mod:`kit.host.store_routes`) checks
  that every key is the token's session and forwards to its own store (an ``s3://`` bucket
  whose keys never leave the host). So a sandbox on another machine (a Fly Machine) keeps
  its transcript durable without holding any storage credentials, and can reach no
  session's transcript but its own. The token is the sandbox's session (model) token.
- ``do+https://HOST[:PORT]/v1/sessions/ID/store``: the Cloudflare shim's SessionDO keeps
  the transcript in its own SQLite (worker_shim/src/storeapi.ts, docs/protocol.md §13);
  the token is a store token the DO minted. ``do+http://`` is the same in clear text, for
  the local rehearsal on loopback (``wrangler dev``) or an address the platform intercepts.

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

SCHEMES = {"kit+http": "http", "do+https": "https", "do+http": "http"}
"""Each remote store URL scheme and the scheme its calls go over."""
FORMS = {
    "kit+http": "kit+http://HOST:PORT/PATH",
    "do+https": "do+https://HOST/v1/sessions/ID/store",
    "do+http": "do+http://HOST:PORT/v1/sessions/ID/store",
}
CALL_TIMEOUT_S = 30.0


def check_url(url: str) -> str:
    """The plain ``http(s)://`` base URL of a remote store URL (:data:`SCHEMES`);
    :class:`StoreError` shows the form to write."""
    parts = urlsplit(url)
    over = SCHEMES.get(parts.scheme)
    form = FORMS.get(parts.scheme, FORMS["kit+http"])
    try:
        port = parts.port
    except ValueError:
        raise StoreError(f"Store URL {url!r}: the port is not a number; write {form}.") from None
    if over is None or not parts.hostname or parts.query or parts.fragment:
        raise StoreError(f"Store URL {url!r}: write {form}.")
    if parts.scheme == "kit+http" and port is None:
        raise StoreError(f"Store URL {url!r}: write {form}.")
    return f"{over}://{parts.netloc}{parts.path}".rstrip("/")


class RemoteSessionStore:
    """A host's store over HTTP, for one session (see the module docstring)."""

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
