// The spend meter of a session (kit/host/spend.py `SpendMeter`, the same decisions in the
// same words): its turn's and its own model usage, and which calls are refused. The model
// route asks `check` before it forwards a call and `charge`s what the upstream's replies
// say the call used; the turn runner says when a turn starts (`beginTurn`): the turn's
// counts start again at zero, a turn recovered in a new container keeps its counts.
//
// Unlike kit's Python host, which keeps the counts in memory, the counts live in the DO's
// storage (a `meta` row of the session log), so an evicted instance loses none of them.
// The golden cases of kit/host/golden/spend.jsonl are replayed against both meters.

import { Limits, NO_TOKENS, addTokens, pyFixed4, pyRepr, pyThousands, total, usd, type Tokens } from "./limits";

/** The `code` of the `error` event that tells clients a call was refused. */
export const SPEND_LIMIT = "spend_limit";
/** Sums of float prices drift: a USD limit counts as reached within this much of it. */
export const USD_EPSILON = 1e-9;

/** A model call refused, and why. */
export interface Refusal {
  /** The kit.toml key that refused it, such as `limits.turn_tokens`. */
  setting: string;
  /** One sentence for the user: what was reached, the setting's value, what to do. */
  message: string;
  turnId: string | null;
  /** The first refusal of its setting in its turn (a turn is running): tell the clients. */
  tell: boolean;
}

/** The `error` event's data for `refusal`. */
export function refusalEvent(refusal: Refusal): Record<string, unknown> {
  return { code: SPEND_LIMIT, setting: refusal.setting, message: refusal.message };
}

/** What one session has used. */
export interface Spent {
  session: Tokens;
  session_usd: number;
  turn: Tokens;
  turn_usd: number;
  turn_id: string | null;
  /** Settings already reported in this turn. */
  told: string[];
}

/** Where the counts are kept: the session log's `meta` (SessionLog), or memory in tests. */
export interface SpendStore {
  meta(key: string): string | null;
  setMeta(key: string, value: string): void;
}

const KEY = "spend";

export class SpendMeter {
  constructor(private readonly store: SpendStore) {}

  /** The session's counts so far (zero for a session never counted). */
  spent(): Spent {
    const text = this.store.meta(KEY);
    if (text === null) return { session: { ...NO_TOKENS }, session_usd: 0, turn: { ...NO_TOKENS }, turn_usd: 0, turn_id: null, told: [] };
    return JSON.parse(text) as Spent;
  }

  private save(spent: Spent): void {
    this.store.setMeta(KEY, JSON.stringify(spent));
  }

  /** `turnId` is the session's running turn: a new one starts its counts at zero. */
  beginTurn(turnId: string): void {
    const spent = this.spent();
    if (spent.turn_id === turnId) return;
    this.save({ ...spent, turn_id: turnId, turn: { ...NO_TOKENS }, turn_usd: 0, told: [] });
  }

  /** Why a call to `model` must be refused now, or null to forward it. `costs` is false
   * for count_tokens, which only the model allowlist applies to. A refusal's `tell` says
   * it is the first of its setting in the running turn. */
  check(limits: Limits, model: string, costs = true): Refusal | null {
    const spent = this.spent();
    const why = this.why(spent, limits, model, costs);
    if (why === null) return null;
    const first = !spent.told.includes(why.setting);
    if (first) {
      this.save({ ...spent, told: [...spent.told, why.setting] });
      console.log(`model call refused (${why.setting})`);
    }
    return { ...why, turnId: spent.turn_id, tell: first && spent.turn_id !== null };
  }

  private why(spent: Spent, limits: Limits, model: string, costs: boolean): { setting: string; message: string } | null {
    if (!limits.allows(model)) {
      return {
        setting: "limits.models",
        message:
          `kit's model proxy refused a call to model ${pyRepr(model)}: it is not in ${limits.describe("models")}. ` +
          "Set agent.model to an allowed model, or add this one to limits.models.",
      };
    }
    if (!costs) return null;
    if (limits.inUsd && limits.priceOf(model) === null) {
      const key = limits.turn_usd !== null ? "turn_usd" : "session_usd";
      return {
        setting: "limits.prices",
        message:
          `kit's model proxy refused a call to model ${pyRepr(model)}: ${limits.describe(key)} needs its price, and kit has none. ` +
          "Add one under [limits.prices] in kit.toml (USD per million tokens), or allow only priced models with limits.models.",
      };
    }
    const reached = SpendMeter.reached(spent, limits);
    if (reached === null) return null;
    const [key, used] = reached;
    const scope = key.startsWith("session") ? "session" : "turn";
    const then =
      scope === "session"
        ? "Its later turns are refused too: start a new session, or raise the limit."
        : "Send another message to start a new turn, or raise the limit.";
    return {
      setting: `limits.${key}`,
      message: `kit's model proxy refused a model call: this ${scope} has ${used}, reaching ${limits.describe(key)}. ${then}`,
    };
  }

  /** The first limit reached (session ones first) and what was used, in words. */
  private static reached(spent: Spent, limits: Limits): ["session_tokens" | "turn_tokens" | "session_usd" | "turn_usd", string] | null {
    if (limits.session_tokens !== null && total(spent.session) >= limits.session_tokens) {
      return ["session_tokens", `used ${pyThousands(total(spent.session))} model tokens`];
    }
    if (total(spent.turn) >= limits.turnTokenLimit) return ["turn_tokens", `used ${pyThousands(total(spent.turn))} model tokens`];
    if (limits.session_usd !== null && spent.session_usd >= limits.session_usd - USD_EPSILON) {
      return ["session_usd", `spent $${pyFixed4(spent.session_usd)} at kit's prices`];
    }
    if (limits.turn_usd !== null && spent.turn_usd >= limits.turn_usd - USD_EPSILON) {
      return ["turn_usd", `spent $${pyFixed4(spent.turn_usd)} at kit's prices`];
    }
    return null;
  }

  /** A call used `tokens` more (priced with `limits`'s prices). */
  charge(limits: Limits, model: string, tokens: Tokens): void {
    const spent = this.spent();
    const price = limits.priceOf(model);
    const cost = price !== null ? usd(price, tokens) : 0;
    this.save({
      ...spent,
      session: addTokens(spent.session, tokens),
      turn: addTokens(spent.turn, tokens),
      session_usd: spent.session_usd + cost,
      turn_usd: spent.turn_usd + cost,
    });
  }
}
