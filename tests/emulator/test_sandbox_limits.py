"""Tier limits on local sandboxes: real cgroups around the real runtime's process tree."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulator.sandbox import LocalSandboxProvider
from emulator.sandbox.cgroups import CFS_PERIOD_US, PIDS_MAX, Cgroups
from kit.bundle import Bundle, build_bundle, load_project
from kit.cli.settings import EXAMPLE_PROJECT
from kit.host.errors import SandboxError
from kit.host.sandbox import Endpoint, SandboxSpec
from kit.ids import new_session_id

pytestmark = pytest.mark.skipif(
    not Cgroups.available(), reason="needs writable cgroup v1 hierarchies (root)"
)


@pytest.fixture
def bundle(kit_tmp: Path) -> Bundle:
    """The example agent's bundle."""
    return build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")


@pytest.fixture
async def provider(kit_tmp: Path) -> AsyncIterator[LocalSandboxProvider]:
    """A provider with cgroup limits (and its fork server)."""
    p = LocalSandboxProvider(kit_tmp / "sandboxes", bundles=kit_tmp / "bundles")
    yield p
    await p.close()


def _spec(bundle: Bundle, tier: str = "basic") -> SandboxSpec:
    return SandboxSpec(
        session_id=new_session_id(),
        tier=tier,
        bundle_digest=bundle.digest,
        store_url="memory://",
        model=Endpoint("http://localhost", "kit-model-test"),
        runtime_token="rt",
        idle_timeout_s=60,
    )


def _group_pids(pgid: int) -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                found.add(int(proc.name))
    return found


@pytest.mark.parametrize(
    ("tier", "memory", "quota"), [("lite", 256, 6250), ("standard-2", 6144, 100_000)]
)
async def test_every_process_runs_in_the_tiers_cgroups(
    provider: LocalSandboxProvider, bundle: Bundle, tier: str, memory: int, quota: int
) -> None:
    """The runtime and its CLI are in the sandbox's cgroups, which hold the tier's limits;
    the groups are removed when the sandbox exits."""
    sandbox = await provider.start(_spec(bundle, tier))
    cgroup = sandbox.cgroup
    assert cgroup is not None
    pids = _group_pids(sandbox.pid)
    assert len(pids) >= 2  # the runtime and its CLI
    assert pids <= cgroup.members()
    assert int(cgroup.read("memory", "memory.limit_in_bytes")) == memory * 2**20
    assert int(cgroup.read("cpu", "cpu.cfs_quota_us")) == quota
    assert int(cgroup.read("cpu", "cpu.cfs_period_us")) == CFS_PERIOD_US
    assert int(cgroup.read("pids", "pids.max")) == PIDS_MAX
    for pid in pids:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        memory_line = next(line for line in lines if ":memory:" in line)
        assert memory_line.endswith(f"/{sandbox.id}")
    await sandbox.stop()
    assert not any(path.exists() for path in cgroup.paths.values())


