"""kit's price table and default turn ceiling for the shim: ``worker_shim/src/pricing.ts`` is
generated from :mod:`kit.bundle.limits` (:data:`~kit.bundle.limits.PRICES`,
:data:`~kit.bundle.limits.DEFAULT_TURN_TOKENS`), never edited by hand.

After a change to the table, regenerate it with ``scripts/gen-shim-pricing``;
tests/deploy/test_cloudflare_pricing.py fails while the file and the table disagree, and
the golden spend cases (kit/host/golden/spend.jsonl) price calls with it on both sides.
"""

from __future__ import annotations

import json

from kit.bundle.limits import DEFAULT_TURN_TOKENS, PRICES, PRICES_AS_OF, PRICES_SOURCE

SHIM_PRICING = "worker_shim/src/pricing.ts"
"""Where the generated file is, from the root of kit's checkout."""
_PRICE_KEYS = ("input", "output", "cache_write", "cache_write_1h", "cache_read")


def shim_pricing() -> str:
    """The text of :data:`SHIM_PRICING`: every price with all five kinds spelled out (the
    cache multipliers applied here, once), in the table's order (first match wins)."""
    rows = [
        f"  [{json.dumps(pattern)}, {{ "
        + ", ".join(f"{key}: {_number(getattr(price, key))}" for key in _PRICE_KEYS)
        + " }],"
        for pattern, price in PRICES
    ]
    return "\n".join(
        [
            "// Generated from kit/bundle/limits.py by scripts/gen-shim-pricing: do not edit.",
            "// tests/deploy/test_cloudflare_pricing.py fails while this file and that table differ.",
            "",
            'import type { Price } from "./limits";',
            "",
            "/** The per-turn token ceiling when kit.toml sets none (DEFAULT_TURN_TOKENS). */",
            f"export const DEFAULT_TURN_TOKENS = {DEFAULT_TURN_TOKENS};",
            "",
            f"/** kit's prices (USD per million tokens) as of {PRICES_AS_OF}, from",
            f" * {PRICES_SOURCE}; first match wins. */",
            "export const PRICES: ReadonlyArray<readonly [string, Price]> = [",
            *rows,
            "];",
            "",
        ]
    )


def _number(value: float) -> str:
    """``value`` as JavaScript reads back the same double (Python's shortest repr)."""
    return repr(float(value))
