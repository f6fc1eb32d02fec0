"""Transcripts that do not depend on where the sandbox runs.

The Agent SDK files a transcript under ``project_key_for_directory(cwd)``, so a resume only
finds it from the same absolute working directory. A kit session moves: from one `kit dev`
state dir to another, from a dead Fly Machine to a new one on another gateway, between
targets. :class:`PortableKeys` files every transcript of the store under one fixed project
key instead; the session id (a UUID) already tells sessions apart.
"""

from __future__ import annotations

from typing import Any

from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

PROJECT_KEY = "kit"
"""The project key of every transcript kit stores."""


class PortableKeys:
    """Wraps any ``SessionStore``: every key's ``project_key`` becomes :data:`PROJECT_KEY`."""

    def __init__(self, inner: Any, project_key: str = PROJECT_KEY) -> None:
        self.inner = inner
        self.project_key = project_key

    def _key(self, key: SessionKey) -> SessionKey:
        fixed: SessionKey = {"project_key": self.project_key, "session_id": key["session_id"]}
        if key.get("subpath"):
            fixed["subpath"] = key["subpath"]
        return fixed

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append under the fixed project key."""
        await self.inner.append(self._key(key), entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Load from the fixed project key."""
        result: list[SessionStoreEntry] | None = await self.inner.load(self._key(key))
        return result

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Every session of the store (there is one project)."""
        result: list[SessionStoreListEntry] = await self.inner.list_sessions(self.project_key)
        return result

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """Every summary of the store (there is one project)."""
        result: list[SessionSummaryEntry] = await self.inner.list_session_summaries(
            self.project_key
        )
        return result

    async def delete(self, key: SessionKey) -> None:
        """Delete under the fixed project key."""
        await self.inner.delete(self._key(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """Subagent transcripts under the fixed project key."""
        result: list[str] = await self.inner.list_subkeys(
            {"project_key": self.project_key, "session_id": key["session_id"]}
        )
        return result
