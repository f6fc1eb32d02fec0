// The turn planner port (src/turns.ts): every golden case of kit/protocol/golden/turns/
// replayed step by step exactly as tests/protocol/test_turns.py replays them for Python,
// plus its guards.

import { describe, expect, it } from "vitest";
import type { TurnState } from "../src/log";
import {
  InvalidStateError,
  MAX_SANDBOX_ATTEMPTS,
  RESTART_BACKOFF_S,
  TurnPlanner,
  endsTurn,
  type TurnAction,
} from "../src/turns";

const cases = import.meta.glob("../../kit/protocol/golden/turns/*.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;
const names = Object.keys(cases).map((path) => path.split("/").pop()!.replace(/\.jsonl$/, "")).sort();

type Step = {
  note?: string;
  turn?: { state: TurnState; attempts: number };
  in?: string;
  events?: Array<{ kind: string; data: Record<string, unknown> }>;
  out?: unknown[];
  log?: { state: TurnState; attempts: number };
};

/** The turn's row in the event log, as the planner's record actions leave it. */
class Log {
  constructor(
    public state: TurnState,
    public attempts: number,
  ) {}

  apply(actions: TurnAction[]): void {
    for (const action of actions) {
      if (action.action === "record") {
        this.state = action.state;
        this.attempts += action.attempt ? 1 : 0;
      }
    }
  }
}

/** Give `planner` the step's input; the planner after it (a new one on a restart) and its answer. */
function feed(planner: TurnPlanner, log: Log, step: Step): [TurnPlanner, TurnAction[]] {
  switch (step.in) {
    case "host_restarted": {
      const fresh = new TurnPlanner(log.state, log.attempts);
      return [fresh, fresh.begin()];
    }
    case "batch":
      return [planner, planner.batch(step.events!.map((ev) => [ev.kind, ev.data] as const))];
    case "begin":
      return [planner, planner.begin()];
    case "sandbox_started":
      return [planner, planner.sandboxStarted()];
    case "sandbox_failed":
      return [planner, planner.sandboxFailed()];
    case "stream_broken":
      return [planner, planner.streamBroken()];
    default:
      throw new Error(`unknown step input ${step.in}`);
  }
}

function replay(name: string): void {
  const steps = cases[`../../kit/protocol/golden/turns/${name}.jsonl`]
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line) as Step);
  const start = steps.find((s) => s.turn !== undefined)!.turn!;
  const log = new Log(start.state, start.attempts);
  let planner = new TurnPlanner(log.state, log.attempts);
  let checked = 0;
  steps.forEach((step, i) => {
    if (step.in !== undefined) {
      let answer: TurnAction[];
      [planner, answer] = feed(planner, log, step);
      expect(answer, `${name} line ${i + 1}`).toEqual(step.out);
      log.apply(answer);
      checked++;
    } else if (step.log !== undefined) {
      expect({ state: log.state, attempts: log.attempts }, `${name} line ${i + 1}`).toEqual(step.log);
      checked++;
    }
  });
  expect(checked).toBeGreaterThan(1);
}

describe("turn planner", () => {
  it("finds kit's golden turn cases", () => {
    expect(names.length).toBeGreaterThanOrEqual(15);
    expect(names).toEqual(expect.arrayContaining(["first_try_success", "five_deaths_give_up", "restart_exhausted", "backoff_values"]));
  });

  for (const name of names) {
    it(`replays ${name}`, () => replay(name));
  }

  it("has kit's constants", () => {
    expect(MAX_SANDBOX_ATTEMPTS).toBe(5);
    expect(RESTART_BACKOFF_S).toEqual([0, 0, 0.5, 1, 2]);
  });

  it.each([
    ["result", { is_error: true }, true],
    ["error", { code: "turn_failed" }, true],
    ["error", { code: "spend_limit" }, false],
    ["assistant", { code: "turn_failed" }, false],
    ["store", { state: "gave_up" }, false],
  ] as const)("endsTurn(%s, %j) is %s", (kind, data, ends) => {
    expect(endsTurn(kind, data)).toBe(ends);
  });

  it("names the state when a call comes out of order", () => {
    const planner = new TurnPlanner("queued", 0);
    expect(() => planner.sandboxStarted()).toThrow(/planner is new; sandbox_started needs it starting/);
    expect(() => planner.sandboxStarted()).toThrow(InvalidStateError);
    planner.begin();
    expect(() => planner.batch([["result", {}]])).toThrow(/is starting; batch needs it streaming/);
    expect(() => planner.begin()).toThrow(/is starting; begin needs it new/);
  });

  it("has nothing to plan for a finished turn", () => {
    for (const state of ["completed", "failed"] as const) {
      expect(() => new TurnPlanner(state, 1)).toThrow(InvalidStateError);
      expect(() => new TurnPlanner(state, 1)).toThrow(/is over/);
    }
  });
});
