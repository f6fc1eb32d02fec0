"""Local sandboxes: real runtime processes, their exit codes, their process groups, their user."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from emulator.sandbox import LocalSandboxProvider
from emulator.sandbox.folders import EntrySync
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.settings import EXAMPLE_PROJECT
from kit.durability import Durability
from kit.host.errors import SandboxError
from kit.host.gateway import store_urls
from kit.host.sandbox import Endpoint, SandboxSpec
from kit.ids import new_session_id
from tests.agents import pids_under
from tests.test_private import _deadline


@pytest.fixture
def bundle(kit_tmp: Path) -> Bundle:
    """The example agent's bundle."""
    return build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")


@pytest.fixture(params=[True, False], ids=["fork-server", "fresh-spawn"])
async def provider(
    kit_tmp: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LocalSandboxProvider]:
    """A provider forking sandboxes from its fork server, or spawning each one fresh."""
    p = LocalSandboxProvider(
        kit_tmp / "sandboxes", bundles=kit_tmp / "bundles", fork_server=request.param
    )
    yield p
    await p.close()


@pytest.fixture
def hidden(kit_tmp: Path) -> Path:
    """A folder only root may enter, as ``/root`` is (and so a clone or a virtualenv in it)."""
    folder = kit_tmp / "private"
    folder.mkdir(mode=0o700)
    return folder


