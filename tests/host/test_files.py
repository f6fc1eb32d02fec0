"""A session's files (:mod:`kit.host.files`): kept by the host, given to every sandbox of
the session before a turn runs there, through the real stack (the SDK, its CLI, the offline
model) and both stores (SQLite, S3 on moto)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from asyncio import Event
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from kit.host.files import (
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    FileInfo,
    FileRefused,
    FilesError,
    S3Files,
    SessionFiles,
    SqliteFiles,
    check,
)
from kit.ids import SessionId, new_session_id
from kit.mail.message import Attachment, Inbound
from kit.mail.text import attachment_plan
from kit.storage.s3 import unique_prefix
from kit.storage.s3io import S3Bucket
from tests.agents import write_agent
from tests.conftest import BUCKET, stack_settings

SHOW_SCENARIO = """
[[rule]]
name = "show the file"
contains = "show the file"
[[rule.step]]
tool = "Bash"
input = { command = "cat notes/a.txt; echo; stat -c '%U' notes/a.txt", description = "show" }
[[rule.step]]
text = "File said: {tool_result}"
"""


@pytest.fixture(params=["sqlite", "s3"])
def files(request: pytest.FixtureRequest, kit_tmp: Path) -> SessionFiles:
    if request.param == "sqlite":
        return SqliteFiles(kit_tmp / "files.sqlite")
    endpoint = request.getfixturevalue("s3_endpoint")
    url = f"s3://{BUCKET}/{unique_prefix()}?region=us-east-1&endpoint_url={endpoint}"
    return S3Files(S3Bucket.from_url(url))


async def test_a_store_keeps_replaces_and_refuses_without_a_trace(files: SessionFiles) -> None:
    session = new_session_id()
    info = await files.put(session, "mail/ab/a.txt", b"one")
    assert await files.read(session, info) == b"one"
    newer = await files.put(session, "mail/ab/a.txt", b"two!")
    await files.put(session, "b.txt", b"")
    assert await files.list(session) == [
        FileInfo("b.txt", 0, _sha(b"")),
        FileInfo("mail/ab/a.txt", 4, newer.sha256),
    ]
    assert await files.read(session, newer) == b"two!"
    assert await files.read(session, info) is None  # the replaced bytes are gone
    for path, data in (("../x", b"x"), ("big", b"x" * (MAX_FILE_BYTES + 1))):
        with pytest.raises(FileRefused):
            await files.put(session, path, data)
    assert [f.path for f in await files.list(session)] == ["b.txt", "mail/ab/a.txt"]
    assert await files.list(new_session_id()) == []  # another session's are not shared
    await files.delete(session)
    assert await files.list(session) == []


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_session_limits_count_a_replaced_file_once() -> None:
    many = [FileInfo(f"f{n}", 1, "x") for n in range(MAX_FILES)]
    check("f0", b"again", many)  # a replacement adds nothing
    with pytest.raises(FileRefused, match=f"already has {MAX_FILES} files") as refused:
        check("one-more", b"x", many)
    assert refused.value.status == 413
    full = [FileInfo("big", MAX_TOTAL_BYTES - 10, "x")]
    check("small", b"x" * 10, full)
    with pytest.raises(FileRefused, match="in all"):
        check("small", b"x" * 11, full)
    with pytest.raises(FileRefused, match="plain relative path") as bad:
        check(".env", b"", [])
    assert bad.value.status == 400


def test_a_path_cannot_be_both_a_file_and_a_folder() -> None:
    """``a`` and ``a/b`` cannot both be in a workspace: the second is refused (409),
    whichever comes first."""
    check("a/b.txt", b"x", [FileInfo("a/bc", 1, "x"), FileInfo("ab", 1, "x")])  # no clash
    for path, kept in (("a/b/c", "a"), ("a/b", "a/b/c/d"), ("a", "a/b")):
        with pytest.raises(FileRefused, match="both a file and the folder") as refused:
            check(path, b"x", [FileInfo(kept, 1, "x")])
        assert refused.value.status == 409


def test_every_name_the_mail_gives_an_attachment_is_a_file_path_the_host_takes() -> None:
    """100 letters of three bytes each are 300 bytes: the host refused such a name (at
    most 255 bytes a part), and with it every attachment of the message."""
    names = ["日" * 120 + ".pdf", "日" * 120 + ".pdf", "é" * 200, "a" * 300 + ".tar.gz"]
    msg = Inbound(
        message_id="m@x",
        sender="a@x",
        sender_name="",
        recipients=("b@x",),
        return_path=None,
        subject="s",
        in_reply_to=(),
        references=(),
        headers={},
        text="",
        attachments=tuple(Attachment(n, "text/plain", 1, b"x") for n in names),
    )
    planned = attachment_plan(msg, "mail/0123456789ab")
    for name, _ in planned:
        assert name is not None
        check(f"mail/0123456789ab/{name}", b"x", [])
    assert str(planned[0][0]).endswith("日.pdf")
    assert str(planned[1][0]).endswith("日 (2).pdf")


@pytest.fixture
async def stack(kit_tmp: Path) -> AsyncIterator[Stack]:
    project = write_agent(kit_tmp / "agent")
    (project / "scenarios" / "0-show.toml").write_text(SHOW_SCENARIO)
    async with run_stack(stack_settings(kit_tmp / "state", project)) as running:
        yield running


async def test_the_route_takes_lists_and_refuses_with_a_reason(stack: Stack) -> None:
    info = await create_session(stack.url, stack.api_token)
    base = f"{stack.url}/v1/sessions/{info.session_id}/files"
    auth = {"authorization": f"Bearer {stack.api_token}"}
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        assert (await http.put(f"{base}/a.txt", content=b"x")).status_code == 401
        assert (await http.get(base)).status_code == 401
        got = await http.put(f"{base}/notes/a%20b.txt", content=b"hello", headers=auth)
        assert got.status_code == 204, got.text
        bad = await http.put(f"{base}/.ssh/keys", content=b"x", headers=auth)
        assert bad.status_code == 400
        assert "not starting with a dot" in bad.json()["message"]
        big = await http.put(f"{base}/big", content=b"x" * (MAX_FILE_BYTES + 1), headers=auth)
        assert big.status_code == 413
        assert str(MAX_FILE_BYTES) in big.json()["message"]
        clash = await http.put(f"{base}/notes/a%20b.txt/c", content=b"x", headers=auth)
        assert clash.status_code == 409, clash.text
        other = f"{stack.url}/v1/sessions/{new_session_id()}/files"
        assert (await http.put(f"{other}/a.txt", content=b"x", headers=auth)).status_code == 404
        listed = (await http.get(base, headers=auth)).json()["files"]
    assert listed == [{"path": "notes/a b.txt", "size": 5, "sha256": _sha(b"hello")}]


async def _say(client: SessionClient, text: str) -> str:
    async with asyncio.timeout(120):
        events = [e async for e in client.turn(text)]
    assert events[-1].kind == "result", events[-1]
    return str(events[-1].data["text"])


async def test_every_sandbox_of_the_session_gets_its_files(stack: Stack) -> None:
    """A file given to the session is in the sandbox's workspace before the next turn, a
    replacement reaches the same sandbox, and a new sandbox on a fresh disk (as on Fly and
    Cloudflare, where a sandbox's disk dies with it) gets it again."""
    info = await create_session(stack.url, stack.api_token)
    session_id = SessionId(info.session_id)
    url = f"{stack.url}/v1/sessions/{session_id}/files/notes/a.txt"
    auth = {"authorization": f"Bearer {stack.api_token}"}
    async with (
        httpx.AsyncClient(trust_env=False, timeout=30) as http,
        SessionClient(info.ws_url, info.token) as client,
    ):
        assert (await http.put(url, content=b"first", headers=auth)).status_code == 204
        shown = await _say(client, "show the file")
        said, owner = shown.splitlines()
        assert said == "File said: first"
        assert owner != "root"  # written by the runtime, as the sandbox user
        assert (await http.put(url, content=b"second", headers=auth)).status_code == 204
        assert (await _say(client, "show the file")).startswith("File said: second\n")

        session = await stack.host.get(session_id)
        assert session is not None
        assert session.sandbox is not None
        first_sandbox = session.sandbox
        await first_sandbox.kill()
        await first_sandbox.wait()
        shutil.rmtree(stack.provider.workspace(session_id) / "notes")  # a fresh disk
        assert (await _say(client, "show the file")).startswith("File said: second\n")
        assert session.sandbox is not None
        assert session.sandbox.id != first_sandbox.id


async def test_a_file_put_back_as_it_was_reaches_the_sandbox(stack: Stack) -> None:
    """first → second → first: the sandbox ends with "first" (the host remembers what the
    sandbox holds at each path, not every version it was ever given)."""
    info = await create_session(stack.url, stack.api_token)
    url = f"{stack.url}/v1/sessions/{info.session_id}/files/notes/a.txt"
    auth = {"authorization": f"Bearer {stack.api_token}"}
    async with (
        httpx.AsyncClient(trust_env=False, timeout=30) as http,
        SessionClient(info.ws_url, info.token) as client,
    ):
        for data in (b"first", b"second", b"first"):
            assert (await http.put(url, content=data, headers=auth)).status_code == 204
            shown = await _say(client, "show the file")
            assert shown.startswith(f"File said: {data.decode()}\n"), shown


@pytest.fixture
def s3_files(s3_endpoint: str) -> S3Files:
    url = f"s3://{BUCKET}/{unique_prefix()}?region=us-east-1&endpoint_url={s3_endpoint}"
    return S3Files(S3Bucket.from_url(url))


def _pause_after_data(files: S3Files, patch: pytest.MonkeyPatch) -> tuple[Event, Event]:
    """Make the next put's bytes upload stop there until ``go`` is set (``uploaded`` says
    it got there): another put can run in between, as two hosts' would."""
    uploaded, go, real_put = Event(), Event(), files.bucket.put

    async def put(key: str, body: bytes, **kw: Any) -> str | None:
        etag = await real_put(key, body, **kw)
        if "/data/" in key and not uploaded.is_set():
            uploaded.set()
            await go.wait()
        return etag

    patch.setattr(files.bucket, "put", put)
    return uploaded, go


async def test_s3_puts_at_once_keep_each_others_bytes(s3_files: S3Files) -> None:
    """``b`` is given the bytes ``a`` had while ``a`` is replaced: ``b``'s bytes stay
    readable (the replacement must not delete what another path names)."""
    session = new_session_id()
    await s3_files.put(session, "a", b"same")
    with pytest.MonkeyPatch.context() as patch:
        uploaded, go = _pause_after_data(s3_files, patch)
        b = asyncio.create_task(s3_files.put(session, "b", b"same"))
        async with asyncio.timeout(30):
            await uploaded.wait()
        patch.undo()
        await s3_files.put(session, "a", b"other")
        go.set()
        async with asyncio.timeout(30):
            info = await b
    assert await s3_files.read(session, info) == b"same"


async def test_s3_a_put_refused_at_once_with_another_stores_nothing(s3_files: S3Files) -> None:
    """Two puts race for the session's last place: the loser is refused and its bytes
    are not left in the bucket."""
    session = new_session_id()
    for n in range(MAX_FILES - 1):
        await s3_files.put(session, f"f{n}", b"")
    with pytest.MonkeyPatch.context() as patch:
        uploaded, go = _pause_after_data(s3_files, patch)
        loser = asyncio.create_task(s3_files.put(session, "loser", b"loser's bytes"))
        async with asyncio.timeout(30):
            await uploaded.wait()
        patch.undo()
        await s3_files.put(session, "winner", b"")
        go.set()
        with pytest.raises(FileRefused, match="already has"):
            async with asyncio.timeout(30):
                await loser
    assert "loser" not in [f.path for f in await s3_files.list(session)]
    keys = await s3_files.bucket.list_keys(s3_files._dir(session))
    assert [k for k in keys if await s3_files.bucket.get(k) == b"loser's bytes"] == []


async def test_a_damaged_s3_index_is_a_files_error(s3_endpoint: str) -> None:
    url = f"s3://{BUCKET}/{unique_prefix()}?region=us-east-1&endpoint_url={s3_endpoint}"
    files = S3Files(S3Bucket.from_url(url))
    session = new_session_id()
    await files.bucket.put(f"{files.bucket.prefix}files/{session}/index.json", b"[not json")
    with pytest.raises(FilesError, match="not a JSON object"):
        await files.list(session)
