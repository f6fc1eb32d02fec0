// The golden spend cases (kit/host/golden/spend.jsonl) replayed against the shim's meter and
// usage reader (src/spend.ts, src/usage.ts) exactly as tests/host/test_spend_golden.py
// replays them against kit's Python ones: the same decisions, words and counts.

import { describe, expect, it } from "vitest";
import { Limits, fnmatchcase, pyFixed4, pyNumber, pyRepr } from "../src/limits";
import { SpendMeter, type SpendStore } from "../src/spend";
import { replyUsage } from "../src/usage";

const files = import.meta.glob("../../kit/host/golden/spend.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;
/** Reply bodies are fed in pieces this long, so lines and JSON are split mid-way. */
const PIECE = 7;

type Step = Record<string, any>;

function cases(): Map<string, Step[]> {
  const out = new Map<string, Step[]>();
  let current: Step[] = [];
  for (const line of files["../../kit/host/golden/spend.jsonl"].split("\n")) {
    if (line.trim() === "") continue;
    const step = JSON.parse(line) as Step;
    if ("note" in step) continue;
    if ("case" in step) out.set(step.case as string, (current = []));
    current.push(step);
  }
  return out;
}

class MemoryStore implements SpendStore {
  private readonly rows = new Map<string, string>();
  meta(key: string): string | null {
    return this.rows.get(key) ?? null;
  }
  setMeta(key: string, value: string): void {
    this.rows.set(key, value);
  }
}

/** The reply's body as the upstream sends it, and its content type. */
function body(reply: Step): [Uint8Array, string] {
  if ("sse" in reply) {
    const text = (reply.sse as Step[]).map((e) => `event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`).join("");
    return [new TextEncoder().encode(text), "text/event-stream"];
  }
  return [new TextEncoder().encode(JSON.stringify(reply.json)), "application/json"];
}

const CASES = cases();

describe("the golden spend cases", () => {
  it("finds kit's cases", () => {
    expect(CASES.size).toBeGreaterThanOrEqual(10);
  });

  for (const [name, steps] of CASES) {
    it(name, () => {
      const limits = Limits.fromVar(JSON.stringify(steps[0].limits));
      const meter = new SpendMeter(new MemoryStore());
      steps.slice(1).forEach((step, i) => {
        const where = `${name}, step ${i + 2}: ${JSON.stringify(step)}`;
        if ("turn" in step) {
          meter.beginTurn(step.turn as string);
        } else if ("spent" in step) {
          const spent = meter.spent();
          expect({ session: spent.session, turn: spent.turn, session_usd: spent.session_usd, turn_usd: spent.turn_usd }, where).toEqual(step.spent);
        } else {
          const model = step.call as string;
          const costs = step.count_tokens !== true;
          const refusal = meter.check(limits, model, costs);
          if (step.refused === null) {
            expect(refusal, where).toBeNull();
            const reply = step.reply as Step;
            const [data, kind] = body(reply);
            const usage = replyUsage(costs, reply.status as number, kind, (grown) => meter.charge(limits, model, grown));
            for (let at = 0; at < data.length; at += PIECE) usage?.feed(data.subarray(at, at + PIECE));
            usage?.finish();
            expect(usage?.broken ?? null, where).toBeNull();
          } else {
            expect(refusal, where).not.toBeNull();
            expect({ setting: refusal!.setting, message: refusal!.message, told: refusal!.tell }, where).toEqual(step.refused);
          }
        }
      });
    });
  }
});

describe("Python's ways, where the cases do not reach", () => {
  it("matches globs as fnmatch.fnmatchcase does (each pair checked against CPython 3.11)", () => {
    const yes: Array<[string, string]> = [
      ["claude-opus-4-6", "claude-opus-4-[5-8]*"],
      ["]]", "[]]]"],
      ["-", "[a-]"],
      ["b", "[!a]"],
      ["[x", "[x"],
      ["a.b", "a.b"],
      ["a\nb", "a*b"],
      ["y", "[z-a!x]"], // the empty range z-a goes, leaving [!x]
    ];
    const no: Array<[string, string]> = [
      ["claude-opus-4-9", "claude-opus-4-[5-8]*"],
      ["axb", "a.b"],
      ["a", "[!a]"],
      ["q", "[z-a]"],
      ["a]", "[]]]"],
      ["x", "[z-a!x]"],
      ["claude-opus-4-6x", "claude-opus-4-6"],
    ];
    for (const [name, pattern] of yes) expect(fnmatchcase(name, pattern), `${name} ~ ${pattern}`).toBe(true);
    for (const [name, pattern] of no) expect(fnmatchcase(name, pattern), `${name} !~ ${pattern}`).toBe(false);
  });

  it("prints numbers and strings as Python's str, repr and format do", () => {
    expect([pyNumber(20), pyNumber(2.5), pyNumber(1e-5), pyNumber(0.0001), pyNumber(1.5e-7)]).toEqual(["20", "2.5", "1e-05", "0.0001", "1.5e-07"]);
    expect([pyFixed4(0.03125), pyFixed4(0.09375), pyFixed4(0.00005), pyFixed4(1 / 3)]).toEqual(["0.0312", "0.0938", "0.0001", "0.3333"]);
    expect([pyRepr("a'b"), pyRepr(`a'b"c`), pyRepr("\u0000\u00a0")]).toEqual([`"a'b"`, `'a\\'b"c'`, "'\\x00\\xa0'"]);
  });

  it("reads a var that is absent or {} as kit's defaults, and refuses a damaged one", () => {
    for (const text of [undefined, "", "{}"]) {
      const limits = Limits.fromVar(text);
      expect([limits.models, limits.turnTokenLimit, limits.session_tokens, limits.inUsd]).toEqual([[], 4_000_000, null, false]);
    }
    for (const text of ["[]", '{"turn_tokens": 1.5}', '{"models": "x"}', '{"prices": [["x", {"input": 1}]]}', "{"]) {
      expect(() => Limits.fromVar(text), text).toThrow();
    }
  });
});
