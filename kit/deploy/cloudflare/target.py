"""What a Cloudflare deployment is made of, as data: its names, its container size, the
wrangler config and the Dockerfile of its image.

A deployment named ``worker`` (docs/deploy-cloudflare.md) is:

- the Worker ``worker``: the shim (``worker_shim/src/index.ts``) with one ``SessionDO`` per
  session (the shim's own bindings and migrations, read from its ``wrangler.jsonc``); its
  vars name the tier and the bundle and carry the bundle's ``[limits]``
  (:func:`limits_var`, enforced by the shim's model route) and its ``[sandbox] egress``
  allowlist (:func:`egress_var`, enforced by the shim's outbound interception), its secrets are
  ``KIT_API_TOKEN`` and ``ANTHROPIC_API_KEY``; its static assets are the chat page's files
  (:data:`PAGE`, copied from ``kit/web`` into the build folder), which the Worker serves at
  ``/`` and ``/web/…`` (``worker_shim/src/web.ts``), and ``kit.toml``'s ``[web]
  session_url`` is its var :data:`WEB_SESSION_URL_VAR`;
- the container application ``<worker>-sandboxes``: each ``SessionDO``'s container, at the
  tier's instance type, from an image wrangler builds from :func:`dockerfile`: kit's runtime
  image with the bundle copied in at ``/bundles/<digest[:32]>`` (where a Fly sandbox has it).

Nothing here touches the disk or the network: :mod:`.apply` writes and runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.bundle.allowlist import parse_rule
from kit.bundle.limits import Limits
from kit.deploy.errors import DeployError
from kit.host.web import PAGE_FILES
from kit.tiers import TIERS, get_tier

WORKER_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,52}[a-z0-9])?$")
"""Worker names: one DNS label of ``<worker>.<subdomain>.workers.dev``, with room for the
container application's suffix."""
CONTAINER_SUFFIX = "-sandboxes"
INSTANCE_TYPES = tuple(name for name, tier in TIERS.items() if tier.platform == "cloudflare")
"""The container instance types a kit tier may name (reference: cloudflare.md §1)."""
DEFAULT_MAX_INSTANCES = 20
"""wrangler's own default (``container.max_instances ?? 20``): at most this many sessions
have a container at once."""
MAX_MAX_INSTANCES = 1000
SESSION_BINDING = "SESSION"
"""The shim's Durable Object binding (worker_shim/src/env.ts): its class runs containers."""
LIMITS_VAR = "KIT_LIMITS"
"""The var that carries the bundle's ``[limits]`` to the shim (worker_shim/src/env.ts)."""
EGRESS_VAR = "KIT_EGRESS"
"""The var that carries the bundle's ``[sandbox] egress`` allowlist to the shim's outbound
interception (worker_shim/src/egress.ts)."""
MAIL_ADDRESS_VAR = "KIT_MAIL_ADDRESS"
"""The var that gives the shim's ``email()`` handler the agent's mail address (``[mail]
address``); without it the Worker refuses all mail (docs/email.md)."""
MAIL_BINDING = "KIT_MAIL"
"""The shim's send_email binding (worker_shim/wrangler.jsonc): replies leave through it."""
WEB_SESSION_URL_VAR = "KIT_WEB_SESSION_URL"
"""The var that tells the deployed page where it gets a session (``[web] session_url``)."""
ASSETS_BINDING = "ASSETS"
"""The shim's static assets binding (worker_shim/src/env.ts): the chat page's files."""
PAGE = ("index.html", *PAGE_FILES)
"""The chat page's files a Worker ships as its static assets (all it serves of them)."""
MAX_VAR_BYTES = 5 * 1024
"""Cloudflare's limit on one Worker variable (5 KB)."""
BUNDLES = "/bundles"
"""Where the runtime finds bundles in its container (as on a Fly machine)."""
CONFIG_HEADER = (
    "// Written by `kit deploy --target cloudflare` (kit/deploy/cloudflare/target.py) from\n"
    "// worker_shim/wrangler.jsonc; edits are overwritten by the next deploy.\n"
)


