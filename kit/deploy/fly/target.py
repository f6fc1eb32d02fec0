"""What a Fly deployment is made of, as data: names, sizes and the gateway machine's config.

A deployment named ``app`` is two Fly apps and one bucket (docs/deploy-fly.md):

- ``<app>``: the gateway, ``kit gateway`` on :data:`GATEWAY_PORT` behind Fly's proxy (443, TLS
  and HTTP handlers), ``gateways`` machines; its secrets hold the model API key, the host
  API token, the object store's keys and a Fly token for the sandbox app;
- ``<app>-sandboxes``: one machine per active session, made and reaped by the gateways; no
  public address, no secrets;
- the bucket (Tigris, ``s3://``): event logs, leases, transcripts, bundles and the pointer to
  the current deploy (``deploy/current.json``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fly import MachineConfig, MachineGuest
from kit.deploy.errors import DeployError
from kit.host.errors import SandboxError
from kit.host.fly_sandbox import guest_of

GATEWAY_PORT = 8080
SANDBOX_SUFFIX = "-sandboxes"
APP_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,44}[a-z0-9])?$")
"""Fly app names: lowercase letters, digits and dashes; kit keeps room for its suffix."""
ROLE_KEY = "kit_role"
CONFIG_KEY = "kit_config"
"""Metadata: the sha256 of the config kit gave a gateway machine (compared on redeploy)."""
SECRETS_KEY = "kit_secrets"
"""Metadata: the sha256 of the secrets a gateway machine was started with."""


@dataclass(frozen=True)
class FlyTarget:
    """Where and how big a Fly deployment is. ``app`` names it (the gateway app); the rest
    have defaults."""

    app: str
    org: str = "personal"
    region: str = "iad"
    gateways: int = 2
    bucket: str = ""
    """The bucket; default ``<app>-kit``."""

    def __post_init__(self) -> None:
        if not APP_NAME_RE.match(self.app):
            raise DeployError(
                f"Fly app name {self.app!r} must be 1-46 lowercase letters, digits and dashes, "
                "not starting or ending with a dash; pass another with --app."
            )
        if not 1 <= self.gateways <= 10:
            raise DeployError(f"--gateways must be 1 to 10, got {self.gateways}.")

    @property
    def sandbox_app(self) -> str:
        """The app the gateways make the sessions' machines in."""
        return f"{self.app}{SANDBOX_SUFFIX}"

    @property
    def bucket_name(self) -> str:
        return self.bucket or f"{self.app}-kit"

    @property
    def url(self) -> str:
        """Where clients reach the gateway."""
        return f"https://{self.app}.fly.dev"


def guest_for(tier_name: str) -> MachineGuest:
    """The Fly guest a tier runs at (the one sandbox machines get: :func:`guest_of`)."""
    try:
        return guest_of(tier_name)
    except SandboxError as exc:
        raise DeployError(f"[sandbox] tier: {exc}") from None


def digest(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def secrets_digest(secrets: Mapping[str, str]) -> str:
    """What a gateway's ``kit_secrets`` metadata holds for ``secrets`` (names and values)."""
    return digest(sorted(secrets.items()))


def gateway_config(
    target: FlyTarget, image: str, env: Mapping[str, str], secrets_sha: str
) -> MachineConfig:
    """The config of every gateway machine: ``kit gateway`` from the runtime image, behind
    Fly's proxy on 443, health-checked on ``/healthz``; its metadata carries the digest of
    this config and of the secrets it reads (so a redeploy updates it only when either
    changed)."""
    config: MachineConfig = {
        "image": image,
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024},
        "init": {"entrypoint": ["/opt/kit/bin/kit"], "cmd": ["gateway"]},
        "env": dict(sorted(env.items())),
        "services": [
            {
                "protocol": "tcp",
                "internal_port": GATEWAY_PORT,
                "ports": [
                    {"port": 443, "handlers": ["tls", "http"]},
                    {"port": 80, "handlers": ["http"], "force_https": True},
                ],
                "autostart": True,
                "autostop": "off",
                "min_machines_running": target.gateways,
                "concurrency": {"type": "connections", "soft_limit": 500, "hard_limit": 2000},
            }
        ],
        "checks": {
            "health": {
                "type": "http",
                "port": GATEWAY_PORT,
                "method": "GET",
                "path": "/healthz",
                "interval": "10s",
                "timeout": "2s",
                "grace_period": "10s",
            }
        },
        "restart": {"policy": "always"},
        "stop_config": {"signal": "SIGTERM", "timeout": "30s"},
    }
    config["metadata"] = {
        ROLE_KEY: "gateway",
        CONFIG_KEY: digest(config),
        SECRETS_KEY: secrets_sha,
    }
    return config
