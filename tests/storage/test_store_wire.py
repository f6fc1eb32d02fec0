"""The store's wire as kit's Python host serves it (kit/host/store_routes.py): every call
of tests/storage/golden/store_wire.jsonl, in order, gets its status and body. The shim's
DO replays the same file (worker_shim/test/store.test.ts), so both answer alike."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette

from kit.host.store_routes import store_routes
from kit.ids import new_session_id
from kit.storage import MemorySessionStore
from tests.storage.golden_store import cases, matches

TOKEN = "kit-session-token"
AUTH = {
    "own": {"authorization": f"Bearer {TOKEN}"},
    "wrong": {"authorization": "Bearer kit-store-wrong"},
    "basic": {"authorization": f"Basic {TOKEN}"},
    "none": {},
}


def _content(case: dict[str, Any]) -> bytes:
    if "raw" in case:
        return str(case["raw"]).encode()
    if "raw_hex" in case:
        return bytes.fromhex(case["raw_hex"])
    return httpx.Request("POST", "/", json=case["body"]).read()


async def test_the_golden_calls_answer_as_written() -> None:
    """Each call's status and JSON body are the golden file's. (Broken on purpose once:
    with SUBPATH.match, which lets a trailing newline through, the subpath case got 200.)"""
    own = new_session_id()
    names = {"session": str(own), "other": str(new_session_id())}
    app = Starlette(routes=store_routes("/s", MemorySessionStore(), {TOKEN.encode(): own}.get))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://host"
    ) as http:
        for case in cases("store_wire", names):
            answer = await http.post(
                f"/s/{case['call']}", content=_content(case), headers=AUTH[case["auth"]]
            )
            ok = matches(case["answer"], answer.json())
            assert (answer.status_code, ok) == (case["status"], True), (
                case["case"],
                answer.text,
            )