@dataclass(frozen=True)
class CloudflareTarget:
    """Where and how big a Cloudflare deployment is: the Worker's name, the container
    instance type (the agent's ``[sandbox] tier``) and how many containers may run."""

    worker: str
    tier: str
    max_instances: int = DEFAULT_MAX_INSTANCES

    def __post_init__(self) -> None:
        if not WORKER_NAME_RE.match(self.worker):
            raise DeployError(
                f"Worker name {self.worker!r} must be 1-54 lowercase letters, digits and "
                "dashes, not starting or ending with a dash; pass another with --app."
            )
        if self.tier not in INSTANCE_TYPES:
            raise DeployError(instance_type_error(self.tier))
        if not 1 <= self.max_instances <= MAX_MAX_INSTANCES:
            raise DeployError(
                f"--max-instances must be 1 to {MAX_MAX_INSTANCES}, got {self.max_instances}."
            )

    @property
    def container_app(self) -> str:
        """The container application wrangler makes for the sessions' containers."""
        return f"{self.worker}{CONTAINER_SUFFIX}"


def instance_type_error(tier: str) -> str:
    """Why ``tier`` cannot be a Cloudflare container's size, naming the fix."""
    try:
        platform = get_tier(tier).platform
    except KeyError:
        platform = None
    what = "a Fly machine size" if platform == "fly" else "no Cloudflare instance type"
    return (
        f"[sandbox] tier {tier!r} in kit.toml is {what}; Cloudflare containers run at one of "
        f"{', '.join(INSTANCE_TYPES)}: set [sandbox] tier to one of them (docs/tiers.md)."
    )


def read_jsonc(text: str) -> Any:
    """Parse wrangler's JSONC: JSON with ``//`` and ``/* */`` comments and trailing commas
    (never inside strings). ``ValueError`` when it is not valid."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("an unclosed /* comment")
            i = end + 2
        else:
            out.append(c)
            i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def session_class(shim_config: dict[str, Any]) -> str:
    """The class of the shim's ``SESSION`` binding; DeployError if it has none."""
    bindings = shim_config.get("durable_objects", {}).get("bindings", [])
    for binding in bindings if isinstance(bindings, list) else []:
        if isinstance(binding, dict) and binding.get("name") == SESSION_BINDING:
            return str(binding["class_name"])
    raise DeployError(
        f"worker_shim/wrangler.jsonc binds no Durable Object as {SESSION_BINDING}; the shim "
        "is incomplete (restore it from kit's checkout)."
    )


