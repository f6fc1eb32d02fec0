// The model route: a sandbox's model calls (`/v1/sessions/{id}/model/...`, the runtime's
// ANTHROPIC_BASE_URL), checked against the session's model token and its spend limits, and
// forwarded upstream with the real key, which no sandbox is ever given. It applies the rules
// of kit's Python model proxy (kit/host/proxy.py), with the same answers:
//
// - only POST /v1/messages and /v1/messages/count_tokens (else 403), a body of at most
//   32 MiB (else 413) that is a JSON object with a `model` string and no repeated key
//   (else 400: the upstream might read another `model` than kit did);
// - a call to a model outside `limits.models`, or made once a limit is reached (the
//   bundle's `[limits]`, the var KIT_LIMITS; spend.ts), is answered here with 402
//   `billing_error` and `x-should-retry: false`, naming the setting, and never reaches the
//   upstream; the first refusal of each setting in a turn is told to the session's clients
//   as an `error` event `spend_limit`;
// - at most MAX_CALLS_IN_FLIGHT calls under way at once (then a retryable 429);
// - each reply's usage is read as it streams (usage.ts) and charged to the session's counts
//   in the DO's storage. A sandbox that hangs up mid-reply does not escape its count: the
//   rest of the reply is read (and dropped) for up to DRAIN_LIMIT_MS, then charged as if
//   it had produced the request's max_tokens; one that stops reading for CLIENT_STALL_MS
//   is hung up on, and its reply read to the end the same way.

import { discard } from "./bodies";
import type { Env } from "./env";
import type { EventRow } from "./frames";
import { Limits, NO_TOKENS, type Tokens } from "./limits";
import type { SessionLog } from "./log";
import { SpendMeter, refusalEvent, type Refusal } from "./spend";
import { sameText, sha256 } from "./tokens";
import { replyUsage, type BodyUsage } from "./usage";

/** `/v1/sessions/{id}/model/{rest}`: a sandbox's model call (the rest goes upstream). */
export const MODEL_PATH = /^\/v1\/sessions\/[^/]+\/model\/(.*)$/;
/** The calls forwarded (kit/host/proxy.py ALLOWED_PATHS), without their leading slash. */
const ALLOWED_PATHS = new Set(["v1/messages", "v1/messages/count_tokens"]);
export const MAX_BODY_BYTES = 32 * 1024 * 1024;
/** Model calls one session may have under way at once (subagents run in parallel). */
export const MAX_CALLS_IN_FLIGHT = 16;
/** A sandbox that takes longer than this to accept more of a reply is hung up on. */
export const CLIENT_STALL_MS = 60_000;
/** How long a reply the sandbox hung up on is still read, to count it. */
export const DRAIN_LIMIT_MS = 600_000;
const MAX_CHUNKS = 100_000_000;
/** Request headers a model call does not pass upstream: credentials, hop-by-hop. */
const MODEL_DROPPED = new Set(["x-api-key", "authorization", "host", "cookie", "connection", "content-length", "transfer-encoding", "cf-connecting-ip", "x-forwarded-for", "accept-encoding", "proxy-authorization", "proxy-connection"]);

/** What the route needs of its SessionDO. */
export interface ModelHost {
  readonly env: Env;
  /** The session: its model token's SHA-256, its open turn, its event log; the spend
   * counts are kept in its `meta`. */
  readonly log: SessionLog;
  /** Hand a committed event to the live sockets. */
  publish(row: EventRow): void;
  /** Keep the instance alive until `promise` settles. */
  waitUntil(promise: Promise<unknown>): void;
}

export class ModelRoute {
  /** The session's counts (tests read them; the turn runner says when turns start). */
  readonly meter: SpendMeter;
  /** Replies being read now (tests await them). */
  readonly replies = new Set<Promise<void>>();
  /** DRAIN_LIMIT_MS and CLIENT_STALL_MS; tests shorten them. */
  drainLimitMs = DRAIN_LIMIT_MS;
  clientStallMs = CLIENT_STALL_MS;
  private inFlight = 0;
  private limits: Limits | string | null = null;

