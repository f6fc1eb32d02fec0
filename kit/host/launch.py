"""Starting one sandbox: its tokens, its spec, the provider call, the runtime client.

A session starts a sandbox when a turn needs one; the pool (:mod:`kit.host.pool`) starts
them ahead of their sessions. Both go through :func:`launch`, and both get a
:class:`LiveSandbox`, which owns the sandbox's per-sandbox tokens and gives them back
(:meth:`LiveSandbox.retire`) once the sandbox is gone.

What a sandbox starts from is a :class:`Release`: the agent's bundle and its sandbox
settings. ``kit dev`` swaps the release when the project changes on disk; sandboxes
already running keep theirs, new ones take the new one.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kit.bundle.limits import DEFAULT_LIMITS, Limits
from kit.host.errors import SandboxError
from kit.host.files import SessionFiles
from kit.host.runtime_client import RuntimeClient
from kit.host.sandbox import Endpoint, Sandbox, SandboxProvider, SandboxSpec
from kit.host.spend import SpendMeter
from kit.ids import SessionId

GRACE_S = 30.0
"""Default :attr:`SessionEnv.grace_s`: how long a sandbox with no open turn and no client
(or a pooled sandbox handed to a new session that has not used it) is kept."""


@dataclass(frozen=True)
class Release:
    """One build of the agent: what a new sandbox starts from."""

    bundle_dir: Path
    digest: str
    tier: str
    idle_timeout_s: int
    """Seconds without a turn before a sandbox stops, clients or not (the platforms'
    sleep-after); with no client the shorter :attr:`SessionEnv.grace_s` applies."""
    limits: Limits = DEFAULT_LIMITS
    """What the model proxy lets a sandbox of this release spend (``kit.toml`` ``[limits]``)."""


@dataclass(frozen=True)
class SessionEnv:
    """What sessions need from their host to start sandboxes."""

    provider: SandboxProvider
    issue_model_token: Callable[[SessionId, Limits], str]
    """Issues a sandbox's model proxy token, whose calls the release's limits govern."""
    revoke_model_token: Callable[[str], None]
    model_endpoint: str
    """The model proxy as sandboxes reach it: ``unix:/path`` or ``http://host:port``."""
    store_url: Callable[[str], str]
    """A session's transcript store URL."""
    release: Callable[[], Release]
    """The current release (``kit dev`` replaces it when the project changes)."""
    grace_s: float = GRACE_S
    """How long a sandbox with no open turn and no client is kept before it stops, and how
    long a session with neither stays loaded."""
    advise: Callable[[SessionId, str], None] | None = None
    """Where the tier advisor's lines go (``kit dev`` prints them); None: nowhere."""
    issue_egress_token: Callable[[SessionId], str] | None = None
    """Issues a sandbox's egress proxy token (:class:`kit.host.egress.EgressProxy`); None,
    or no ``egress_endpoint``: sandboxes get no egress proxy."""
    revoke_egress_token: Callable[[str], None] | None = None
    egress_endpoint: str | None = None
    """The egress proxy as sandboxes reach it: ``unix:/path`` (providers bind or mount the
    socket into each sandbox) or ``http://host:port``."""
    issue_store_token: Callable[[SessionId], str] | None = None
    """Issues a sandbox's token for the transcript store the host serves (``kit+http``,
    :mod:`kit.host.store_routes`): held by the runtime alone, never by the CLI or its tools
    (the model token, in the CLI's environment, opens no transcript). None: no served store."""
    revoke_store_token: Callable[[str], None] | None = None
    spend: SpendMeter | None = None
    """The model proxy's meter: sessions tell it when their turns start and take its
    refusals to tell clients (None: no spend limits are enforced)."""
    files: SessionFiles | None = None
    """Where sessions' files are kept (:mod:`kit.host.files`); each sandbox is given its
    session's before a turn runs there. None: sessions have no files."""

    @property
    def tier(self) -> str:
        """The tier new sandboxes start at."""
        return self.release().tier


@dataclass
class LiveSandbox:
    """A started sandbox with the tokens it was given and the release it runs."""

    sandbox: Sandbox
    runtime: RuntimeClient
    release: Release
    model_token: str
    egress_token: str | None
    runtime_token: str
    store_token: str | None = None
    retired: bool = False

    async def retire(self, env: SessionEnv) -> None:
        """The sandbox is gone (or about to be): revoke its tokens, close its client. Once."""
        if self.retired:
            return
        self.retired = True
        _revoke(env, self.model_token, self.egress_token, self.store_token)
        with contextlib.suppress(Exception):
            await self.runtime.aclose()


async def launch(env: SessionEnv, session_id: SessionId, release: Release) -> LiveSandbox:
    """Start a sandbox for ``session_id`` from ``release``; :class:`SandboxError` if it fails.

    The tokens issued for it are revoked again when the start fails.
    """
    left = await env.provider.find(session_id)
    if left is not None:
        # A sandbox this session no longer owns (a host that died left it): never two
        # sandboxes on one transcript. The session's own sandbox is gone before it starts
        # another, so this is never a live one of ours.
        await left.kill(reason="orphan")
        await left.wait()
    model_token = env.issue_model_token(session_id, release.limits)
    egress = None
    store_token = None
    runtime_token = secrets.token_urlsafe(24)
    try:
        if env.issue_egress_token is not None and env.egress_endpoint:
            egress = Endpoint(env.egress_endpoint, env.issue_egress_token(session_id))
        if env.issue_store_token is not None:
            store_token = env.issue_store_token(session_id)
        spec = SandboxSpec(
            session_id=session_id,
            tier=release.tier,
            bundle_digest=release.digest,
            store_url=env.store_url(session_id),
            model=Endpoint(env.model_endpoint, model_token),
            runtime_token=runtime_token,
            idle_timeout_s=release.idle_timeout_s,
            egress=egress,
            store_token=store_token,
        )
        sandbox = await env.provider.start(spec)
    except BaseException as exc:
        _revoke(env, model_token, egress.token if egress else None, store_token)
        if isinstance(exc, SandboxError) or not isinstance(exc, Exception):
            raise
        raise SandboxError(f"Starting a sandbox failed: {exc}") from exc
    runtime = RuntimeClient(sandbox.endpoint, runtime_token, keep_alive=True)
    egress_token = egress.token if egress else None
    return LiveSandbox(
        sandbox, runtime, release, model_token, egress_token, runtime_token, store_token
    )


def _revoke(
    env: SessionEnv, model_token: str, egress_token: str | None, store_token: str | None
) -> None:
    """Stop accepting a sandbox's tokens (it is gone, or never started)."""
    env.revoke_model_token(model_token)
    if egress_token and env.revoke_egress_token is not None:
        env.revoke_egress_token(egress_token)
    if store_token and env.revoke_store_token is not None:
        env.revoke_store_token(store_token)
