"""An in-memory :class:`SessionStore`: the SDK's own, plus kit's ``uuid`` idempotency."""

from __future__ import annotations

from claude_agent_sdk import InMemorySessionStore
from claude_agent_sdk.types import SessionKey, SessionStoreEntry


class MemorySessionStore(InMemorySessionStore):
    """A supported backend for tests and single-process use; gone when the process exits."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str, str], set[str]] = {}

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append entries, ignoring uuids already stored under ``key``."""
        seen = self._seen.setdefault(
            (key["project_key"], key["session_id"], key.get("subpath") or ""), set()
        )
        fresh = []
        for entry in entries:
            uid = entry.get("uuid")
            if isinstance(uid, str) and uid:
                if uid in seen:
                    continue
                seen.add(uid)
            fresh.append(entry)
        if fresh or not entries:
            await super().append(key, fresh)
        else:
            await super().append(key, [])

    async def delete(self, key: SessionKey) -> None:
        """Delete a key (a main key cascades) and forget its uuids."""
        await super().delete(key)
        pk, sid, sub = key["project_key"], key["session_id"], key.get("subpath")
        for k in list(self._seen):
            if k[0] == pk and k[1] == sid and (sub is None or k[2] == sub):
                del self._seen[k]
