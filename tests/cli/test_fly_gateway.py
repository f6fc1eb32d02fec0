"""`kit gateway` in Fly mode (KIT_SANDBOX=fly) as a deployed gateway machine runs it: the
bundle from the bucket's pointer, each session's sandbox a machine of the Fly API emulator
(a container of the runtime image), event logs and transcripts in the bucket (moto), the
sandbox holding no storage keys; a new deploy's bundle reaches the next sandbox."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
from pathlib import Path

import boto3
import pytest

from emulator.fly_api import DockerRunner, serve
from emulator.model import ScenarioSource
from emulator.model import create_app as create_model_app
from fly import FlyClient
from kit.bundle import build_bundle, load_project
from kit.bundle.archive import pack
from kit.cli.settings import EXAMPLE_PROJECT
from kit.client import SessionClient, create_session
from tests.conftest import serve_on_loopback
from tests.dockerhost import runtime_image
from tests.kitproc import start_gateway

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FLY_TOKEN = "fly-gateway-test-token"
API_TOKEN = "gateway-test-token-0123456789"
MODEL_KEY = "offline-key"
SANDBOX_APP = "kit-fly-gw-test-sandboxes"
BUCKET = "kit-fly-gw-test"
TURN_TIMEOUT_S = 180.0


def _put(s3: object, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)  # type: ignore[attr-defined]


async def test_a_conversation_through_a_fly_mode_gateway(kit_tmp: Path, s3_endpoint: str) -> None:
    """A client's turn runs in a machine and answers; the transcript is in the bucket
    under transcripts/ and the sandbox's env and files hold no storage key; after a new
    bundle is pointed to and the session's machine is killed, the next turn runs in a
    machine given the new bundle, and still answers."""
    image = runtime_image()  # skips, saying why, where Docker cannot run
    project = load_project(EXAMPLE_PROJECT)
    bundle = build_bundle(project, kit_tmp / "built")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    _put(s3, f"bundles/{bundle.digest}.tar", pack(bundle))
    pointer = {"bundle": bundle.digest, "image": image.tag, "deployed_at": 0}
    _put(s3, "deploy/current.json", json.dumps(pointer).encode())
    model_app = create_model_app(
        ScenarioSource.from_paths(list(project.scenarios)), api_key=MODEL_KEY
    )
    async with (
        serve_on_loopback(model_app) as model_url,
        DockerRunner(network="host") as runner,
        serve(token=FLY_TOKEN, runner=runner) as fly_api,
        FlyClient(FLY_TOKEN, base_url=fly_api.url) as api,
    ):
        await api.create_app(SANDBOX_APP, "personal")
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            KIT_SANDBOX="fly",
            KIT_FLY_SANDBOX_APP=SANDBOX_APP,
            FLY_API_TOKEN=FLY_TOKEN,
            FLY_API_HOSTNAME=fly_api.url,
            KIT_BUCKET_URL=f"s3://{BUCKET}?endpoint_url={s3_endpoint}&region=us-east-1",
            FLY_PRIVATE_IP="127.0.0.1",
            FLY_MACHINE_ID="gw-test-1",
            KIT_LISTEN="${FLY_PRIVATE_IP}:0",
            KIT_API_TOKEN=API_TOKEN,
            ANTHROPIC_API_KEY=MODEL_KEY,
            KIT_MODEL_UPSTREAM=model_url,
            KIT_STATE_DIR=str(kit_tmp / "state"),
            AWS_ACCESS_KEY_ID="kit-test",
            AWS_SECRET_ACCESS_KEY="kit-test",
        )
        proc, url = await start_gateway(env, REPO)
        try:
            info = await create_session(url, API_TOKEN)
            async with (
                asyncio.timeout(TURN_TIMEOUT_S),
                SessionClient(info.ws_url, info.token) as client,
            ):
                events = [e async for e in client.turn("Can I still return order 1042?")]
            assert events[-1].kind == "result", events[-1]
            assert "1042" in str(events[-1].data["text"])
            (machine,) = await api.list_machines(
                SANDBOX_APP, metadata={"kit_session": info.session_id}
            )
            config = json.dumps(machine.config)
            assert "kit-test" not in config  # no storage key in the sandbox's env or files
            assert "kit+http://127.0.0.1:" in json.dumps(_runtime_config(machine.config))
            stored = s3.list_objects_v2(Bucket=BUCKET, Prefix="transcripts/")
            assert stored.get("KeyCount", 0) > 0

            (kit_tmp / "v2").mkdir()
            changed_project = kit_tmp / "v2" / "support-bot"
            shutil.copytree(EXAMPLE_PROJECT, changed_project)
            (changed_project / "prompt.md").write_text(
                (EXAMPLE_PROJECT / "prompt.md").read_text() + "\nBe brief.\n"
            )
            new = build_bundle(load_project(changed_project), kit_tmp / "built")
            assert new.digest != bundle.digest
            _put(s3, f"bundles/{new.digest}.tar", pack(new))
            _put(s3, "deploy/current.json", json.dumps({**pointer, "bundle": new.digest}).encode())
            await api.signal_machine(SANDBOX_APP, machine.id, "SIGKILL")
            await api.wait(SANDBOX_APP, machine.id, "stopped", timeout_s=60)
            for _ in range(120):  # the gateway polls the pointer every 5 s
                if (kit_tmp / "state" / "bundles" / new.digest[:32]).is_dir():
                    break
                await asyncio.sleep(0.25)
            async with (
                asyncio.timeout(TURN_TIMEOUT_S),
                SessionClient(info.ws_url, info.token) as client,
            ):
                events = [e async for e in client.turn("Can I still return order 1042?")]
            assert events[-1].kind == "result", events[-1]
            (machine,) = await api.list_machines(
                SANDBOX_APP, states=("started",), metadata={"kit_session": info.session_id}
            )
            assert f"/bundles/{new.digest[:32]}/" in json.dumps(machine.config["files"])
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)


def _runtime_config(config: dict[str, object]) -> dict[str, object]:
    for item in config.get("files") or []:  # type: ignore[attr-defined]
        if item["guest_path"].endswith("config.json"):
            found: dict[str, object] = json.loads(base64.b64decode(item["raw_value"]))
            return found
    raise AssertionError("no runtime config among the machine's files")