def _private_python(folder: Path) -> Path:
    """A virtualenv's interpreter in ``folder``, with this one's packages (kit, the SDK)."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    ours = sysconfig.get_path("purelib")
    Path(purelib, "kit-test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return venv / "bin" / "python"


def _uids(pids: Iterable[int]) -> set[int]:
    uids = set()
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uids.add(
            int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        )
    return uids


def _spec(bundle: Bundle) -> SandboxSpec:
    return SandboxSpec(
        session_id=new_session_id(),
        tier="basic",
        bundle_digest=bundle.digest,
        store_url="memory://",
        model=Endpoint("http://localhost", "kit-model-test"),
        runtime_token="rt",
        idle_timeout_s=60,
    )


async def test_stop_reports_143_and_leaves_nothing(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """SIGTERM: the runtime shuts down, exit 143 'stopped'; its CLI is gone too."""
    spec = _spec(bundle)
    sandbox = await provider.start(spec)
    assert len(pids_under(provider.root / spec.session_id)) >= 2  # the runtime and its CLI
    info = await sandbox.stop()
    assert (info.exit_code, info.reason) == (143, "stopped")
    assert pids_under(provider.root / spec.session_id) == set()


async def test_sigkill_reports_137_and_kills_the_group(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """SIGKILL to the group: exit 137 'killed', and no child (the CLI) survives."""
    spec = _spec(bundle)
    sandbox = await provider.start(spec)
    await sandbox.kill(signal.SIGKILL)
    info = await sandbox.wait()
    assert (info.exit_code, info.reason) == (137, "killed")
    assert pids_under(provider.root / spec.session_id) == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
async def test_runtime_and_cli_run_as_the_sandbox_user(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """As root, every sandbox process runs as the unprivileged sandbox user."""
    spec = _spec(bundle)
    sandbox = await provider.start(spec)
    uids = _uids(pids_under(provider.root / spec.session_id))
    assert uids == {provider.uid}
    assert 0 not in uids
    await sandbox.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only matters when dropping to another user")
async def test_unreachable_folder_is_named_unless_bound_in(
    provider: LocalSandboxProvider, bundle: Bundle, kit_tmp: Path, hidden: Path
) -> None:
    """A bundle behind a 0700 folder: a confined sandbox starts, its view bound in by root (the
    fork server's jail, or the staging namespace ahead of bubblewrap); an unconfined one
    (KIT_SANDBOX_ISOLATION=off), which would walk the host's folders as the sandbox user, is
    refused up front, naming that folder."""
    inner = build_bundle(load_project(EXAMPLE_PROJECT), hidden / "bundles")
    assert provider.isolation in ("native", "bwrap"), provider.unisolated
    provider.bundles = hidden / "bundles"
    sandbox = await provider.start(_spec(inner))
    info = await sandbox.stop()
    assert info.exit_code == 143
    unconfined = LocalSandboxProvider(
        kit_tmp / "off", bundles=hidden / "bundles", fork_server=False, isolation="off"
    )
    try:
        with pytest.raises(SandboxError, match=f"cannot enter {hidden}"):
            await unconfined.start(_spec(inner))
    finally:
        await unconfined.close()
    assert provider.unreachable(bundle.path) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only matters when dropping to another user")
async def test_an_unconfined_sandbox_that_cannot_import_kit_is_refused_up_front(
    kit_tmp: Path, bundle: Bundle, hidden: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kit's own code behind a 0700 folder (a checkout under /root): an unconfined sandbox
    would import it in place as the sandbox user and die five times over; it is refused at
    once, naming the folder and the fix."""
    unconfined = LocalSandboxProvider(
        kit_tmp / "off", bundles=bundle.path.parent, fork_server=False, isolation="off"
    )
    monkeypatch.setattr(unconfined, "runtime_code", lambda: (hidden / "kit",))
    try:
        with pytest.raises(SandboxError, match=f"cannot enter {hidden}.*kit's virtualenv"):
            await unconfined.start(_spec(bundle))
    finally:
        await unconfined.close()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None,
    reason="bubblewrap started by root for another user (./scripts/setup installs it)",
)
async def test_bubblewrap_binds_what_only_root_can_reach(hidden: Path) -> None:
    """Under bubblewrap, with the interpreter's virtualenv, the bundle and the sandbox folders
    all behind a 0700 folder (a clone under /root): the sandbox runs that interpreter as the
    sandbox user, every process of it, and nothing of its staging shows on the host."""
    python = _private_python(hidden)
    inner = build_bundle(load_project(EXAMPLE_PROJECT), hidden / "bundles")
    provider = LocalSandboxProvider(
        hidden / "sandboxes", python=str(python), fork_server=False, isolation="bwrap"
    )
    try:
        assert provider.isolation == "bwrap", provider.unisolated
        for path in (python.parent, inner.path, provider.root):
            assert provider.unreachable(path) == hidden
        spec = _spec(inner)
        sandbox = await provider.start(spec)
        pids = pids_under(provider.root / spec.session_id)
        assert _uids(pids) == {provider.uid}
        argv0 = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in pids}
        assert str(python).encode() in argv0
        assert provider.stage is not None
        assert not os.path.ismount(provider.stage)
        assert list(provider.stage.iterdir()) == []
        info = await sandbox.stop()
        assert (info.exit_code, info.reason) == (143, "stopped")
    finally:
        await provider.close()


async def test_unrunnable_python_is_a_clear_error(kit_tmp: Path, bundle: Bundle) -> None:
    """A runtime interpreter that cannot run gives a SandboxError that names the fix (the fork
    server fails first; the provider falls back to a fresh spawn, which fails clearly)."""
    provider = LocalSandboxProvider(kit_tmp / "sb2", python="/nonexistent/python3")
    try:
        with pytest.raises(SandboxError, match="KIT_SANDBOX_USER"):
            await provider.start(_spec(bundle))
    finally:
        await provider.close()


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(os.geteuid() != 0, reason="the fork server confines sandboxes as root")
async def test_a_runtime_killed_alone_inside_its_namespace_reports_137(
    kit_tmp: Path, bundle: Bundle
) -> None:
    """SIGKILL to the runtime only (pid 2 of the sandbox's namespace, not the group): the
    exit is relayed out through pid 1 and the host's child as 137 'killed', and nothing of
    the sandbox is left."""
    provider = LocalSandboxProvider(kit_tmp / "sandboxes", bundles=kit_tmp / "bundles")
    try:
        assert provider.isolation == "native"
        spec = _spec(bundle)
        sandbox = await provider.start(spec)
        (init,) = _children(sandbox.pid)
        (runtime,) = _children(init)
        os.kill(runtime, signal.SIGKILL)
        info = await sandbox.wait()
        assert (info.exit_code, info.reason) == (137, "killed")
        assert pids_under(provider.root / spec.session_id) == set()
    finally:
        await provider.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the fork server confines sandboxes as root")
