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
        "a\x85b",  # NEL, a C1 control character
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


async def test_a_name_of_255_bytes_is_written(runtime: httpx.AsyncClient, kit_tmp: Path) -> None:
    """The longest name a path may have (255 bytes, here in two-byte letters) is written:
    the temporary file beside it needs a name of its own that fits."""
    name = "é" * 127 + "x"
    got = await runtime.put("/v1/files", params={"path": f"d/{name}"}, content=b"z", headers=AUTH)
    assert got.status_code == 204, got.text
    assert os.listdir(kit_tmp / "workspace" / "d") == [name]


async def test_a_file_where_a_folder_is_is_refused_and_leaves_nothing(
    runtime: httpx.AsyncClient, kit_tmp: Path
) -> None:
    """``a/b`` then ``a``: 409, the folder and its file untouched, no temporary file left;
    ``c`` then ``c/d``: 409 as well."""

    async def put(path: str) -> httpx.Response:
        return await runtime.put("/v1/files", params={"path": path}, content=b"x", headers=AUTH)

    assert (await put("a/b")).status_code == 204
    got = await put("a")
    assert got.status_code == 409, got.text
    assert "is a folder" in got.json()["message"]
    assert (await put("c")).status_code == 204
    got = await put("c/d")
    assert got.status_code == 409, got.text
    assert sorted(os.listdir(kit_tmp / "workspace")) == ["a", "c"]
    assert os.listdir(kit_tmp / "workspace" / "a") == ["b"]


async def test_a_failed_write_leaves_no_temporary_file(
    runtime: httpx.AsyncClient, kit_tmp: Path
) -> None:
    """The write fails after the temporary file is made (here: the name is taken by a
    folder made between the check and the rename): 507, and nothing is left beside it."""
    folder = kit_tmp / "workspace" / "f"
    folder.mkdir()
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if dst == "late":
            os.mkdir("late", dir_fd=kw["dst_dir_fd"])
            (folder / "late" / "inside").write_bytes(b"")
        real_replace(src, dst, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", replace)
        got = await runtime.put("/v1/files", params={"path": "f/late"}, content=b"x", headers=AUTH)
    assert got.status_code == 507, got.text
    assert os.listdir(folder) == ["late"]
