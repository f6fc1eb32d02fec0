"""A sandbox sees its workspace and bundle, finds no API key, and connects nowhere but the
host's proxies: probed from inside, by a Bash tool of a real agent in a real `kit dev` stack,
every way sandboxes are confined (the fork server's namespaces, bubblewrap, and containers of
kit's runtime image under Docker)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import kit
from kit.cli.stack import Stack, run_stack
from tests.agents import open_session, turn_events, write_agent
from tests.conftest import stack_settings
from tests.dockerhost import runtime_image
from tests.loopback import HTTP_BODY, http_server

PROBE = Path(__file__).with_name("isolation_probe.py")
NOT_THERE = ("ENOENT", "EACCES")

needs_isolation = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None,
    reason="needs root (namespaces) and bubblewrap (./scripts/setup installs it)",
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server on the host's loopback (the sandbox must not reach it)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.listen()
        yield server


@pytest.fixture(
    params=["auto", "bwrap", "bwrap 0700", "docker", "docker 0700"],
    ids=[
        "fork-server-namespaces",
        "bubblewrap",
        "bubblewrap-private-folder",
        "docker",
        "docker-private-folder",
    ],
)
async def confined(
    request: pytest.FixtureRequest, kit_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Stack, str]]:
    """A stack whose host knows a secret API key (its environment, the project's .env, a
    file in its state dir), its sandboxes confined one way or the other; with "0700" the
    project and state dir sit behind a folder only root may enter (a clone under /root)."""
    isolation, _, private = str(request.param).partition(" ")
    sandbox = "local"
    if isolation == "docker":
        runtime_image()  # or skip, saying why
        sandbox, isolation = "docker", "auto"
    base = kit_tmp
    if private:
        base = kit_tmp / "private"
        base.mkdir(mode=0o700)
    secret = "sk-ant-api03-" + secrets.token_hex(24)
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    project = write_agent(base / "agent")
    (project / ".env").write_text(f"ANTHROPIC_API_KEY={secret}\n")
    settings = stack_settings(
        base / "state",
        project,
        api_key=secret,
        force_offline_model=True,
        sandbox=sandbox,
        sandbox_isolation=isolation,
    )
    async with run_stack(settings) as stack:
        expected = {"auto": "native", "bwrap": "bwrap"}[isolation]
        if sandbox == "docker":
            expected = "container"
        assert stack.provider.isolation == expected, stack.provider.unisolated
        (settings.state_dir / "planted.txt").write_text(secret)
        yield stack, secret


def _image() -> list[str]:
    """The read-only system image the secret scan skips (the same for every sandbox; a
    container's kit and Python are in /opt/kit)."""
    return ["/usr", "/opt/kit", sys.prefix, sys.base_prefix, str(Path(kit.__file__).parent)]


async def _probe(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    client, session = await open_session(stack)
    try:
        await turn_events(client, "hello")  # the sandbox is up, its workspace made
        workspace = stack.provider.workspace(session.id)
        shutil.copy(PROBE, workspace / "probe.py")
        (workspace / "probe.json").write_text(json.dumps(spec))
        events = await turn_events(client, "probe the sandbox")
    finally:
        await client.close()
    output = next(e.data["content"] for e in events if e.kind == "tool_result")
    line = next((x for x in str(output).splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, output
    report: dict[str, Any] = json.loads(line.removeprefix("PROBE "))
    return report


@needs_isolation
async def test_a_sandbox_sees_only_its_workspace_and_bundle(
    confined: tuple[Stack, str], kit_tmp: Path, listener: socket.socket
) -> None:
    """Outside its workspace and bundle nothing of the host is there: not the project, the
    state dir, another session's workspace, the tests; the bundle and system are read-only;
    the API key is nowhere (files, environments, command lines); no host process is
    visible; TCP goes nowhere, even to the host's loopback; the model proxy answers."""
    stack, secret = confined
    other = stack.provider.workspace("00000000-0000-4000-8000-000000000000")
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("another session's file")
    bundle_file = stack.bundle.path / "kit-bundle.json"
    assert bundle_file.is_file()
    # Only the read-only mounts may stop these writes: the sandbox user owns the file (one
    # the manifest lists: a file it does not list makes the bundle refused), and a tmpfs
    # mounted inside the bundle (a submount the recursive bind brings along) is
    # world-writable.
    owned = stack.bundle.path / ".claude-plugin" / "plugin.json"
    os.chown(owned, stack.provider.uid or 0, stack.provider.gid or 0)
    submount = stack.bundle.path / "submount"
    submount.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(submount)]
    await asyncio.to_thread(subprocess.run, mount, check=True)
    try:
        await _check_the_view(stack, secret, other, bundle_file, owned, submount, listener)
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(submount)], check=True)


async def _check_the_view(
    stack: Stack,
    secret: str,
    other: Path,
    bundle_file: Path,
    owned: Path,
    submount: Path,
    listener: socket.socket,
) -> None:
    state = stack.settings.state_dir
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        pass  # the host itself reaches it
    forbidden = [
        str(stack.settings.project_dir / "kit.toml"),
        str(stack.settings.project_dir / ".env"),
        str(state / "planted.txt"),
        str(other / "notes.txt"),
        str(Path(__file__)),
        "/root/.bashrc",
        "/etc/shadow",
    ]
    inside = stack.provider.inside  # where the sandbox sees the bundle's files
    bundle_in, owned_in, submount_in = (inside(p) for p in (bundle_file, owned, submount))
    spec = {
        "secret_b64": base64.b64encode(secret.encode()).decode(),
        "image": _image(),
        "read": [*forbidden, bundle_in, "probe.json", "/usr/bin/python3"],
        "write": [
            bundle_in,
            owned_in,
            f"{submount_in}/x.txt",
            "/usr/probe.txt",
            "/probe.txt",
            "/dev/probe.txt",
            "written.txt",
            "/tmp/written.txt",
        ],
        "tcp": [["127.0.0.1", port], ["10.255.255.1", 80]],
        "unix": ["$ANTHROPIC_UNIX_SOCKET"],  # the model proxy, wherever it is mounted
    }
    report = await _probe(stack, spec)

    for path in forbidden:
        assert report["read"][path] in NOT_THERE, (path, report["read"][path])
    assert report["read"][bundle_in] == "read"  # the bundle is there, read-only
    assert report["read"]["probe.json"] == "read"
    assert report["read"]["/usr/bin/python3"] == "read"
    assert report["write"]["written.txt"] == "wrote"
    assert report["write"]["/tmp/written.txt"] == "wrote"
    for path in (bundle_in, owned_in, f"{submount_in}/x.txt", "/usr/probe.txt", "/probe.txt"):
        assert report["write"][path] == "EROFS", (path, report["write"][path])
    # A container's /dev is Docker's root-owned tmpfs: not read-only, but not the sandbox's.
    dev = ("EROFS", "EACCES") if stack.provider.kind == "docker" else ("EROFS",)
    assert report["write"]["/dev/probe.txt"] in dev, report["write"]["/dev/probe.txt"]
    assert report["secret_hits"] == []
    assert report["files_scanned"] > 100  # it did look: /etc, home, workspace, bundle, ...
    assert report["uid"] == stack.provider.uid
    status = report["status"]  # the tool's own: no capability now or ever, no setuid gains
    assert (status["CapEff"], status["CapPrm"], status["CapBnd"]) == (0, 0, 0), status
    assert status["NoNewPrivs"] == 1
    host_pid = str(os.getpid())
    assert not [p for p in report["processes"] if "pytest" in p or host_pid in p.split()]
    assert len(report["processes"]) < 20  # the sandbox's own: init, runtime, CLI, the tool
    assert report["tcp"][f"127.0.0.1:{port}"] != "connected"
    assert report["tcp"]["10.255.255.1:80"] != "connected"
    assert report["unix"] == {"$ANTHROPIC_UNIX_SOCKET": "connected"}


@needs_isolation
async def test_egress_goes_only_to_the_allowlist_through_the_proxy(
    kit_tmp: Path, sandbox_kind: str
) -> None:
    """With `egress = ["127.0.0.1:PORT"]` in kit.toml, a tool's HTTP request to that server
    arrives (through the host's egress proxy); one to another host port is refused with the
    proxy's 403 naming kit.toml and never arrives; a direct connection still goes nowhere."""
    async with http_server() as allowed, http_server() as other:
        project = write_agent(
            kit_tmp / "agent", extra_toml=f'egress = ["127.0.0.1:{allowed.port}"]'
        )
        settings = stack_settings(kit_tmp / "state", project, sandbox=sandbox_kind)
        async with run_stack(settings) as stack:
            confined = {"local": "native", "docker": "container"}[sandbox_kind]
            assert stack.provider.isolation == confined, stack.provider.unisolated
            spec = {
                "secret_b64": base64.b64encode(b"no secret here").decode(),
                "image": _image(),
                "read": [],
                "write": [],
                "tcp": [["127.0.0.1", allowed.port]],
                "unix": [],
                "http": [
                    f"http://127.0.0.1:{allowed.port}/allowed",
                    f"http://127.0.0.1:{other.port}/other",
                ],
            }
            report = await _probe(stack, spec)
    answers = report["http"]
    assert answers[f"http://127.0.0.1:{allowed.port}/allowed"] == "200 " + HTTP_BODY.decode()
    refused = answers[f"http://127.0.0.1:{other.port}/other"]
    assert refused.startswith("403 "), refused
    assert "[sandbox] egress in kit.toml" in refused
    assert [h.split(b"\r\n")[0] for h in allowed.heads] == [b"GET /allowed HTTP/1.1"]
    assert other.accepted == 0
    assert report["tcp"][f"127.0.0.1:{allowed.port}"] != "connected"  # only via the proxy