async def test_isolation_never_falls_back_to_none(
    kit_tmp: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Isolation was chosen, then the fork server is down and bubblewrap is gone: the
    sandbox is refused with a message naming the way out, not started unconfined, and the
    config file already written (it holds the sandbox's tokens, in a folder the sandbox
    user owns) is removed."""
    provider = LocalSandboxProvider(kit_tmp / "sandboxes", bundles=kit_tmp / "bundles")
    try:
        assert provider.isolation == "native"

        async def no_fork_server(env: dict[str, str]) -> None:
            return None

        monkeypatch.setattr(provider, "_ensure_fork_server", no_fork_server)
        monkeypatch.setattr("emulator.sandbox.isolation.shutil.which", lambda name: None)
        spec = _spec(bundle)
        with pytest.raises(SandboxError, match="refusing to start an unisolated sandbox"):
            await provider.start(spec)
        assert provider.sandbox(spec.session_id) is None
        assert pids_under(provider.root / spec.session_id) == set()
        run = provider.run_root / spec.session_id[:13]
        assert [p.name for p in run.iterdir()] == []
    finally:
        await provider.close()


async def test_a_fifo_where_the_runtime_log_was_blocks_nothing(
    kit_tmp: Path, bundle: Bundle, provider: LocalSandboxProvider
) -> None:
    """A FIFO a sandbox user put in its own folder where runtime.log used to be is not
    opened (the log is in a folder of the host's): the sandbox starts, the loop never
    blocks. One at the host's log is refused at once, naming it is not a regular file."""
    spec = _spec(bundle)
    base = provider.root / spec.session_id
    base.mkdir(parents=True)
    os.mkfifo(base / "runtime.log")
    with _deadline(60):  # a blocked event loop cannot time itself out
        sandbox = await provider.start(spec)
        await sandbox.kill()
        await sandbox.wait()
        again = _spec(bundle)
        os.mkfifo(provider.log_path(again.session_id))
        with pytest.raises(SandboxError, match="not a regular file"):
            await provider.start(again)


@pytest.mark.skipif(os.geteuid() != 0, reason="root's own folder walk is what is at stake")
async def test_root_follows_no_link_swapped_in_mid_path(
    kit_tmp: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox user swaps its home for a link to another folder right after root gave
    it the home (a rename race, made deterministic here by doing it inside root's chmod):
    root makes or chowns nothing in the other folder (it refuses the link)."""
    provider = LocalSandboxProvider(
        kit_tmp / "sandboxes", bundles=kit_tmp / "bundles", fork_server=False, isolation="off"
    )
    # Root's walk is at stake, not whether the sandbox user can import kit (a checkout under
    # /root, as in CI, would be refused before any folder is made).
    monkeypatch.setattr(provider, "runtime_code", tuple)
    victim = kit_tmp / "victim"
    victim.mkdir(mode=0o755)
    spec = _spec(bundle)
    home = provider.root / spec.session_id / "home"
    fchmod = os.fchmod

    def racing_fchmod(fd: int, mode: int) -> None:
        fchmod(fd, mode)
        if os.readlink(f"/proc/self/fd/{fd}") == str(home) and not home.is_symlink():
            home.rename(home.with_name("home-real"))
            home.symlink_to(victim)

    monkeypatch.setattr(os, "fchmod", racing_fchmod)
    try:
        with contextlib.suppress(SandboxError):  # its HOME is now a link it cannot write
            sandbox = await provider.start(spec)
            await sandbox.kill()
            await sandbox.wait()
    finally:
        monkeypatch.undo()
        await provider.close()
    assert home.is_symlink()  # the swap was made
    assert list(victim.iterdir()) == []
    assert (victim.stat().st_uid, victim.stat().st_mode & 0o777) == (0, 0o755)


async def test_a_ready_sandbox_has_read_and_deleted_its_config(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """Readiness comes from the runtime's health probe, by then the runtime has deleted its
    config file (the tokens in it are out of its tools' reach), and ``find`` sees the
    sandbox until it exits."""
    spec = _spec(bundle)
    sandbox = await provider.start(spec)
    run = provider.run_root / spec.session_id[:13]
    assert sorted(p.name for p in run.iterdir()) == ["runtime.sock"]
    assert await provider.find(spec.session_id) is sandbox
    await sandbox.stop()
    assert await provider.find(spec.session_id) is None


async def test_a_bundle_that_is_not_the_one_named_is_refused(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """A spec naming a digest whose folder holds another bundle (same first 32 digits, the
    folder's name): the runtime refuses to run it, and the start fails saying why."""
    forged = bundle.digest[:32] + "0" * (len(bundle.digest) - 32)
    spec = dataclasses.replace(_spec(bundle), bundle_digest=forged)
    with pytest.raises(SandboxError, match=r"not the .* the sandbox was started for"):
        await provider.start(spec)
    missing = dataclasses.replace(_spec(bundle), bundle_digest="f" * 64)
    with pytest.raises(SandboxError, match=r"is not in .*; build it first"):
        await provider.start(missing)


async def test_reap_stops_the_sandboxes_of_sessions_not_kept(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """``reap`` kills the sandboxes whose session ``keep`` rejects (reason ``orphan``) and
    leaves the others running."""
    kept, orphan = _spec(bundle), _spec(bundle)
    first, second = await provider.start(kept), await provider.start(orphan)
    reaped = await provider.reap(lambda session_id: session_id == kept.session_id)
    assert reaped == [second.id]
    info = await second.wait()
    assert (info.exit_code, info.reason) == (137, "orphan")
    assert await provider.find(kept.session_id) is first
    await first.stop()


async def test_what_a_sandbox_left_in_its_run_folder_does_not_block_the_next_start(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """The run folder is the sandbox user's (its tools may write it: it is bound into the
    jail) and outlives the sandbox. A folder its tools left where the next config file goes
    must not make every later start of the session fail (the turn planner would give each
    turn up after five failed starts, forever)."""
    spec = _spec(bundle)
    first = await provider.start(spec)
    await first.stop()
    run = provider.run_root / spec.session_id[:13]
    planted = run / "config.json"  # emulator.sandbox.local.CONFIG_FILE
    planted.mkdir()  # as its tools would, as the sandbox user
    (planted / "x").write_text("x")
    if provider.uid is not None and provider.gid is not None:
        for path in (planted, planted / "x"):
            os.chown(path, provider.uid, provider.gid)
    second = await provider.start(spec)
    assert sorted(p.name for p in run.iterdir()) == ["runtime.sock"]
    await second.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only matters when dropping to another user")
async def test_a_shared_sqlite_store_hands_no_host_folder_to_the_sandbox_user(
    provider: LocalSandboxProvider, bundle: Bundle, kit_tmp: Path
) -> None:
    """``KIT_STORE_URL=sqlite:///PATH.db`` is one file for every session. Its folder is
    the host's (here it stands for /root or a home folder): root must not chown it to the
    sandbox user, nor bind it writable into every session's sandbox (each could then read
    and rewrite every other session's transcript)."""
    shared = kit_tmp / "host-folder"
    shared.mkdir(mode=0o755)
    (shared / "someone-elses-file").write_text("private")
    spec = dataclasses.replace(_spec(bundle), store_url=f"sqlite:///{shared / 'all.db'}")
    with contextlib.suppress(SandboxError):  # refusing such a store is fine too
        sandbox = await provider.start(spec)
        await sandbox.stop()
    st = shared.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)


@pytest.fixture
async def forking(kit_tmp: Path) -> AsyncIterator[LocalSandboxProvider]:
    """One provider forking its sandboxes (the fork server, as kit dev runs them)."""
    p = LocalSandboxProvider(kit_tmp / "sandboxes", bundles=kit_tmp / "bundles")
    yield p
    await p.close()


def _fsyncs(monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None) -> list[str]:
    """What this process fsyncs from now on (``fail``: each fsync fails so instead)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        if fail is not None:
            raise fail
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.parametrize("durability", list(Durability))
async def test_a_session_folders_name_is_synced_at_fsync_before_the_start_returns(
    forking: LocalSandboxProvider,
    bundle: Bundle,
    kit_tmp: Path,
    durability: Durability,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host makes ``transcripts/<session>``; the store in it fsyncs its own folder,
    not that folder's name in ``transcripts/``. At fsync the host fsyncs ``transcripts/``
    before the start returns (so before any turn, and any ``result``, can be durable); at
    os it fsyncs nothing."""
    transcripts = kit_tmp / "transcripts"
    spec = _spec(bundle)
    spec = dataclasses.replace(
        spec, store_url=store_urls(None, transcripts, durability)(spec.session_id)
    )
    synced = _fsyncs(monkeypatch)
    sandbox = await forking.start(spec)
    try:
        assert (transcripts / spec.session_id).is_dir()
        assert (str(transcripts) in synced) is (durability is Durability.FSYNC)
        if durability is Durability.OS:
            assert synced == []
    finally:
        await sandbox.stop()


async def test_a_failed_fsync_of_the_session_folders_name_fails_the_start(
    forking: LocalSandboxProvider, bundle: Bundle, kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At fsync, a start whose fsync of ``transcripts/`` fails does not hand out its
    sandbox: SandboxError naming the folder and the OS's reason, and nothing left running."""
    transcripts = kit_tmp / "transcripts"
    spec = _spec(bundle)
    spec = dataclasses.replace(
        spec, store_url=store_urls(None, transcripts, Durability.FSYNC)(spec.session_id)
    )
    _fsyncs(monkeypatch, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(SandboxError, match=f"Cannot fsync {transcripts} .*Input/output error"):
        await forking.start(spec)
    assert await forking.find(spec.session_id) is None
    assert pids_under(forking.root / spec.session_id) == set()


async def test_a_start_cancelled_during_the_fsync_leaves_nothing_running(
    forking: LocalSandboxProvider, bundle: Bundle, kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start cancelled while it waits for the fsync of ``transcripts/`` (a pool shutting
    down, say) kills the sandbox it made: nobody would hold it. (Broken on purpose once:
    with only a SandboxError handled, its runtime was left running.)"""
    transcripts = kit_tmp / "transcripts"
    spec = _spec(bundle)
    spec = dataclasses.replace(
        spec, store_url=store_urls(None, transcripts, Durability.FSYNC)(spec.session_id)
    )
    release = threading.Event()
    real = os.fsync

    def held_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(transcripts):
            release.wait(30)
        real(fd)

    waiting = asyncio.Event()
    synced = EntrySync.synced

    async def watched(self: EntrySync) -> None:
        waiting.set()  # the runtime is up; the start waits for the fsync
        await synced(self)

    monkeypatch.setattr(os, "fsync", held_fsync)
    monkeypatch.setattr(EntrySync, "synced", watched)
    start = asyncio.create_task(forking.start(spec))
    try:
        await asyncio.wait_for(waiting.wait(), 60)
        assert pids_under(forking.root / spec.session_id)
        start.cancel()
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert pids_under(forking.root / spec.session_id) == set()
