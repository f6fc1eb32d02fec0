"""``kit gateway`` on Fly (``KIT_SANDBOX=fly``): what a gateway machine of a ``kit deploy
--target fly`` runs.

======================  =====================================================================
variable                meaning
======================  =====================================================================
``KIT_FLY_SANDBOX_APP``  the app sessions' machines are made in (required)
``FLY_API_TOKEN``       a token that can make machines in it (a secret of the gateway app)
``FLY_API_HOSTNAME``    the Machines API (``https://api.machines.dev``; the emulator's URL in
                        a rehearsal)
``KIT_BUCKET_URL``      ``s3://BUCKET?endpoint_url=…&region=…``: event logs and leases under
                        ``logs/``, transcripts under ``transcripts/`` (kept by the gateway,
                        served to sandboxes: :mod:`kit.storage.remote`), the deployed bundles
                        and the pointer ``deploy/current.json`` (required)
``FLY_PRIVATE_IP``      this machine's private address (Fly sets it): the proxies and the
                        served store listen there; ``${FLY_PRIVATE_IP}`` in ``KIT_LISTEN``
``FLY_MACHINE_ID``      this gateway's id: its host id and lease owner (Fly sets it)
``FLY_REGION``          where new sandbox machines go (Fly sets it)
``KIT_MAIL_*``,          email: webhook secrets, the SMTP relay, the agent's address
``KIT_SMTP_RELAY``,     (:mod:`kit.cli.flymail`)
``KIT_POSTMARK_*``
``KIT_LOCAL_PAGE_``     ``kit dev --target fly`` only: the loopback origin of the rehearsal's
``ORIGIN``              Fly proxy (``http://127.0.0.1:PORT``). The chat page loaded from it
                        gets sessions without the API token (``POST /web/session``, as in
                        ``kit dev``); refused unless ``KIT_LISTEN`` is a loopback address,
                        which a deployed gateway's (``[::]:8080``) is not
======================  =====================================================================

The chat page is served at ``/``; its ``/web/config.json`` names the current bundle's
``[web] session_url`` (docs/web.md), so a deploy that changes it reaches the page with no
gateway restart, as the bundle reaches sandboxes.

The bundle is the pointer's: downloaded by digest, checked, unpacked into the state dir, and
followed every :data:`POINTER_POLL_S` seconds, so a bundle-only deploy reaches the next
sandbox with no gateway restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import fly
from kit.bundle import Bundle
from kit.bundle.archive import unpack
from kit.cli.flymail import FlyMailSettings, fly_mail_settings
from kit.cli.settings import SettingsError
from kit.cli.stack import release_of
from kit.deploy.fly.apply import CURRENT_KEY, bundle_key
from kit.host.auth import is_loopback_name, normalise_origin
from kit.host.errors import HostError
from kit.host.fly_sandbox import FlySandboxProvider
from kit.host.launch import Release
from kit.host.s3log import S3LogStore
from kit.ids import SandboxId, SessionId
from kit.storage.s3io import S3Bucket

log = logging.getLogger("kit.gateway")

POINTER_POLL_S = 5.0


@dataclass(frozen=True)
class FlyGatewaySettings:
    """The Fly part of ``kit gateway``'s settings (see the module docstring)."""

    sandbox_app: str
    token: str = field(repr=False)
    api_url: str
    bucket_url: str
    private_ip: str
    machine_id: str
    region: str | None
    local_page: str | None = None
    """``KIT_LOCAL_PAGE_ORIGIN``: the rehearsal proxy's loopback origin, normalised; None
    (always, when deployed): the page gets no sessions from the gateway itself."""
    mail: FlyMailSettings = field(default_factory=lambda: fly_mail_settings({}))
    """Email: webhooks, relay, address (:mod:`kit.cli.flymail`)."""

    def prefixed(self, prefix: str) -> str:
        """The bucket URL with a key prefix (``logs``, ``transcripts``)."""
        parts = urlsplit(self.bucket_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{prefix}", parts.query, ""))


def fly_gateway_settings(environ: Mapping[str, str]) -> FlyGatewaySettings:
    """Read the Fly settings; SettingsError names the variable and the fix."""
    missing = [
        name
        for name in ("KIT_FLY_SANDBOX_APP", "FLY_API_TOKEN", "KIT_BUCKET_URL", "FLY_PRIVATE_IP")
        if not environ.get(name, "").strip()
    ]
    if missing:
        raise SettingsError(
            f"KIT_SANDBOX=fly needs {', '.join(missing)}; kit deploy --target fly sets them "
            "on the gateway machines (Fly sets FLY_PRIVATE_IP)."
        )
    bucket_url = environ["KIT_BUCKET_URL"].strip()
    parts = urlsplit(bucket_url)
    if parts.scheme != "s3" or not parts.netloc or parts.path.strip("/"):
        raise SettingsError(
            f"KIT_BUCKET_URL={bucket_url.split('?')[0]!r}: give s3://BUCKET?endpoint_url=… "
            "(the bucket alone: kit keeps its own prefixes in it)."
        )
    try:
        api_url = fly.base_url(environ.get("FLY_API_HOSTNAME"))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    private_ip = environ["FLY_PRIVATE_IP"].strip()
    local_page = environ.get("KIT_LOCAL_PAGE_ORIGIN", "").strip() or None
    if local_page is not None:
        local_page = _loopback_origin(local_page)
    return FlyGatewaySettings(
        sandbox_app=environ["KIT_FLY_SANDBOX_APP"].strip(),
        token=environ["FLY_API_TOKEN"].strip(),
        api_url=api_url,
        bucket_url=bucket_url,
        private_ip=private_ip,
        machine_id=environ.get("FLY_MACHINE_ID", "").strip() or f"gateway-{private_ip}",
        region=environ.get("FLY_REGION", "").strip() or None,
        local_page=local_page,
        mail=fly_mail_settings(environ),
    )


def _loopback_origin(value: str) -> str:
    """``KIT_LOCAL_PAGE_ORIGIN``: ``http://`` a loopback address or ``localhost``, a port."""
    try:
        origin = normalise_origin(value)
        parts = urlsplit(origin)
        port = parts.port
    except (HostError, ValueError):
        origin, parts, port = "", urlsplit(""), None
    if parts.scheme != "http" or port is None or not is_loopback_name(parts.hostname):
        raise SettingsError(
            f"KIT_LOCAL_PAGE_ORIGIN={value[:200]!r}: give the loopback origin of kit dev "
            "--target fly's proxy, like http://127.0.0.1:8080, or unset it (a deployed "
            "gateway never sets it)."
        )
    return origin


class Deployed:
    """The current deploy as the bucket's pointer names it: its bundle (unpacked into
    ``bundles``) and its runtime image."""

    def __init__(self, bucket: S3Bucket, bundles: Path) -> None:
        self.bucket = bucket
        self.bundles = bundles
        self.bundle: Bundle | None = None
        self.image_ref = ""
        self._etag: str | None = None

    async def load(self) -> bool:
        """Read the pointer; fetch its bundle when it changed. Whether it changed."""
        got = await self.bucket.get_with_etag(CURRENT_KEY)
        if got is None:
            if self.bundle is None:
                raise SettingsError(
                    f"{self.bucket.url(CURRENT_KEY)} is missing: nothing is deployed yet "
                    "(run kit deploy --target fly)."
                )
            return False
        raw, etag = got
        if etag == self._etag:
            return False
        try:
            pointer = json.loads(raw)
            digest, image = str(pointer["bundle"]), str(pointer["image"])
        except (ValueError, KeyError, TypeError):
            raise SettingsError(
                f"{self.bucket.url(CURRENT_KEY)} is not a deploy pointer; deploy again."
            ) from None
        if self.bundle is None or self.bundle.digest != digest:
            data = await self.bucket.get(bundle_key(digest))
            if data is None:
                raise SettingsError(f"Bundle {digest[:12]}… is not in the bucket; deploy again.")
            self.bundle = await asyncio.to_thread(unpack, data, self.bundles, digest)
        self.image_ref, self._etag = image, etag
        return True

    def current(self) -> Bundle:
        """The deployed bundle (the pointer's, as last read)."""
        assert self.bundle is not None, "load() first"
        return self.bundle

    def release(self) -> Release:
        """What the next sandbox starts from."""
        return release_of(self.current())

    def image(self) -> str:
        return self.image_ref

    async def follow(self, on_change: Callable[[], None]) -> None:
        """Poll the pointer until cancelled; ``on_change()`` after each new deploy."""
        for _ in range(10**9):
            await asyncio.sleep(POINTER_POLL_S)
            try:
                changed = await self.load()
            except Exception as exc:
                log.warning("cannot read the current deploy (the last one stays): %s", exc)
                continue
            if changed and self.bundle is not None:
                log.info("deploy %s is current", self.bundle.digest[:16])
                on_change()


REAP_S = 60.0
"""How often a gateway looks for sandbox machines no live session holds."""


async def reap_once(provider: FlySandboxProvider, logs: S3LogStore) -> list[SandboxId]:
    """Stop every started sandbox machine whose session no gateway holds a live lease on
    (its gateway died with it idle), and mark or destroy long-stopped ones
    (:meth:`FlySandboxProvider.reap`); the machines stopped."""
    machines = await provider.api.list_machines(provider.app, metadata={"kit_role": "sandbox"})
    sessions = {m.metadata.get("kit_session", "") for m in machines if m.state == "started"}
    keep = {sid for sid in sessions if sid and await logs.leased(SessionId(sid))}
    return await provider.reap(lambda session_id: session_id in keep)


async def reap_orphans(provider: FlySandboxProvider, logs: S3LogStore) -> None:
    """:func:`reap_once` every :data:`REAP_S` until cancelled."""
    for _ in range(10**9):
        await asyncio.sleep(REAP_S)
        try:
            stopped = await reap_once(provider, logs)
        except Exception as exc:
            log.warning("reaping orphan sandbox machines failed (next pass retries): %s", exc)
            continue
        if stopped:
            log.warning("stopped %d sandbox machine(s) no live session held", len(stopped))
