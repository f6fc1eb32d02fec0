"""Local sandboxes: real runtime processes, their exit codes, their process groups, their user."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulator.sandbox import LocalSandboxProvider
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.settings import EXAMPLE_PROJECT
from kit.host.errors import SandboxError
from kit.host.sandbox import ModelAccess, SandboxSpec
from kit.ids import new_session_id
from tests.agents import pids_under


@pytest.fixture
def bundle(kit_tmp: Path) -> Bundle:
    """The example agent's bundle."""
    return build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")


@pytest.fixture(params=[True, False], ids=["fork-server", "fresh-spawn"])
async def provider(
    kit_tmp: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LocalSandboxProvider]:
    """A provider forking sandboxes from its fork server, or spawning each one fresh."""
    p = LocalSandboxProvider(kit_tmp / "sandboxes", fork_server=request.param)
    yield p
    await p.close()


def _spec(bundle: Bundle) -> SandboxSpec:
    return SandboxSpec(
        session_id=new_session_id(),
        tier="basic",
        bundle_dir=bundle.path,
        store_url="memory://",
        model=ModelAccess("http://localhost", None, "kit-model-test"),
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
    uids = set()
    for pid in pids_under(provider.root / spec.session_id):
        status = Path(f"/proc/{pid}/status").read_text()
        uids.add(
            int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        )
    assert uids == {provider.uid}
    assert 0 not in uids
    await sandbox.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only matters when dropping to another user")
async def test_unreachable_folder_is_named_unless_bound_in(
    provider: LocalSandboxProvider, bundle: Bundle, kit_tmp: Path
) -> None:
    """A bundle behind a 0700 folder: a sandbox that reaches it through the host's folders
    (bubblewrap runs as the sandbox user) is refused up front, naming that folder; one whose
    view is bound in as root (the fork server's jail) starts, since it never walks them."""
    hidden = kit_tmp / "private"
    hidden.mkdir(mode=0o700)
    inner = build_bundle(load_project(EXAMPLE_PROJECT), hidden / "bundles")
    spec = _spec(inner)
    if provider.isolation == "native":
        sandbox = await provider.start(spec)
        info = await sandbox.stop()
        assert info.exit_code == 143
    else:
        with pytest.raises(SandboxError, match=f"cannot enter {hidden}"):
            await provider.start(spec)
    assert provider.unreachable(bundle.path) is None


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
    provider = LocalSandboxProvider(kit_tmp / "sandboxes")
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
    sandbox is refused with a message naming the way out, not started unconfined."""
    provider = LocalSandboxProvider(kit_tmp / "sandboxes")
    try:
        assert provider.isolation == "native"

        async def no_fork_server(env: dict[str, str]) -> None:
            return None

        monkeypatch.setattr(provider, "_ensure_zygote", no_fork_server)
        monkeypatch.setattr("emulator.sandbox.isolation.shutil.which", lambda name: None)
        spec = _spec(bundle)
        with pytest.raises(SandboxError, match="refusing to start an unisolated sandbox"):
            await provider.start(spec)
        assert provider.sandbox(spec.session_id) is None
        assert pids_under(provider.root / spec.session_id) == set()
    finally:
        await provider.close()