def page_assets(shim_config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The shim's ``assets`` entry (the page's files, bound as ``ASSETS``, the Worker run
    first) with its folder at ``directory`` (absolute: the config is written elsewhere);
    DeployError if the shim has none."""
    assets = shim_config.get("assets")
    if not isinstance(assets, dict) or assets.get("binding") != ASSETS_BINDING:
        raise DeployError(
            f"worker_shim/wrangler.jsonc binds no static assets as {ASSETS_BINDING} (the chat "
            "page); the shim is incomplete (restore it from kit's checkout)."
        )
    return {**assets, "directory": str(directory)}


def limits_var(limits: Limits) -> str:
    """The value of :data:`LIMITS_VAR`: ``limits`` as the bundle manifest stores them (the
    keys that are set, ``[limits.prices]`` in file order), compact JSON; ``{}`` when none
    is set, and the shim applies kit's defaults (worker_shim/src/limits.ts). DeployError
    when it is over the 5 KB a Worker variable may hold."""
    text = json.dumps(limits.to_manifest(), separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > MAX_VAR_BYTES:
        raise DeployError(
            f"kit.toml's [limits] take {len(text.encode())} bytes as the Worker variable "
            f"{LIMITS_VAR}, over the {MAX_VAR_BYTES} a Cloudflare variable may hold: list fewer "
            'models or [limits.prices] entries (a glob such as "claude-x*" covers many).'
        )
    return text


def egress_var(entries: tuple[str, ...]) -> str:
    """The value of :data:`EGRESS_VAR`: the allowlist's rules as parsed by
    :func:`kit.bundle.allowlist.parse_rule` (``[{"host", "wildcard", "port"}]``, ``port``
    null for 443 and 80), compact JSON; ``[]`` for none. DeployError when it is over the
    5 KB a Worker variable may hold."""
    rules = [parse_rule(entry) for entry in entries]
    text = json.dumps(
        [{"host": r.host, "wildcard": r.wildcard, "port": r.port} for r in rules],
        separators=(",", ":"),
    )
    if len(text.encode()) > MAX_VAR_BYTES:
        raise DeployError(
            f"kit.toml's [sandbox] egress takes {len(text.encode())} bytes as the Worker "
            f"variable {EGRESS_VAR}, over the {MAX_VAR_BYTES} a Cloudflare variable may hold: "
            'list fewer hosts (a wildcard such as "*.example.com" covers many).'
        )
    return text


def bundle_path(digest: str) -> str:
    """Where the bundle ``digest`` is in the image."""
    return f"{BUNDLES}/{digest[:32]}"


def dockerfile(runtime_image: str, bundle_digest: str) -> str:
    """The Dockerfile wrangler builds the containers' image from (its build context is the
    bundle's folder): the runtime image with the bundle copied in, byte for byte and
    root-owned, so a bundle change makes a new top layer, never a new runtime image."""
    return (
        "# kit's runtime image with one agent bundle: each session's container on Cloudflare.\n"
        "# Written by `kit deploy --target cloudflare`; the build context is the bundle's\n"
        "# folder (<state>/bundles/<digest>).\n"
        f"FROM {runtime_image}\n"
        f"COPY . {bundle_path(bundle_digest)}/\n"
        f"LABEL kit.bundle={bundle_digest}\n"
    )


def wrangler_config(
    target: CloudflareTarget,
    shim_config: dict[str, Any],
    *,
    main: Path,
    dockerfile_path: Path,
    build_context: Path,
    bundle_digest: str,
    limits: Limits,
    egress: tuple[str, ...] = (),
    page_dir: Path,
    session_url: str | None = None,
    mail_address: str | None = None,
) -> dict[str, Any]:
    """The Worker's wrangler config: the shim's (its bindings, migrations, compatibility
    date and vars; its ``dev`` settings left out), named ``target.worker``, ``main``
    pointing at the shim's entry, the chat page's files from ``page_dir`` as its assets,
    the tier, the bundle, its ``limits`` and ``egress`` allowlist as vars (and
    ``session_url``, ``[web] session_url``, and ``mail_address``, the agent's mail address,
    when set), and the ``containers`` entry of the session class at the tier's instance
    type. The shim's send_email binding comes with its config."""
    config = {k: v for k, v in shim_config.items() if k not in ("$schema", "dev")}
    vars_ = config.get("vars", {})
    web = {} if session_url is None else {WEB_SESSION_URL_VAR: session_url}
    mail = {} if mail_address is None else {MAIL_ADDRESS_VAR: mail_address}
    config.update(
        name=target.worker,
        main=str(main),
        workers_dev=True,
        assets=page_assets(shim_config, page_dir),
        vars={
            **(vars_ if isinstance(vars_, dict) else {}),
            "KIT_SANDBOX_TIER": target.tier,
            "KIT_BUNDLE_DIGEST": bundle_digest,
            LIMITS_VAR: limits_var(limits),
            EGRESS_VAR: egress_var(egress),
            **web,
            **mail,
        },
        containers=[
            {
                "name": target.container_app,
                "class_name": session_class(shim_config),
                "image": str(dockerfile_path),
                "image_build_context": str(build_context),
                "instance_type": target.tier,
                "max_instances": target.max_instances,
            }
        ],
    )
    return config
