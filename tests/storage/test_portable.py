"""Transcripts filed under one project key, whatever directory the sandbox ran in."""

from __future__ import annotations

from claude_agent_sdk import project_key_for_directory

from kit.storage import MemorySessionStore
from kit.storage.portable import PROJECT_KEY, PortableKeys


async def test_a_transcript_is_found_from_another_directory() -> None:
    inner = MemorySessionStore()
    store = PortableKeys(inner)
    here = project_key_for_directory("/srv/host-a/sandboxes/s1/workspace")
    there = project_key_for_directory("/workspace")
    assert here != there
    await store.append({"project_key": here, "session_id": "s1"}, [{"type": "user", "uuid": "u1"}])
    await store.append(
        {"project_key": here, "session_id": "s1", "subpath": "subagents/agent-1"},
        [{"type": "user", "uuid": "u2"}],
    )
    assert await store.load({"project_key": there, "session_id": "s1"}) == [
        {"type": "user", "uuid": "u1"}
    ]
    assert await store.list_subkeys({"project_key": there, "session_id": "s1"}) == [
        "subagents/agent-1"
    ]
    assert [s["session_id"] for s in await store.list_sessions(there)] == ["s1"]
    assert await inner.load({"project_key": PROJECT_KEY, "session_id": "s1"}) is not None
    await store.delete({"project_key": there, "session_id": "s1"})
    assert await store.load({"project_key": here, "session_id": "s1"}) is None
