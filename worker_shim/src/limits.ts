// Spend limits as kit.toml's `[limits]` sets them (kit/bundle/limits.py): the var KIT_LIMITS
// (kit/deploy/cloudflare/target.py `limits_var`: the keys that are set, as the bundle
// manifest stores them), what a call costs, and the words of kit's refusals, which quote
// settings and models as Python prints them so both hosts say the same.

import { DEFAULT_TURN_TOKENS, PRICES } from "./pricing";

/** Token counts of one call, or a sum of calls (kit/bundle/limits.py `Tokens`). */
export interface Tokens {
  input: number;
  output: number;
  /** cache_creation_input_tokens: every cache write, 5-minute and 1-hour. */
  cache_write: number;
  /** Of cache_write, those written for an hour. */
  cache_write_1h: number;
  cache_read: number;
}

/** USD per million tokens of each kind. */
export interface Price {
  input: number;
  output: number;
  cache_write: number;
  cache_write_1h: number;
  cache_read: number;
}

const KINDS = ["input", "output", "cache_write", "cache_write_1h", "cache_read"] as const;

export const NO_TOKENS: Tokens = Object.freeze({ input: 0, output: 0, cache_write: 0, cache_write_1h: 0, cache_read: 0 });

/** What a token limit counts: input + output + cache writes + cache reads. */
export function total(t: Tokens): number {
  return t.input + t.output + t.cache_write + t.cache_read;
}

export function addTokens(a: Tokens, b: Tokens): Tokens {
  return { input: a.input + b.input, output: a.output + b.output, cache_write: a.cache_write + b.cache_write, cache_write_1h: a.cache_write_1h + b.cache_write_1h, cache_read: a.cache_read + b.cache_read };
}

/** What `t` costs at `p` (Price.usd: the same terms in the same order, so the same double). */
export function usd(p: Price, t: Tokens): number {
  const write5m = Math.max(0, t.cache_write - t.cache_write_1h);
  return (t.input * p.input + t.output * p.output + write5m * p.cache_write + t.cache_write_1h * p.cache_write_1h + t.cache_read * p.cache_read) / 1_000_000;
}

/** `[limits]` as written (null: the key is not set). */
export class Limits {
  constructor(
    readonly models: readonly string[] = [],
    readonly turn_tokens: number | null = null,
    readonly session_tokens: number | null = null,
    readonly turn_usd: number | null = null,
    readonly session_usd: number | null = null,
    /** `[limits.prices]`, in file order. */
    readonly prices: ReadonlyArray<readonly [string, Price]> = [],
  ) {}

  /** The per-turn token ceiling in force (kit's default when unset). */
  get turnTokenLimit(): number {
    return this.turn_tokens ?? DEFAULT_TURN_TOKENS;
  }

  /** Whether a USD limit is set (calls must then be priced). */
  get inUsd(): boolean {
    return this.turn_usd !== null || this.session_usd !== null;
  }

  /** Whether `limits.models` lets the agent call `model`. */
  allows(model: string): boolean {
    return this.models.length === 0 || this.models.some((p) => fnmatchcase(model, p));
  }

  /** The price of `model`: `[limits.prices]` first, then kit's table. */
  priceOf(model: string): Price | null {
    for (const [pattern, price] of [...this.prices, ...PRICES]) {
      if (fnmatchcase(model, pattern)) return price;
    }
    return null;
  }

  /** `limits.<key> = <value> in kit.toml`, or that kit's default applies. */
  describe(key: "models" | "turn_tokens" | "session_tokens" | "turn_usd" | "session_usd"): string {
    if (key === "turn_tokens" && this.turn_tokens === null) {
      return `limits.turn_tokens = ${DEFAULT_TURN_TOKENS} (kit's default; set another in kit.toml)`;
    }
    const shown = key === "models" ? "[" + this.models.map((m) => `"${m}"`).join(", ") + "]" : pyNumber(this[key] ?? 0);
    return `limits.${key} = ${shown} in kit.toml`;
  }

  /** Limits.from_manifest: the var's JSON (`{}`, or no var: kit's defaults); an Error
   * naming what is wrong when it is not what kit deploy writes. */
  static fromVar(text: string | undefined): Limits {
    if (text === undefined || text.trim() === "") return new Limits();
    const raw: unknown = JSON.parse(text);
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new Error("not a JSON object");
    const r = raw as Record<string, unknown>;
    const models = r.models ?? [];
    if (!Array.isArray(models) || !models.every((m) => typeof m === "string")) throw new Error("models is not a list of strings");
    const prices = r.prices ?? [];
    if (!Array.isArray(prices)) throw new Error("prices is not a list");
    return new Limits(
      models as string[],
      optNumber(r, "turn_tokens", true),
      optNumber(r, "session_tokens", true),
      optNumber(r, "turn_usd", false),
      optNumber(r, "session_usd", false),
      prices.map((entry: unknown) => {
        if (!Array.isArray(entry) || entry.length !== 2 || typeof entry[0] !== "string" || entry[1] === null || typeof entry[1] !== "object") {
          throw new Error("a prices entry is not [pattern, {input, output, ...}]");
        }
        const kinds = entry[1] as Record<string, unknown>;
        const price = Object.fromEntries(KINDS.map((k) => [k, kinds[k]])) as unknown as Price;
        if (!KINDS.every((k) => typeof price[k] === "number" && Number.isFinite(price[k]))) throw new Error(`the price of ${entry[0]} is not five numbers`);
        return [entry[0], price] as const;
      }),
    );
  }
}

