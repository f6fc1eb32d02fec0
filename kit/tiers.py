"""Sandbox size tiers: Cloudflare container instance types and Fly Machine presets.

Pure data, shared by the emulator (which enforces them), the deploy planners (which
request them) and ``kit.toml`` validation, so that a bundle that runs under ``kit dev``
never asks a platform for a size it would refuse. Figures follow
https://developers.cloudflare.com/containers/platform/limits/ and Fly's machine presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kit.errors import KitError

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


class TierError(KitError):
    """A custom size the platform would refuse; the message names the rule."""


def cloudflare_custom(vcpu: float, memory_mib: int, disk_mb: int) -> Tier:
    """A Cloudflare custom instance size (``instance_type: {vcpu, memory_mib, disk_mb}``),
    checked against the platform's rules: 1 to 4 vCPU, at most 12 GiB and at least 3 GiB per
    vCPU of memory, at most 2 GB of disk per GiB of memory."""
    if not 1 <= vcpu <= 4:
        raise TierError(
            f"vcpu must be between 1 and 4, got {vcpu} (fractions exist only as lite, basic "
            "and standard-1)."
        )
    if memory_mib > 12 * 1024:
        raise TierError(f"memory_mib must be at most 12288 (12 GiB), got {memory_mib}.")
    if memory_mib < 3 * 1024 * vcpu:
        raise TierError(
            f"memory_mib must be at least 3 GiB per vCPU ({int(3 * 1024 * vcpu)} for {vcpu} "
            f"vCPU), got {memory_mib}."
        )
    if disk_mb > 2000 * memory_mib / 1024:
        raise TierError(
            f"disk_mb must be at most 2 GB per GiB of memory ({int(2000 * memory_mib / 1024)} "
            f"for {memory_mib} MiB), got {disk_mb}."
        )
    return Tier(f"custom-{vcpu:g}-{memory_mib}-{disk_mb}", "cloudflare", vcpu, memory_mib, disk_mb)


def fly_sized(preset: str, memory_mb: int) -> Tier:
    """A Fly preset with more memory than its default: 256 MB to 2 GB per shared CPU, 2 GB to
    8 GB per performance CPU, in multiples of 256 MB."""
    base = get_tier(preset)
    if base.platform != "fly":
        raise TierError(f"{preset!r} is not a Fly preset.")
    cpus = round(base.vcpu * 16) if preset.startswith("shared") else round(base.vcpu)
    low, high = (
        (256 * cpus, 2048 * cpus)
        if preset.startswith("shared")
        else (
            2048 * cpus,
            8192 * cpus,
        )
    )
    if memory_mb % 256 or not low <= memory_mb <= high:
        raise TierError(
            f"memory_mb for {preset} must be a multiple of 256 between {low} and {high}, "
            f"got {memory_mb}."
        )
    return Tier(f"{preset}@{memory_mb}", "fly", base.vcpu, memory_mb, base.disk_mb)


@dataclass(frozen=True)
class FlyGuest:
    """A Fly machine size: ``guest.cpu_kind``, ``cpus`` and ``memory_mb``."""

    cpu_kind: Literal["shared", "performance"]
    cpus: int
    memory_mb: int


def fly_guest(name: str) -> FlyGuest:
    """The Fly size a tier runs at: a Fly preset as named (``shared-cpu-2x@1024`` included);
    a Cloudflare tier as the smallest shared, else performance, size with at least its CPU
    share (a shared CPU is 1/16 of a core in steady state) that can hold its memory (256 MB
    to 2 GB per shared CPU, 2 to 8 GB per performance CPU, multiples of 256 MB)."""
    base, _, sized = name.partition("@")
    tier = fly_sized(base, int(sized)) if sized.isdigit() else get_tier(name)
    memory = -(-tier.memory_mib // 256) * 256
    if tier.platform == "fly":
        if base.startswith("shared"):
            return FlyGuest("shared", round(tier.vcpu * 16), memory)
        return FlyGuest("performance", round(tier.vcpu), memory)
    for cpus in (1, 2, 4, 6, 8):
        if cpus / 16 >= tier.vcpu and memory <= 2048 * cpus:
            return FlyGuest("shared", cpus, max(memory, 256 * cpus))
    for cpus in (1, 2, 4, 6, 8, 10, 12, 14, 16):
        if cpus >= tier.vcpu and memory <= 8192 * cpus:
            return FlyGuest("performance", cpus, max(memory, 2048 * cpus))
    raise TierError(f"Tier {name} has no Fly size; pick a smaller [sandbox] tier.")
