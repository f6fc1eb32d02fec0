"""After real turns through a real stack, only the host's user may read its state: the state
dir 0700, event logs and transcripts 0600, nothing else open to the group or other users but
what sandboxes must reach (listed below, with why); an older kit's state dir is tightened at
the next start; a shared folder is refused as the state dir."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kit
from emulator.sandbox.isolation import choose
from kit.cli.stack import Stack, run_stack
from kit.client import SessionClient, create_session
from kit.errors import KitError
from kit.host.session import Session
from tests.agents import open_session, stored_prompts, turn_events, write_agent
from tests.conftest import stack_settings

PASSAGES = ("bundles", "sandboxes", "transcripts")
"""0710 to the sandbox user's group, only when sandboxes walk to their folders themselves."""
SANDBOX_OWN = ("workspace", "home", "tmp")
"""A sandbox's own folders: what its tools make in them is theirs (their own umask)."""
PROXY_SOCKETS = ("model.sock", "egress.sock")
"""0666: the sandbox user connects to them; the per-session token is what authenticates."""


@pytest.fixture(params=[0, 0o077], ids=["umask0", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """A umask for the whole stack (the host, its fork server, its sandboxes): under 0 any
    mode left to it would come out open to everyone; under 077 shut to the sandbox user."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _isolations() -> list[str]:
    modes = ["auto", "off"]
    if shutil.which("bwrap") and not choose(fork_server=False, drop=[])[1]:
        modes.insert(1, "bwrap")
    return modes


def _others_reach(*paths: Path) -> bool:
    """Whether another user may walk to each of ``paths`` (every folder above it has o+x)."""
    return all(
        all(folder.stat().st_mode & stat.S_IXOTH for folder in path.resolve().parents)
        for path in paths
    )


def _unconfined_user(isolation: str) -> dict[str, object]:
    """Settings for the sandbox user: with isolation ``off`` as root, sandboxes run as
    another user only where it can reach kit's code and the virtualenv unaided (README: not
    in a clone inside a private folder such as /root); there they run as the host's user."""
    if isolation != "off" or _others_reach(Path(kit.__file__), Path(sys.prefix) / "bin"):
        return {}
    return {"sandbox_user": None}


def _tree(root: Path) -> Iterator[tuple[tuple[str, ...], os.stat_result]]:
    """Every path under ``root`` (relative parts) with its own ``lstat``; links not followed.
    A path gone between the listing and its ``lstat`` (a lock file of a running sandbox's
    CLI) is left out."""
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            yield path.relative_to(root).parts, st


def _excused(parts: tuple[str, ...], st: os.stat_result, passage_gid: int | None) -> bool:
    """Whether a path under the state dir may have group or other bits, and why."""
    if stat.S_ISLNK(st.st_mode):
        return True  # a link's own bits are always 0777 and grant nothing
    if parts[0] == "bundles" and len(parts) > 1 and not st.st_mode & 0o022:
        return True  # a bundle keeps the modes it ships with (0644, 0755: kit deploy ships
        # the same files), readable by the sandbox user; writable by no one else: sandboxes
        # (unconfined ones pass through bundles/) must not rewrite what every session runs
    if parts[0] == "sandboxes" and len(parts) > 3 and parts[2] in SANDBOX_OWN:
        return True  # the sandbox's own files, inside its 0700 folder owned by its user
    return (
        len(parts) == 1
        and parts[0] in PASSAGES
        and passage_gid is not None
        and (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, passage_gid)
    )


def _open_to_others(stack: Stack, passage: int | None) -> list[str]:
    """Paths of the state dir and the socket folder with group or other bits they should
    not have."""
    state = stack.settings.state_dir
    found = [
        f"{'/'.join(parts)} {stat.filemode(st.st_mode)}"
        for parts, st in _tree(state)
        if st.st_mode & 0o077 and not _excused(parts, st, passage)
    ]
    run = stack.provider.run_root
    for parts, st in _tree(run):
        mode = stat.S_IMODE(st.st_mode)
        if (
            mode & 0o077 == 0
            or (parts[0] in PROXY_SOCKETS and mode == 0o666)
            # the runtime's own socket (kit.runtime.server), in the sandbox's 0700 folder
            or (len(parts) == 2 and parts[1] == "runtime.sock" and mode == 0o660)
            # an empty mount point: each bubblewrap sandbox mounts its staging tmpfs on it,
            # in a mount namespace of its own
            or (parts == (".stage",) and not any(Path(run, ".stage").iterdir()))
        ):
            continue
        found.append(f"{run}/{'/'.join(parts)} {stat.filemode(st.st_mode)}")
    return found


def _private_folder_mode(path: Path) -> tuple[int, int | None]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_gid if st.st_mode & 0o070 else None


def _passage(isolation: str, stack: Stack) -> int | None:
    """The group the state dir's passages are open to: the sandbox user's, when kit runs as
    root and sandboxes run unconfined (so walk to their folders as that user); else none."""
    unconfined = os.geteuid() == 0 and isolation == "off" and stack.provider.uid is not None
    return stack.provider.gid if unconfined else None


async def _hello(stack: Stack) -> Session:
    """A session whose first turn, "hello", ended with its result."""
    client, session = await open_session(stack)
    try:
        events = await turn_events(client, "hello")
    finally:
        await client.close()
    assert events[-1].kind == "result", events[-1]
    return session


def _check(stack: Stack, session_id: str, passage: int | None) -> None:
    """The state dir after a turn of ``session_id``, as the module docstring says."""
    state, provider = stack.settings.state_dir, stack.provider
    expected = (0o700, None) if passage is None else (0o710, passage)
    assert _private_folder_mode(state) == expected
    assert _private_folder_mode(provider.run_root) == (
        (0o700, None) if provider.uid is None else (0o710, provider.gid)
    )
    assert _private_folder_mode(state / "sessions") == (0o700, None)
    logs = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in (state / "sessions").iterdir()}
    ours = [f"{session_id}.sqlite", f"{session_id}.sqlite-wal", f"{session_id}.sqlite-shm"]
    assert set(ours) <= set(logs), logs  # the walk below is not vacuous
    assert logs == dict.fromkeys(logs, 0o600)
    sandbox_uid = provider.uid if provider.uid is not None else os.geteuid()
    transcripts = {
        p.name: (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid)
        for p in (state / "transcripts" / session_id).iterdir()
        if not p.is_symlink()  # one the old-state-dir test planted
    }
    assert {"transcript.sqlite", "transcript.sqlite-wal"} <= set(transcripts), transcripts
    assert transcripts == dict.fromkeys(transcripts, (0o600, sandbox_uid))
    for folder in (state / "transcripts" / session_id, state / "sandboxes" / session_id):
        assert (stat.S_IMODE(folder.stat().st_mode), folder.stat().st_uid) == (
            0o700,
            sandbox_uid,
        )
    assert _open_to_others(stack, passage) == []
    assert provider.traverse_gid == passage


