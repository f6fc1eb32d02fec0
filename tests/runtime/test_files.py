"""``PUT /v1/files``: the host puts a file into the sandbox's workspace through the runtime
(email attachments on every target)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.protocol.runtime_api import MAX_FILE_BYTES
from kit.runtime.server import create_app
from tests.runtime.offline import offline_agent

AUTH = {"authorization": "Bearer r"}


@pytest.fixture
async def runtime(kit_tmp: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The runtime's app over a workspace at ``kit_tmp/workspace`` (its agent never starts:
    files need none)."""
    (kit_tmp / "workspace").mkdir()
    app: Any = create_app(offline_agent(kit_tmp, kit_tmp / "workspace"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
        yield http


async def test_a_file_is_written_under_the_workspace_and_replaced_whole(
    runtime: httpx.AsyncClient, kit_tmp: Path
) -> None:
    for data in (b"first\n", b"second, longer\n"):
        got = await runtime.put(
            "/v1/files", params={"path": "mail/ab12/a (2).txt"}, content=data, headers=AUTH
        )
        assert got.status_code == 204, got.text
    folder = kit_tmp / "workspace" / "mail" / "ab12"
    assert (folder / "a (2).txt").read_bytes() == b"second, longer\n"
    assert os.listdir(folder) == ["a (2).txt"]  # no temporary file left


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a//b",
        ".hidden",
        "a/.kit",
        "a\\b",
        "a\nb",
        "/".join("d" * 9),
        "x" * 256,
    ],
)
async def test_a_path_that_could_leave_the_workspace_is_refused(
    runtime: httpx.AsyncClient, kit_tmp: Path, path: str
) -> None:
    got = await runtime.put("/v1/files", params={"path": path}, content=b"x", headers=AUTH)
    assert got.status_code == 400
    assert "plain relative path" in got.json()["message"] or "parts" in got.json()["message"]
    assert os.listdir(kit_tmp / "workspace") == []


async def test_a_planted_link_is_never_written_through(
    runtime: httpx.AsyncClient, kit_tmp: Path
) -> None:
    """The agent owns its workspace and may plant links: a link where a folder goes is
    refused (409), a link at the file's name is replaced, not followed."""
    outside = kit_tmp / "outside"
    outside.mkdir()
    (kit_tmp / "workspace" / "mail").symlink_to(outside)
    got = await runtime.put("/v1/files", params={"path": "mail/a.txt"}, content=b"x", headers=AUTH)
    assert got.status_code == 409
    assert os.listdir(outside) == []
    (kit_tmp / "workspace" / "b.txt").symlink_to(outside / "target.txt")
    got = await runtime.put("/v1/files", params={"path": "b.txt"}, content=b"y", headers=AUTH)
    assert got.status_code == 204
    assert not (outside / "target.txt").exists()
    assert (kit_tmp / "workspace" / "b.txt").read_bytes() == b"y"


async def test_too_large_and_unauthenticated_puts_write_nothing(
    runtime: httpx.AsyncClient, kit_tmp: Path
) -> None:
    got = await runtime.put(
        "/v1/files", params={"path": "big"}, content=b"x" * (MAX_FILE_BYTES + 1), headers=AUTH
    )
    assert got.status_code == 413
    got = await runtime.put("/v1/files", params={"path": "a"}, content=b"x")
    assert got.status_code == 401
    assert os.listdir(kit_tmp / "workspace") == []