function optNumber(raw: Record<string, unknown>, key: string, whole: boolean): number | null {
  const value = raw[key];
  if (value === undefined || value === null) return null;
  if (typeof value !== "number" || !Number.isFinite(value) || (whole && !Number.isInteger(value))) throw new Error(`${key} is not a ${whole ? "whole number" : "number"}`);
  return value;
}

// -- Python's fnmatch.fnmatchcase -------------------------------------------------------------

const globs = new Map<string, RegExp>();

/** Whether `name` matches the glob `pattern` as Python's fnmatch.fnmatchcase says: `*`, `?`,
 * `[seq]`, `[!seq]` (ranges, and an unclosed `[` taken literally), the whole name. */
export function fnmatchcase(name: string, pattern: string): boolean {
  let re = globs.get(pattern);
  if (re === undefined) {
    re = new RegExp(`^(?:${translate(pattern)})$`, "s");
    if (globs.size < 1000) globs.set(pattern, re);
  }
  return re.test(name);
}

/** fnmatch.translate (CPython 3.11+), written for a JavaScript RegExp. */
function translate(pat: string): string {
  let res = "";
  let star = false;
  const n = pat.length;
  let i = 0;
  while (i < n) {
    const c = pat[i++];
    if (c === "*") {
      if (!star) res += ".*";
      star = true;
      continue;
    }
    star = false;
    if (c === "?") {
      res += ".";
    } else if (c === "[") {
      let j = i;
      if (j < n && pat[j] === "!") j++;
      if (j < n && pat[j] === "]") j++;
      while (j < n && pat[j] !== "]") j++;
      if (j >= n) {
        res += "\\[";
        continue;
      }
      let stuff: string;
      if (!pat.slice(i, j).includes("-")) {
        stuff = pat.slice(i, j).replaceAll("\\", "\\\\");
      } else {
        const chunks: string[] = [];
        let k = pat[i] === "!" ? i + 2 : i + 1;
        for (;;) {
          k = pat.indexOf("-", k);
          if (k < 0 || k >= j) break;
          chunks.push(pat.slice(i, k));
          i = k + 1;
          k = k + 3;
        }
        const chunk = pat.slice(i, j);
        if (chunk) chunks.push(chunk);
        else chunks[chunks.length - 1] += "-";
        for (let m = chunks.length - 1; m > 0; m--) {
          // An empty range (its start after its end) is dropped, as Python does.
          if (chunks[m - 1][chunks[m - 1].length - 1] > chunks[m][0]) {
            chunks[m - 1] = chunks[m - 1].slice(0, -1) + chunks[m].slice(1);
            chunks.splice(m, 1);
          }
        }
        stuff = chunks.map((s) => s.replaceAll("\\", "\\\\").replaceAll("-", "\\-")).join("-");
      }
      i = j + 1;
      if (!stuff) {
        res += "(?!)"; // an empty range: never matches
      } else if (stuff === "!") {
        res += "."; // a negated empty range: any character
      } else {
        if (stuff[0] === "!") stuff = "^" + stuff.slice(1);
        else if (stuff[0] === "^" || stuff[0] === "[") stuff = "\\" + stuff;
        // Python reads a "]" first in a set as itself; JavaScript needs it escaped.
        res += `[${stuff.replace(/^(\^?)\]/, "$1\\]")}]`;
      }
    } else {
      res += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    }
  }
  return res;
}

// -- Python's str() and repr() of the values a refusal names ----------------------------------

/** A number as Python prints the float or int kit.toml gave (`20.0` as 20, `1e-05`). */
export function pyNumber(x: number): string {
  if (Number.isInteger(x)) return String(x);
  if (Math.abs(x) < 1e-4) return x.toExponential().replace(/e([+-])(\d)$/, "e$10$2");
  return String(x);
}

/** `f"{n:,}"` of a whole number. */
export function pyThousands(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** `f"{x:.4f}"`: JavaScript's toFixed, but an exact tie rounds to even as Python does. */
export function pyFixed4(x: number): string {
  const scaled = x * 10_000;
  // A tie at four places is some k/32 exactly (10^4 = 2^4 * 625), where x * 10000 is exact.
  if (Number.isInteger(x * 32) && scaled - Math.floor(scaled) === 0.5) {
    const down = Math.floor(scaled);
    const even = down % 2 === 0 ? down : down + 1;
    return (even / 10_000).toFixed(4);
  }
  return x.toFixed(4);
}

const UNPRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u;

/** Python's repr() of a str: single quotes unless it holds one and no double quote; `\\`,
 * the quote, `\t\n\r` and unprintable characters escaped. */
export function pyRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const code = ch.codePointAt(0)!;
    if (ch === "\\" || ch === quote) out += "\\" + ch;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch !== " " && UNPRINTABLE.test(ch)) {
      const hex = code.toString(16);
      out += code < 0x100 ? "\\x" + hex.padStart(2, "0") : code < 0x10000 ? "\\u" + hex.padStart(4, "0") : "\\U" + hex.padStart(8, "0");
    } else out += ch;
  }
  return out + quote;
}