@pytest.mark.parametrize("isolation", _isolations())
async def test_after_a_turn_only_the_host_may_read_the_state_dir(
    isolation: str, kit_tmp: Path, umask: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A real turn in each isolation mode, under umask 0 and 077 (sandboxes still start and
    reach their bundle and mount points): the state dir is 0700 (0710 to the
    sandbox user's group only when sandboxes run unconfined as another user), every event
    log and transcript file (-wal and -shm too) is 0600 and the host still reads them, and
    nothing else is open beyond what sandboxes must reach; opening passages is said."""
    project = write_agent(kit_tmp / "agent")
    settings = stack_settings(
        kit_tmp / "state", project, sandbox_isolation=isolation, **_unconfined_user(isolation)
    )
    async with run_stack(settings) as stack:
        session = await _hello(stack)
        assert "hello" in await stored_prompts(settings.state_dir, session.id)
        passage = _passage(isolation, stack)
        _check(stack, session.id, passage)
    said = [r.getMessage() for r in caplog.records if "pass through" in r.getMessage()]
    assert len(said) == (passage is not None), said


async def test_an_older_kits_state_dir_is_tightened_at_the_next_start(kit_tmp: Path) -> None:
    """A state dir as an older kit left it (0755 folders, 0644 logs, transcripts and host
    files) is private again at the next start, without following a link a sandbox user put
    in its folder; its session then goes on (its transcript and log still read)."""
    project = write_agent(kit_tmp / "agent")
    settings = stack_settings(kit_tmp / "state", project)
    state = settings.state_dir
    async with run_stack(settings) as stack:
        info = await create_session(stack.url, stack.api_token)
        async with SessionClient(info.ws_url, info.token) as client:
            await turn_events(client, "hello")
            seen = client.last_seq
    session_id = info.session_id
    outside = kit_tmp / "not-kits.txt"
    outside.write_text("a file of someone else's")
    outside.chmod(0o644)
    for parts, st in _tree(state):
        path = state.joinpath(*parts)
        if not stat.S_ISLNK(st.st_mode) and not (len(parts) > 3 and parts[2] in SANDBOX_OWN):
            path.chmod(0o755 if stat.S_ISDIR(st.st_mode) else 0o644)
    state.chmod(0o755)
    (state / "transcripts" / session_id / "planted").symlink_to(outside)
    assert [p for p in (state / "sessions").iterdir() if p.stat().st_mode & 0o044]

    async with run_stack(settings) as stack:
        # Before the session is touched again (opening a log would tighten it too):
        assert _private_folder_mode(state) == (0o700, None)
        assert _open_to_others(stack, None) == []
        assert outside.stat().st_mode & 0o777 == 0o644  # the link was not followed
        ws_url = f"{stack.url.replace('http', 'ws', 1)}/v1/sessions/{session_id}/ws"
        async with SessionClient(ws_url, info.token, last_seq=seen) as client:
            events = await turn_events(client, "and again")
        assert events[-1].kind == "result", events[-1]
        assert {"hello", "and again"} <= await stored_prompts(state, session_id)
        _check(stack, session_id, None)


async def test_a_shared_folder_is_refused_as_the_state_dir(kit_tmp: Path) -> None:
    """KIT_STATE_DIR naming a sticky, shared folder (like /tmp) is one clear error, and
    kit changes nothing of that folder."""
    shared = kit_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(KitError, match="KIT_STATE_DIR"):
        async with run_stack(stack_settings(shared)):
            pass
    assert (stat.S_IMODE(shared.stat().st_mode), list(shared.iterdir())) == (0o1777, [])


async def test_a_state_dir_whose_path_a_url_would_misread_runs_a_turn(kit_tmp: Path) -> None:
    """A state dir under ``odd ?dir #1 %41`` (a ``?``, a ``#``, spaces, a ``%`` before two
    hex digits): each session's transcript store URL carries the path percent-encoded, so
    the sandbox opens the store where the host made it (not an "unknown option" of a path
    cut at the ``?``), the turn ends with its result, and its prompt is in that file."""
    folder = kit_tmp / "odd ?dir #1 %41"
    folder.mkdir(mode=0o755)
    settings = stack_settings(folder / "state")
    async with run_stack(settings) as stack:
        session = await _hello(stack)
    assert (settings.state_dir / "transcripts" / session.id / "transcript.sqlite").is_file()
    assert "hello" in await stored_prompts(settings.state_dir, session.id)