  constructor(private readonly host: ModelHost) {
    this.meter = new SpendMeter(host.log);
  }

  /** The bundle's limits, or why KIT_LIMITS cannot be read (read once). */
  private readLimits(): Limits | string {
    if (this.limits === null) {
      try {
        this.limits = Limits.fromVar(this.host.env.KIT_LIMITS);
      } catch (exc) {
        this.limits = `kit's model route cannot read the Worker variable KIT_LIMITS (${exc instanceof Error ? exc.message : String(exc)}); deploy again with kit deploy --target cloudflare.`;
      }
    }
    return this.limits;
  }

  /** One model call of the session's sandbox (`rest`: the path after `/model/`). */
  async fetch(request: Request, rest: string): Promise<Response> {
    if (request.method !== "POST" || !ALLOWED_PATHS.has(rest)) {
      await discard(request);
      return modelError(403, "permission_error", "kit's model proxy forwards only POST /v1/messages.");
    }
    const want = this.host.log.exists() ? this.host.log.meta("model_token_sha256") : null;
    const sent = request.headers.get("x-api-key") ?? bearerOf(request.headers.get("authorization"));
    if (!sent || !want || !(await sameText(await sha256(sent), want))) {
      await discard(request);
      return modelError(401, "authentication_error", "kit's model route: unknown or expired session token.");
    }
    const key = this.host.env.ANTHROPIC_API_KEY;
    const limits = this.readLimits();
    if (!key) {
      await discard(request);
      return modelError(503, "api_error", "kit's model route has no ANTHROPIC_API_KEY (a Worker secret).");
    }
    if (typeof limits === "string") {
      await discard(request);
      return modelError(503, "api_error", limits);
    }
    const body = await readBody(request);
    if (body === null) return modelError(413, "request_too_large", "kit's model proxy takes request bodies of at most 32 MiB.");
    const wanted = requested(body);
    if (wanted === null) {
      return modelError(400, "invalid_request_error", 'kit\'s model proxy reads the request\'s model: send a JSON object with a "model" string and no repeated keys.');
    }
    const costs = rest !== "v1/messages/count_tokens";
    const refusal = this.meter.check(limits, wanted.model, costs);
    if (refusal !== null) {
      this.tell(refusal);
      return modelError(402, "billing_error", refusal.message);
    }
    if (this.inFlight >= MAX_CALLS_IN_FLIGHT) {
      return modelError(
        429,
        "rate_limit_error",
        `kit's model proxy allows ${MAX_CALLS_IN_FLIGHT} model calls under way at once per session; retry when one has ended.`,
        true,
      );
    }
    const headers = new Headers();
    for (const [name, value] of request.headers) {
      if (!MODEL_DROPPED.has(name.toLowerCase())) headers.set(name, value);
    }
    headers.set("x-api-key", key);
    headers.set("accept-encoding", "identity"); // so the usage can be read on the way
    const upstreamUrl = (this.host.env.KIT_MODEL_UPSTREAM || "https://api.anthropic.com").replace(/\/$/, "");
    this.inFlight++;
    let done = false;
    const end = (): void => {
      if (!done) this.inFlight--;
      done = true;
    };
    let answer: Response;
    try {
      answer = await fetch(`${upstreamUrl}/${rest}${new URL(request.url).search}`, { method: "POST", headers, body });
    } catch (exc) {
      end();
      return modelError(502, "api_error", `kit's model route could not reach the model upstream: ${String(exc)}.`);
    }
    if (answer.body === null) {
      end();
      return answer;
    }
    const charge = new Charge(this.meter, limits, wanted.model, costs ? wanted.maxTokens : 0);
    let usage: BodyUsage | null = null;
    if (costs && answer.status === 200) {
      const encoding = (answer.headers.get("content-encoding") ?? "identity").toLowerCase();
      if (encoding !== "identity") {
        end();
        await answer.body.cancel().catch(() => undefined);
        console.log("model route: cannot count the upstream's usage (a compressed response)");
        return modelError(502, "api_error", "kit's model route cannot count the upstream's usage (a compressed response).");
      }
      usage = replyUsage(costs, answer.status, answer.headers.get("content-type"), (grown) => charge.add(grown));
    }
    const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
    const reply = pump(answer.body, writable, usage, charge, this.drainLimitMs, this.clientStallMs).finally(end);
    this.replies.add(reply);
    void reply.finally(() => this.replies.delete(reply));
    this.host.waitUntil(reply);
    const out = new Headers(answer.headers);
    out.delete("content-length");
    return new Response(readable, { status: answer.status, statusText: answer.statusText, headers: out });
  }

