"""The shim's price table (worker_shim/src/pricing.ts) is generated from kit's own
(kit/bundle/limits.py): the two cannot disagree."""

from __future__ import annotations

import re
from pathlib import Path

from kit.bundle.limits import DEFAULT_TURN_TOKENS, PRICES
from kit.deploy.cloudflare.pricing import SHIM_PRICING, shim_pricing

REPO = Path(__file__).resolve().parents[2]


def test_the_shims_table_is_kits_table() -> None:
    """The checked-in file is what kit's table generates; run scripts/gen-shim-pricing after
    changing PRICES or DEFAULT_TURN_TOKENS."""
    on_disk = (REPO / SHIM_PRICING).read_text(encoding="utf-8")
    assert on_disk == shim_pricing(), (
        "worker_shim/src/pricing.ts is stale: run scripts/gen-shim-pricing"
    )


def test_the_generated_table_spells_out_every_price_in_order() -> None:
    """Each of kit's patterns appears once, in order (first match wins), with all five
    kinds as the exact doubles Python computed, and the default turn ceiling."""
    text = shim_pricing()
    rows = re.findall(r'^  \["([^"]+)", \{ input: ([^,]+), output: ([^,]+), cache_write: ([^,]+), cache_write_1h: ([^,]+), cache_read: ([^ ]+) \}\],$', text, re.M)  # fmt: skip
    assert [row[0] for row in rows] == [pattern for pattern, _ in PRICES]
    for (_, *numbers), (_, price) in zip(rows, PRICES, strict=True):
        assert [float(n) for n in numbers] == [
            price.input,
            price.output,
            price.cache_write,
            price.cache_write_1h,
            price.cache_read,
        ]
    assert f"export const DEFAULT_TURN_TOKENS = {DEFAULT_TURN_TOKENS};" in text
