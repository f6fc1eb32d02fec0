"""kit's real runtime in its image, started through the emulator, reached through the port
proxy as the shim reaches it (``getTcpPort(8080).fetch``)."""

from __future__ import annotations

import base64
import io
import secrets
import tarfile
from pathlib import Path

from emulator.containers import EMULATOR_AUTH
from kit.bundle import build_bundle, load_project
from kit.cli.settings import EXAMPLE_PROJECT
from kit.host.sandbox import Endpoint, SandboxSpec, SandboxView, runtime_config
from kit.ids import new_session_id
from kit.protocol.runtime_config import CONFIG_ENV
from tests.dockerhost import runtime_image
from tests.emulator.containers.conftest import TOKEN, Emu

RUNTIME_PORT = 8080
BOOT = """
import base64, io, os, sys, tarfile
os.makedirs("/tmp/kit", exist_ok=True)
with open("/tmp/kit/config.json", "w") as f:
    f.write(os.environ.pop("KIT_TEST_CONFIG"))
with tarfile.open(fileobj=io.BytesIO(base64.b64decode(os.environ.pop("KIT_TEST_BUNDLE")))) as t:
    t.extractall("/tmp/bundles")
for d in ("/tmp/workspace", "/tmp/home"):
    os.makedirs(d, exist_ok=True)
os.execv(sys.executable, [sys.executable, "-m", "kit.runtime"])
"""
"""The container's start: the config and bundle come in the env (no mounts on Cloudflare),
written where the config says, then the runtime runs as the image's entrypoint would."""


def _tar(folder: Path) -> str:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    return base64.b64encode(out.getvalue()).decode()


async def test_the_runtime_answers_healthz_through_the_port_proxy(emu: Emu, kit_tmp: Path) -> None:
    """``python -m kit.runtime`` in the runtime image, configured by ``runtime_config``
    (TCP 8080 in a ``--network none`` container), answers ``/healthz`` with the runtime
    token passed through and the emulator's token kept out."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    bundle = build_bundle(load_project(EXAMPLE_PROJECT), kit_tmp / "bundles")
    runtime_token = "tok-" + secrets.token_hex(8)
    spec = SandboxSpec(
        session_id=new_session_id(),
        tier="basic",
        bundle_digest=bundle.digest,
        store_url="memory://",
        model=Endpoint("http://127.0.0.1:9", "model-token"),
        runtime_token=runtime_token,
        idle_timeout_s=60,
    )
    view = SandboxView(
        bundle_dir=f"/tmp/bundles/{bundle.path.name}",
        workspace="/tmp/workspace",
        home="/tmp/home",
        tmp_dir="/tmp",
        listen=f"tcp:127.0.0.1:{RUNTIME_PORT}",
    )
    env = {
        CONFIG_ENV: "/tmp/kit/config.json",
        "KIT_TEST_CONFIG": runtime_config(spec, view).to_json(),
        "KIT_TEST_BUNDLE": _tar(bundle.path),
        "HOME": "/tmp/home",
    }
    r = await emu.start(
        "do-1",
        instance="basic",
        image=image.tag,
        env=env,
        entrypoint=["/opt/kit/bin/python", "-c", BOOT],
    )
    assert r.status_code == 201, r.text
    headers = {EMULATOR_AUTH: f"Bearer {TOKEN}", "Authorization": f"Bearer {runtime_token}"}
    for _ in range(600):  # bounded: the interpreter imports the SDK in a few seconds
        r = await emu.http.get(f"/containers/do-1/ports/{RUNTIME_PORT}/healthz", headers=headers)
        if r.status_code != 503:
            break
        exited = await emu.monitor("do-1", timeout_s=0.1)  # paces the loop; sees a crash
        assert exited.status_code == 204, exited.text
    assert r.status_code == 200, r.text
    assert r.json()["bundle"] == bundle.digest
    r = await emu.http.get(f"/containers/do-1/ports/{RUNTIME_PORT}/healthz")
    assert r.status_code == 401  # the emulator's token is not the runtime's
