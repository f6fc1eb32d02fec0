"""``kit deploy --target fly`` as one call: what is wanted for a bundle and an image
(:func:`desired`), then plan, and apply unless it is a dry run (:func:`deploy`)."""

from __future__ import annotations

from collections.abc import Mapping

from kit.bundle.build import Bundle
from kit.deploy.fly.apply import Deployment, Progress, apply, observe
from kit.deploy.fly.plan import Desired, Plan, plan
from kit.deploy.fly.target import FlyTarget, gateway_config, secrets_digest

LISTEN = "[::]:8080"
"""Where a gateway listens on Fly (all of the machine's addresses: Fly's proxy and 6PN)."""
REHEARSAL_LISTEN = "${FLY_PRIVATE_IP}:8080"
"""In ``kit dev --target fly``: the emulator's machines share this host's network, each on
its own loopback address."""


def image_ref(target: FlyTarget, local_tag: str) -> str:
    """The runtime image's name in Fly's registry: the app's repository, the local tag's
    content-addressed tag."""
    return f"registry.fly.io/{target.app}:{local_tag.rpartition(':')[2]}"


def desired(
    target: FlyTarget,
    bundle: Bundle,
    image: str,
    secrets: Mapping[str, str],
    *,
    bucket_url: str,
    listen: str = LISTEN,
    extra_env: Mapping[str, str] | None = None,
) -> Desired:
    """What a deploy of ``bundle`` on ``image`` wants: the gateways run ``kit gateway`` with
    Fly sandboxes in the sandbox app, logs and leases in the bucket (``extra_env``: more
    gateway settings, e.g. a rehearsal's endpoints)."""
    env = {
        "KIT_LISTEN": listen,
        "KIT_SANDBOX": "fly",
        "KIT_FLY_SANDBOX_APP": target.sandbox_app,
        "KIT_BUCKET_URL": bucket_url,
        "KIT_LEASE_TTL_S": "30",
        "KIT_SANDBOX_POOL": "0",  # each gateway pooling machines would multiply them
        **(extra_env or {}),
    }
    config = gateway_config(target, image, env, secrets_digest(secrets))
    return Desired(target, image, bundle.digest, config, dict(secrets))


async def deploy(
    want: Desired,
    bundle: Bundle,
    local_image: str,
    to: Deployment,
    *,
    dry_run: bool = False,
    progress: Progress = lambda _: None,
) -> Plan:
    """Plan ``want`` against what is there; apply it unless ``dry_run``; the plan."""
    steps = plan(want, await observe(want, to))
    if not dry_run and not steps.up_to_date:
        await apply(steps, want, bundle, local_image, to, progress)
    return steps