  /** The first refusal of a setting in the running turn becomes an `error` event of that
   * turn (durable, then sent); one outside any open turn is told to no one, as on kit's
   * Python host. */
  private tell(refusal: Refusal): void {
    if (!refusal.tell || refusal.turnId === null) return;
    const log = this.host.log;
    if (log.openTurn()?.turn_id !== refusal.turnId) return;
    this.host.publish(log.append("error", refusalEvent(refusal), refusal.turnId));
  }
}

/** Charges one call's usage to the session as it grows (kit/host/proxy.py `_Charge`). */
class Charge {
  private output = 0;

  constructor(
    private readonly meter: SpendMeter,
    private readonly limits: Limits,
    private readonly model: string,
    /** The request's max_tokens: what a reply given up on is charged as output. */
    private readonly maxOutput: number,
  ) {}

  add(tokens: Tokens): void {
    this.meter.charge(this.limits, this.model, tokens);
    this.output += tokens.output;
  }

  /** The reply's end will never be read: charge output up to max_tokens. */
  giveUp(): void {
    if (this.maxOutput > this.output) this.add({ ...NO_TOKENS, output: this.maxOutput - this.output });
  }
}

/** Upstream bytes to the sandbox as they come, read for usage after they are passed on.
 * Once the sandbox is gone (or stalled), the rest of the reply is read and dropped, to
 * count it, for up to DRAIN_LIMIT_MS; then it is charged as if it had produced max_tokens. */
async function pump(
  body: ReadableStream<Uint8Array>,
  out: WritableStream<Uint8Array>,
  usage: BodyUsage | null,
  charge: Charge,
  drainLimitMs: number,
  clientStallMs: number,
): Promise<void> {
  const reader = body.getReader();
  const writer = out.getWriter();
  let drainUntil: number | null = null; // set once the sandbox is gone
  const hangUp = (why: unknown): void => {
    drainUntil ??= Date.now() + drainLimitMs;
    writer.abort(why).catch(() => undefined);
  };
  // The sandbox hanging up errors the stream it reads: noticed even while the upstream is
  // silent, so the drain limit counts from the hang-up (as kit's proxy's does).
  const gone = writer.closed.then(
    () => null,
    (why: unknown) => ({ gone: why }),
  );
  let pending: Promise<ReadableStreamReadResult<Uint8Array>> | null = null;
  try {
    for (let n = 0; n < MAX_CHUNKS; n++) {
      pending ??= reader.read();
      let next: ReadableStreamReadResult<Uint8Array>;
      if (drainUntil === null) {
        const first = await Promise.race([pending, gone]);
        if (first !== null && "gone" in first) {
          hangUp(first.gone);
          continue; // the read under way is awaited again, within the drain limit
        }
        next = await pending;
      } else {
        const read = await within(pending, drainUntil - Date.now());
        if (read === TIMED_OUT) {
          console.log(`model route: a reply its sandbox hung up on was still streaming after ${drainLimitMs / 1000} s; stopped reading it (charged as if it had produced its max_tokens)`);
          charge.giveUp();
          await reader.cancel().catch(() => undefined);
          return;
        }
        next = read;
      }
      pending = null;
      if (next.done) {
        usage?.finish();
        if (usage?.broken) console.log(`model route: cannot count the upstream's usage (${usage.broken})`);
        if (drainUntil === null) await within(writer.close(), clientStallMs).catch(() => undefined);
        return;
      }
      if (drainUntil === null) {
        try {
          if ((await within(writer.write(next.value), clientStallMs)) === TIMED_OUT) {
            console.log(`model route: the sandbox stopped reading a reply for ${clientStallMs / 1000} s; hung up on it (the reply is still read to its end, to count it)`);
            hangUp(new Error("the sandbox stopped reading"));
          }
        } catch (exc) {
          hangUp(exc); // the sandbox hung up
        }
      }
      usage?.feed(next.value);
      if (usage?.broken) {
        console.log(`model route: cannot count the upstream's usage (${usage.broken}); the reply is cut`);
        writer.abort(new Error(usage.broken)).catch(() => undefined);
        await reader.cancel().catch(() => undefined);
        return;
      }
    }
  } catch (exc) {
    // The upstream broke off: what it said it used is charged; the sandbox's reply is cut.
    writer.abort(exc).catch(() => undefined);
  }
}

