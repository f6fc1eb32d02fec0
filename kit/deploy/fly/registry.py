"""Where Fly machines pull the runtime image from (:class:`kit.deploy.fly.apply.Registry`).

- :class:`LocalRegistry`: this machine's Docker daemon, for ``kit dev --target fly`` (the
  emulator's machines run images of the same daemon): a push is a ``docker tag``.
- :class:`FlyRegistry`: ``registry.fly.io``: ``docker login`` with the deploy's Fly token
  (user ``x``), then ``docker push``. Needs the network; checked by the ``live`` tests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator

from kit.deploy.errors import DeployError

FLY_REGISTRY = "registry.fly.io"


async def _docker(*args: str, stdin: bytes | None = None, check: bool = True) -> tuple[int, str]:
    docker = shutil.which("docker")
    if docker is None:
        raise DeployError(
            "docker is not installed; install docker.io and start it (scripts/docker-up)."
        )
    proc = await asyncio.create_subprocess_exec(
        docker,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    code = proc.returncode or 0
    if check and code:
        tail = (err or out).decode(errors="replace").strip().splitlines()[-1:] or [""]
        verb = next((a for a in args if not a.startswith("-") and "/" not in a), "call")
        raise DeployError(f"docker {verb} failed ({code}): {tail[0]}")
    return code, out.decode(errors="replace")


class LocalRegistry:
    """The local Docker daemon as the registry."""

    async def has(self, ref: str) -> bool:
        code, _ = await _docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return code == 0

    async def push(self, local: str, ref: str) -> None:
        await _docker("tag", local, ref)

    async def forget(self, app: str) -> list[str]:
        """Remove the app's tags (``registry.fly.io/<app>:*``), as deleting the app does on
        Fly; the tags removed."""
        _, out = await _docker(
            "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", f"{FLY_REGISTRY}/{app}"
        )
        tags = [line for line in out.split() if not line.endswith(":<none>")]
        for tag in tags:
            await _docker("image", "rm", tag, check=False)
        return tags


class FlyRegistry:
    """``registry.fly.io``, logged in with ``token`` for each call in a throwaway Docker
    config folder (the token is never left in ``~/.docker/config.json``)."""

    def __init__(self, token: str) -> None:
        self._token = token

    @contextlib.asynccontextmanager
    async def _logged_in(self) -> AsyncIterator[str]:
        with tempfile.TemporaryDirectory(prefix="kit-docker-") as config:
            await _docker(
                "--config",
                config,
                "login",
                FLY_REGISTRY,
                "--username",
                "x",
                "--password-stdin",
                stdin=self._token.encode(),
            )
            yield config

    async def has(self, ref: str) -> bool:
        async with self._logged_in() as config:
            code, _ = await _docker("--config", config, "manifest", "inspect", ref, check=False)
        return code == 0

    async def push(self, local: str, ref: str) -> None:
        await _docker("tag", local, ref)
        async with self._logged_in() as config:
            await _docker("--config", config, "push", ref)

    async def forget(self, app: str) -> list[str]:
        """Nothing: deleting the app deletes its repository on Fly."""
        return []
