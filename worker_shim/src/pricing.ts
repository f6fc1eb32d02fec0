// Generated from kit/bundle/limits.py by scripts/gen-shim-pricing: do not edit.
// tests/deploy/test_cloudflare_pricing.py fails while this file and that table differ.

import type { Price } from "./limits";

/** The per-turn token ceiling when kit.toml sets none (DEFAULT_TURN_TOKENS). */
export const DEFAULT_TURN_TOKENS = 4000000;

/** kit's prices (USD per million tokens) as of 2026-12-04, from
 * https://platform.claude.com/docs/en/about-claude/pricing; first match wins. */
export const PRICES: ReadonlyArray<readonly [string, Price]> = [
  ["claude-opus-5-5*", { input: 4.0, output: 20.0, cache_write: 5.0, cache_write_1h: 8.0, cache_read: 0.2 }],
  ["claude-opus-5*", { input: 5.0, output: 25.0, cache_write: 6.25, cache_write_1h: 10.0, cache_read: 0.5 }],
  ["claude-opus-4-[5-8]*", { input: 5.0, output: 25.0, cache_write: 6.25, cache_write_1h: 10.0, cache_read: 0.5 }],
  ["claude-opus-4*", { input: 15.0, output: 75.0, cache_write: 18.75, cache_write_1h: 30.0, cache_read: 1.5 }],
  ["claude-3-opus*", { input: 15.0, output: 75.0, cache_write: 18.75, cache_write_1h: 30.0, cache_read: 1.5 }],
  ["claude-sonnet-5*", { input: 2.0, output: 10.0, cache_write: 2.5, cache_write_1h: 4.0, cache_read: 0.2 }],
  ["claude-sonnet-4*", { input: 3.0, output: 15.0, cache_write: 3.75, cache_write_1h: 6.0, cache_read: 0.30000000000000004 }],
  ["claude-3-7-sonnet*", { input: 3.0, output: 15.0, cache_write: 3.75, cache_write_1h: 6.0, cache_read: 0.30000000000000004 }],
  ["claude-haiku-4-5*", { input: 1.0, output: 5.0, cache_write: 1.25, cache_write_1h: 2.0, cache_read: 0.1 }],
  ["claude-3-5-haiku*", { input: 0.8, output: 4.0, cache_write: 1.0, cache_write_1h: 1.6, cache_read: 0.08000000000000002 }],
  ["claude-3-haiku*", { input: 0.25, output: 1.25, cache_write: 0.3, cache_write_1h: 0.5, cache_read: 0.03 }],
];