async def test_usage_is_measured_while_running_and_at_exit(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """Peak memory, CPU seconds and workspace disk are readable live and after the exit."""
    sandbox = await provider.start(_spec(bundle))
    assert sandbox.workspace is not None
    (sandbox.workspace / "data.bin").write_bytes(b"x" * 3_000_000)
    live = await sandbox.usage()
    assert live is not None
    assert 20 < live.peak_memory_mib < 1024  # a runtime and its CLI
    assert live.cpu_s > 0.05  # the CLI's boot at least
    assert live.disk_mb >= 3.0
    await sandbox.stop()
    final = sandbox.final_usage
    assert final is not None
    assert final.cpu_s is not None
    assert final.cpu_s >= live.cpu_s


BURN = "import sys; sys.stdin.readline(); sum(i * i for i in range(2_000_000)); print('done')"
"""About 0.1 s of CPU: some 16 of `lite`'s 6.25 ms shares (each a 100 ms period)."""


async def test_cpu_throttling_is_read_under_a_small_tier(
    provider: LocalSandboxProvider, bundle: Bundle
) -> None:
    """Work past `lite`'s CPU share inside its cgroups shows in usage() as time held at the
    share, in whole 100 ms periods; the tier's quota is what held it."""
    sandbox = await provider.start(_spec(bundle, "lite"))
    assert sandbox.cgroup is not None
    before = await sandbox.usage()
    assert before is not None
    assert before.throttled_s is not None
    burner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BURN, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    sandbox.cgroup.add(burner.pid)  # before it starts the work: all of it runs under lite
    out, _ = await asyncio.wait_for(burner.communicate(b"go\n"), 60)
    assert out == b"done\n"
    after = await sandbox.usage()
    assert after is not None
    assert after.throttled_s is not None
    held = after.throttled_s - before.throttled_s
    assert held >= 0.2  # at least two periods ran out of quota
    assert round(held * 10, 6) == round(held * 10)  # whole periods of cfs_period_us
    assert after.cpu_s > before.cpu_s
    await sandbox.stop()


async def test_oom_now_reports_137_oom(provider: LocalSandboxProvider, bundle: Bundle) -> None:
    """The 'OOM now' hook ends the sandbox as the kernel's OOM killer would: 137, 'oom'."""
    spec = _spec(bundle)
    sandbox = await provider.start(spec)
    assert provider.sandbox(spec.session_id) is sandbox
    await sandbox.oom()
    info = await sandbox.wait()
    assert (info.exit_code, info.reason) == (137, "oom")
    assert provider.sandbox(spec.session_id) is None


async def test_kill_by_session(provider: LocalSandboxProvider, bundle: Bundle) -> None:
    """The provider signals a session's sandbox by session id; unknown sessions say False."""
    spec = _spec(bundle)
    sandbox = await provider.start(spec)
    assert await provider.kill(spec.session_id, 15, reason="stopped")
    assert (await sandbox.wait()).exit_code == 143
    assert not await provider.kill(spec.session_id)


async def test_maximum_lifetime_stops_with_143(kit_tmp: Path, bundle: Bundle) -> None:
    """A sandbox past its maximum lifetime gets SIGTERM: 143, 'lifetime'."""
    provider = LocalSandboxProvider(kit_tmp / "sb", max_lifetime_s=0.5)
    try:
        sandbox = await provider.start(_spec(bundle))
        info = await asyncio.wait_for(sandbox.wait(), 30)
        assert (info.exit_code, info.reason) == (143, "lifetime")
    finally:
        await provider.close()


async def test_workspace_past_its_disk_quota(kit_tmp: Path, bundle: Bundle) -> None:
    """A workspace that outgrows the tier's disk ends the sandbox (137, 'disk'); the next
    start is refused with a message naming the workspace."""
    provider = LocalSandboxProvider(kit_tmp / "sb", overrides={"disk_bytes": 1_000_000})
    try:
        spec = _spec(bundle)
        sandbox = await provider.start(spec)
        assert sandbox.workspace is not None
        (sandbox.workspace / "big.bin").write_bytes(os.urandom(2_000_000))
        info = await asyncio.wait_for(sandbox.wait(), 30)
        assert (info.exit_code, info.reason) == (137, "disk")
        with pytest.raises(SandboxError, match="holds more than its tier"):
            await provider.start(spec)
    finally:
        await provider.close()


async def test_unknown_tier_is_refused(provider: LocalSandboxProvider, bundle: Bundle) -> None:
    """A tier name kit does not know is a SandboxError, before anything starts."""
    with pytest.raises(SandboxError, match="Unknown sandbox tier"):
        await provider.start(_spec(bundle, "gigantic"))


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user to lose the cgroups")
async def test_without_cgroups_it_says_so_once_and_carries_on(kit_tmp: Path) -> None:
    """A provider that cannot write cgroups logs one warning naming what is not enforced."""
    folder = kit_tmp / "unprivileged"
    folder.mkdir()
    folder.chmod(0o777)
    # kit is imported as root, then every privilege is dropped (as `setpriv --reuid=65534
    # --regid=65534 --clear-groups` would) before the providers probe: the code and its
    # virtualenv may sit where only root can read them, as in a clone under /root.
    script = (
        "import logging, os, sys; logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "from pathlib import Path\n"
        "from emulator.sandbox import LocalSandboxProvider\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "assert os.getresuid() == (65534,) * 3 and os.getgroups() == []\n"
        f"for n in range(2): LocalSandboxProvider(Path('{folder}') / f'sb{{n}}', user=None)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script,
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    lines = out.decode().splitlines()
    assert proc.returncode == 0, lines
    warnings = [line for line in lines if "NOT enforced" in line]
    assert len(warnings) == 1
    assert "memory, CPU and pids" in warnings[0]
    assert "Permission denied" in warnings[0]


def test_priming_leaves_the_host_where_it_is() -> None:
    """``Cgroups.prime`` (run beside a sandbox's start so that its move into its cgroups is
    quick) writes the host into the cgroups it is in already: the host's own cgroups, and
    its kit folders, are as they were. (Broken on purpose once: priming into the kit folder
    itself → the host's pids cgroup changed.)"""
    cgroups, why = Cgroups.probe()
    assert cgroups is not None, why
    try:
        before = Path("/proc/self/cgroup").read_text()
        cgroups.prime()
        assert Path("/proc/self/cgroup").read_text() == before
        assert not (cgroups.bases["pids"] / "cgroup.procs").read_text().split()
    finally:
        cgroups.remove()
