"""Sandbox size tiers: Cloudflare container instance types and Fly Machine presets.

Pure data, shared by the emulator (which enforces them), the deploy planners (which
request them) and ``kit.toml`` validation, so that a bundle that runs under ``kit dev``
never asks a platform for a size it would refuse. Figures follow
https://developers.cloudflare.com/containers/platform/limits/ and Fly's machine presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Platform = Literal["cloudflare", "fly"]


@dataclass(frozen=True)
class Tier:
    """One sandbox size: CPU share, memory and disk."""

    name: str
    platform: Platform
    vcpu: float
    memory_mib: int
    disk_mb: int


_CLOUDFLARE = [
    Tier("lite", "cloudflare", 0.0625, 256, 2000),
    Tier("basic", "cloudflare", 0.25, 1024, 4000),
    Tier("standard-1", "cloudflare", 0.5, 4096, 8000),
    Tier("standard-2", "cloudflare", 1.0, 6144, 12000),
    Tier("standard-3", "cloudflare", 2.0, 8192, 16000),
    Tier("standard-4", "cloudflare", 4.0, 12288, 20000),
]

# Fly presets: shared CPUs get 1/16 of a core each in steady state; memory is the
# preset's default. Disk is the rootfs limit Fly applies to every machine (8 GB).
_FLY = [Tier(f"shared-cpu-{n}x", "fly", n / 16, 256 * n, 8000) for n in (1, 2, 4, 8)] + [
    Tier(f"performance-{n}x", "fly", float(n), 2048 * n, 8000) for n in (1, 2, 4, 8, 16)
]

TIERS: dict[str, Tier] = {t.name: t for t in _CLOUDFLARE + _FLY}
LEGACY_NAMES = {"dev": "lite", "standard": "standard-1"}
DEFAULT_TIER = "standard-1"


def get_tier(name: str) -> Tier:
    """The tier called ``name`` (legacy Cloudflare names accepted); ``KeyError`` if unknown."""
    return TIERS[LEGACY_NAMES.get(name, name)]


def tier_names() -> list[str]:
    """Every tier name, in table order, for error messages and help text."""
    return list(TIERS)
