"""The Cloudflare shim (worker_shim/) under ``wrangler dev`` on loopback, for tests: kit's
own runner (:mod:`kit.cli.wrangler`, what ``kit dev --target cloudflare`` uses: offline,
bound to 127.0.0.1, containers off, secrets in a private ``.dev.vars``), with a fresh API
token and the Worker vars a test asks for.

:func:`kit.cli.wrangler.wrangler_dev` drains wrangler's output on the event loop that
started it, so a fixture that yields a :class:`Shim` for more than one test needs a loop
that outlives them: ``loop_scope="module"``, and the tests marked the same.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kit.cli.wrangler import free_port, wrangler_dev, write_config


@dataclass
class Shim:
    """A running shim: its URL and API token."""

    url: str
    api_token: str

    def _post(self, path: str, body: Any = None) -> Any:
        # Sync on purpose: kit's store contract makes its stores from a plain function.
        answer = httpx.post(
            f"{self.url}{path}",
            json=body,
            headers={"authorization": f"Bearer {self.api_token}"},
            trust_env=False,
            timeout=30,
        )
        assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def new_session(self) -> str:
        """A new session's id (POST /v1/sessions)."""
        return str(self._post("/v1/sessions")["session_id"])

    def store_token(self, session_id: str, *, any_key: bool = False) -> tuple[str, str]:
        """(store URL, store token) of a session (POST /v1/sessions/{id}/store-token)."""
        answer = self._post(f"/v1/sessions/{session_id}/store-token", {"any_key": any_key})
        return str(answer["store_url"]), str(answer["token"])


@contextlib.asynccontextmanager
async def running_shim(
    work: Path, variables: Mapping[str, str] | None = None
) -> AsyncIterator[Shim]:
    """The shim under ``wrangler dev`` at a free loopback port, its state in ``work``."""
    token = "kit-api-" + secrets.token_urlsafe(24)
    config = write_config(
        work / "wrangler",
        name="kit-shim-test",
        tier="basic",
        variables=dict(variables or {}),
        secrets={"KIT_API_TOKEN": token},
    )
    async with wrangler_dev(config, port=free_port(), persist=work / "state") as url:
        yield Shim(url, token)
