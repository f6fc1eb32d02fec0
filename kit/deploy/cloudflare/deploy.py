"""``kit deploy --target cloudflare`` from its inputs: the shim's source (:func:`load_shim`)
and what a deploy of a bundle on a runtime image wants (:func:`desired`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.bundle.build import Bundle
from kit.deploy.cloudflare.plan import CONFIG_FILE, DOCKERFILE, PAGE_DIR, Desired
from kit.deploy.cloudflare.target import (
    CloudflareTarget,
    dockerfile,
    read_jsonc,
    session_class,
    wrangler_config,
)
from kit.deploy.errors import DeployError

SHIM_MAIN = Path("src") / "index.ts"


@dataclass(frozen=True)
class Shim:
    """The Worker's source: ``worker_shim/`` of kit's checkout, never changed by a deploy."""

    root: Path
    config: dict[str, Any]
    """Its ``wrangler.jsonc``: the bindings, migrations and vars every deploy carries."""

    @property
    def main(self) -> Path:
        return self.root / SHIM_MAIN


def load_shim(root: Path) -> Shim:
    """Read the shim in ``root`` (its config and entry must be there); DeployError naming
    the fix when they are not."""
    root = root.resolve()
    path = root / CONFIG_FILE
    if not (root / SHIM_MAIN).is_file() or not path.is_file():
        raise DeployError(
            f"The Worker's source is not in {root} (no {SHIM_MAIN} and {CONFIG_FILE}): "
            "deploy from a kit checkout, or set KIT_WORKER_SHIM to its worker_shim folder."
        )
    try:
        config = read_jsonc(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DeployError(f"{path} cannot be read as JSONC: {exc}.") from None
    if not isinstance(config, dict):
        raise DeployError(f"{path} is not a JSON object.")
    session_class(config)  # the binding every deploy needs is there
    return Shim(root, config)


def desired(
    target: CloudflareTarget,
    shim: Shim,
    bundle: Bundle,
    runtime_image: str,
    secrets: Mapping[str, str],
    *,
    build_dir: Path,
    session_url: str | None = None,
    mail_address: str | None = None,
) -> Desired:
    """What a deploy of ``bundle`` on ``runtime_image`` wants, its files in ``build_dir``;
    ``session_url`` (``[web] session_url``): where the deployed page gets a session;
    ``mail_address`` (``[mail] address``): where the agent takes mail."""
    config = wrangler_config(
        target,
        shim.config,
        main=shim.main,
        dockerfile_path=build_dir / DOCKERFILE,
        build_context=bundle.path,
        bundle_digest=bundle.digest,
        limits=bundle.limits,
        egress=bundle.egress,
        page_dir=build_dir / PAGE_DIR,
        session_url=session_url,
        mail_address=mail_address,
    )
    return Desired(
        target=target,
        build_dir=build_dir,
        runtime_image=runtime_image,
        bundle_dir=bundle.path,
        bundle_digest=bundle.digest,
        config=config,
        dockerfile=dockerfile(runtime_image, bundle.digest),
        secrets=dict(secrets),
        session_url=session_url,
    )