const TIMED_OUT = Symbol("timed out");

/** `promise`'s value, or TIMED_OUT after `ms` (a timer, cancelled when it settles). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  const timer = new AbortController();
  const expired = scheduler.wait(Math.max(0, ms), { signal: timer.signal }).then(
    (): typeof TIMED_OUT => TIMED_OUT,
    (): typeof TIMED_OUT => TIMED_OUT,
  );
  try {
    return await Promise.race([promise, expired]);
  } finally {
    timer.abort();
  }
}

/** The request's body, or null when it is over MAX_BODY_BYTES (then drained). */
async function readBody(request: Request): Promise<Uint8Array | null> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) {
    await discard(request);
    return null;
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (let n = 0; n < MAX_CHUNKS; n++) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel().catch(() => undefined);
      return null;
    }
    parts.push(value);
  }
  const body = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    body.set(part, at);
    at += part.byteLength;
  }
  return body;
}

/** The `model` and `max_tokens` (0 when not a whole number ≥ 0) of a Messages API request
 * body; null when it is not a JSON object with a non-empty `model` string, or repeats a key
 * anywhere (kit/host/proxy.py `_requested`). */
export function requested(body: Uint8Array): { model: string; maxTokens: number } | null {
  let text: string;
  let request: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(body);
    request = JSON.parse(text);
  } catch {
    return null;
  }
  if (request === null || typeof request !== "object" || Array.isArray(request) || repeatsAKey(text)) return null;
  const { model, max_tokens: maxTokens } = request as Record<string, unknown>;
  if (typeof model !== "string" || model === "") return null;
  const whole = typeof maxTokens === "number" && Number.isInteger(maxTokens) && maxTokens >= 0;
  return { model, maxTokens: whole ? maxTokens : 0 };
}

/** Whether valid JSON `text` repeats a key in one of its objects (keys compared decoded). */
export function repeatsAKey(text: string): boolean {
  const stack: Array<Set<string> | null> = []; // null: an array
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (keyNext) {
        const keys = stack[stack.length - 1]!;
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (keys.has(key)) return true;
        keys.add(key);
        keyNext = false;
      }
      i = j;
    } else if (c === "{") {
      stack.push(new Set());
      keyNext = true;
    } else if (c === "[") {
      stack.push(null);
    } else if (c === "}" || c === "]") {
      stack.pop();
    } else if (c === ",") {
      keyNext = stack[stack.length - 1] instanceof Set;
    }
  }
  return false;
}

function bearerOf(header: string | null): string | null {
  if (header === null) return null;
  const space = header.indexOf(" ");
  return space > 0 && header.slice(0, space).toLowerCase() === "bearer" ? header.slice(space + 1).trim() : null;
}

/** An error as the Messages API shapes it, byte for byte as kit's Python proxy writes it
 * (json.dumps: ", " and ": ", non-ASCII escaped), so the CLI reports it as such. */
function modelError(status: number, type: string, message: string, retry = false): Response {
  const body = `{"type": "error", "error": {"type": ${asciiJson(type)}, "message": ${asciiJson(message)}}}`;
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (retry) Object.assign(headers, { "x-should-retry": "true", "retry-after": "1" });
  else headers["x-should-retry"] = "false";
  return new Response(body, { status, headers });
}

/** json.dumps of a str (ensure_ascii): JSON.stringify with everything past `~` as \uXXXX. */
export function asciiJson(text: string): string {
  return JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

