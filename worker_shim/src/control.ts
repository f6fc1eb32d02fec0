// kit's control API on the Worker: the routes of kit/cli/control.py (the same paths, JSON,
// status codes and NDJSON), so `kit sessions`, `kit logs [--follow]`, `kit sandbox
// list|kill|oom` and `kit do evict` work against the shim as against `kit dev`. The Worker
// checks the API token before it gets here (401 otherwise). Errors are JSON
// `{"error": code, "message": sentence}`.
//
//   GET  /_kit/sessions                  {"sessions": rows}, the most recently active first
//   GET  /_kit/sessions/{id}/events      NDJSON: one event a line, then one {"end", "message"}
//                                        line; ?after=SEQ (default 0); ?follow=1 (or true)
//                                        streams live events too, until the client goes away
//   GET  /_kit/sandboxes                 {"sandboxes": rows}: the running containers
//   POST /_kit/sandboxes/{id}/kill       {"signal": "KILL"} (the default) → 202
//   POST /_kit/sandboxes/{id}/oom        → 202 where the container can be pushed past its
//                                        memory (kit's emulator); 409 cannot_oom otherwise
//   POST /_kit/do/{id}/evict             → {"session_id", "evicted"}: the session's DO
//                                        instance is thrown away (`ctx.abort()`), storage
//                                        stays; the next event (or the turn watch alarm)
//                                        rebuilds it and resumes an open turn
//   GET  /_kit/mail/outbox               {"address", "items": [...]}: replies sent (or given
//                                        up), newest first, ?limit= 1-500 (default 50); the
//                                        shapes of kit dev's (kit/mail/routes.py)
//   GET  /_kit/mail/refused              {"address", "items": [...]}: inbound mail refused,
//                                        the same way (fields: docs/email.md)
//
// Durable Objects cannot be listed: the listings read the ids from the SessionIndex
// (sessionindex.ts; at most MAX_LISTED, the newest) and ask each session's DO
// (sessioncontrol.ts), SUMMARY_CONCURRENCY at a time. A follow is served in segments of
// the DO's (each a request of at most FOLLOW_SEGMENT_MS): the Worker keeps the cursor and
// asks again at each segment's end, or when the DO instance went away under it (evicted,
// reset by a deploy), so the client sees every event once; between segments it sends an
// empty line (which `kit logs` skips), so a quiet stream is not idle for long.
//
// Where this differs from kit dev: a malformed id in kill/oom is `no_sandbox` 404 as there
// (without asking any DO); `loaded` and `evicted` say whether the session's DO instance
// holds something of it (sockets, a follower, a turn, a watched sandbox); a container an
// earlier instance started still runs after an eviction, and is listed (on Cloudflare a
// container outlives its DO instance).

import type { Env } from "./env";
import { SEGMENT_LINE } from "./sessioncontrol";
import { MAX_LISTED, sessionIndex } from "./sessionindex";
import { UnknownSignal, pyRepr, pyStr, signalNumber } from "./signals";
import { endLine } from "./ndjson";
import { DEFAULT_LISTED_MAIL, MAX_LISTED_MAIL, mailIndex } from "./mail/mailindex";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Session DOs asked at once by a listing (kit/cli/control.py SUMMARY_CONCURRENCY). */
export const SUMMARY_CONCURRENCY = 16;
/** Follow segments one `kit logs --follow` gets (a day of quiet ones), then it ends. */
export const MAX_SEGMENTS = 1_440;
/** Attempts in a row to reach a session whose DO keeps going away (kit/cli/follow.py). */
export const MAX_ATTACH_TRIES = 3;
/** The longest line read from a DO's event stream: an event row is at most 2 MB of UTF-8. */
const MAX_LINE_CHARS = 4_000_000;
/** The base of the internal URLs a SessionDO's control side answers. */
const INTERNAL = "http://session/_kit";

type Handler = (request: Request, url: URL, env: Env, id: string) => Promise<Response>;

const ROUTES: Array<[RegExp, string, Handler]> = [
  [/^\/_kit\/sessions$/, "GET", sessions],
  [/^\/_kit\/sessions\/([^/]+)\/events$/, "GET", events],
  [/^\/_kit\/sandboxes$/, "GET", sandboxes],
  [/^\/_kit\/sandboxes\/([^/]+)\/kill$/, "POST", kill],
  [/^\/_kit\/sandboxes\/([^/]+)\/oom$/, "POST", oom],
  [/^\/_kit\/do\/([^/]+)\/evict$/, "POST", evict],
  [/^\/_kit\/mail\/outbox$/, "GET", mailOutbox],
  [/^\/_kit\/mail\/refused$/, "GET", mailRefused],
];

/** The answer of a control route, or null when the path is none of them. */
export async function control(request: Request, url: URL, env: Env): Promise<Response | null> {
  for (const [pattern, method, handler] of ROUTES) {
    const found = pattern.exec(url.pathname);
    if (found === null) continue;
    const asked = request.method === "HEAD" ? "GET" : request.method;
    if (asked !== method) {
      return error("method_not_allowed", `${url.pathname} takes ${method} only.`, 405, { allow: method });
    }
    return handler(request, url, env, found[1] === undefined ? "" : decoded(found[1]));
  }
  return null;
}

// -- listings ---------------------------------------------------------------------------

async function sessions(_request: Request, _url: URL, env: Env): Promise<Response> {
  const rows = await fanOut(env, async (id) => {
    try {
      const answer = await env.SESSION.getByName(id).fetch(`${INTERNAL}/summary`);
      if (answer.status === 404) {
        await answer.body?.cancel();
        return null; // indexed, but its DO was never made: no session
      }
      if (!answer.ok) return { session_id: id, error: `Its Durable Object answered ${answer.status}: ${(await answer.text()).slice(0, 200)}` };
      return (await answer.json()) as Record<string, unknown>;
    } catch (exc) {
      return { session_id: id, error: `Its Durable Object failed: ${messageOf(exc)}` }; // one must not hide the others
    }
  });
  const key = (r: Record<string, unknown>): number => Number(r.last_ts || r.created_ms || 0);
  rows.sort((a, b) => key(b) - key(a));
  return json({ sessions: rows }, 200);
}

async function sandboxes(_request: Request, _url: URL, env: Env): Promise<Response> {
  let failed: string | null = null;
  const rows = await fanOut(env, async (id) => {
    try {
      const answer = await env.SESSION.getByName(id).fetch(`${INTERNAL}/sandbox`);
      if (answer.status === 404) {
        await answer.body?.cancel();
        return null; // indexed, but its DO was never made: no session
      }
      if (!answer.ok) throw new Error(`it answered ${answer.status}: ${(await answer.text()).slice(0, 200)}`);
      return ((await answer.json()) as { sandbox: Record<string, unknown> | null }).sandbox;
    } catch (exc) {
      failed ??= `Session ${id}'s Durable Object failed: ${messageOf(exc)}`;
      return null;
    }
  });
  // A sandbox left out of the list would be one nobody knows runs (kit/cli/control.py
  // answers so when a Fly fleet cannot be read).
  if (failed !== null) return error("fleet_unreadable", failed, 503);
  return json({ sandboxes: rows }, 200);
}

/** `ask` of every indexed session, SUMMARY_CONCURRENCY at a time, in the index's order;
 * the answers that are not null. */
async function fanOut(env: Env, ask: (id: string) => Promise<Record<string, unknown> | null>): Promise<Array<Record<string, unknown>>> {
  const ids = await sessionIndex(env).list(MAX_LISTED);
  const answers: Array<Record<string, unknown> | null> = new Array(ids.length).fill(null);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < ids.length; i = next++) answers[i] = await ask(ids[i]);
  };
  await Promise.all(Array.from({ length: Math.min(SUMMARY_CONCURRENCY, ids.length) }, worker));
  return answers.filter((a): a is Record<string, unknown> => a !== null);
}

// -- mail (mail/mailindex.ts) ----------------------------------------------------------

/** `?limit=`: 1 to MAX_LISTED_MAIL (default DEFAULT_LISTED_MAIL), or null when it is not one. */
function mailLimit(url: URL): number | null {
  const raw = url.searchParams.get("limit");
  if (raw === null) return DEFAULT_LISTED_MAIL;
  if (!/^[0-9]{1,6}$/.test(raw) || Number(raw) < 1 || Number(raw) > MAX_LISTED_MAIL) return null;
  return Number(raw);
}

const BAD_LIMIT = `limit must be a whole number from 1 to ${MAX_LISTED_MAIL}.`;

async function mailOutbox(_request: Request, url: URL, env: Env): Promise<Response> {
  const limit = mailLimit(url);
  if (limit === null) return error("bad_request", BAD_LIMIT, 400);
  return json({ address: env.KIT_MAIL_ADDRESS ?? null, items: await mailIndex(env).outboxItems(limit) }, 200);
}

async function mailRefused(_request: Request, url: URL, env: Env): Promise<Response> {
  const limit = mailLimit(url);
  if (limit === null) return error("bad_request", BAD_LIMIT, 400);
  return json({ address: env.KIT_MAIL_ADDRESS ?? null, items: await mailIndex(env).refusedItems(limit) }, 200);
}

// -- one session's events ---------------------------------------------------------------

async function events(_request: Request, url: URL, env: Env, id: string): Promise<Response> {
  const bad = badId(id);
  if (bad !== null) return bad;
  const after = seqOf(url.searchParams.get("after") ?? "0");
  if (after === null) return error("bad_after", "Give ?after= a seq: a whole number, 0 or more.", 400);
  const follow = ["1", "true"].includes(url.searchParams.get("follow") ?? "");
  const first = await env.SESSION.getByName(id).fetch(`${INTERNAL}/events?after=${after}&follow=${follow ? 1 : 0}`);
  if (first.status === 404) {
    await first.body?.cancel();
    return unknown(id);
  }
  const body = follow && first.body !== null ? followed(env, id, after, first.body) : first.body;
  return new Response(body, { status: first.status, headers: { "content-type": "application/x-ndjson" } });
}

/** The client's follow stream over the DO's segments (see the top of this file): each
 * event once, in order, by the cursor; a DO gone MAX_ATTACH_TRIES times in a row without an
 * event ends it with an `error` line, MAX_SEGMENTS segments with a `stopping` one. */
function followed(env: Env, id: string, after: number, first: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  let cursor = after;
  let lines: Lines | null = new Lines(first);
  let tries = 0;
  let segments = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (let step = 0; step < 10_000; step++) {
        if (lines === null) {
          if (segments >= MAX_SEGMENTS) {
            controller.enqueue(encoder.encode(endLine("stopping", "This follow reached its limit (a day); run `kit logs --follow` again to go on.")));
            controller.close();
            return;
          }
          lines = await reattach(env, id, cursor);
        }
        const line = lines === null ? null : await lines.next();
        if (line === null) {
          // The DO instance went away mid-segment (evicted, reset): ask its next one.
          lines = null;
          if (++tries >= MAX_ATTACH_TRIES) {
            controller.enqueue(encoder.encode(endLine("error", "The session keeps moving; run `kit logs` again.")));
            controller.close();
            return;
          }
          continue;
        }
        if (line === "") continue;
        const item = JSON.parse(line) as { seq?: unknown; end?: unknown };
        if (typeof item.seq === "number") {
          if (item.seq <= cursor) continue;
          cursor = item.seq;
          tries = 0;
          controller.enqueue(encoder.encode(line + "\n"));
          return;
        }
        if (line + "\n" === SEGMENT_LINE) {
          lines = null;
          segments++;
          tries = 0;
          controller.enqueue(encoder.encode("\n"));
          return;
        }
        controller.enqueue(encoder.encode(line + "\n")); // the DO's end line
        controller.close();
        return;
      }
    },
    async cancel() {
      await lines?.cancel();
    },
  });
}

async function reattach(env: Env, id: string, cursor: number): Promise<Lines | null> {
  try {
    const answer = await env.SESSION.getByName(id).fetch(`${INTERNAL}/events?after=${cursor}&follow=1`);
    if (answer.ok && answer.body !== null) return new Lines(answer.body);
    await answer.body?.cancel();
  } catch (exc) {
    console.log(`session ${id}: following it again failed: ${messageOf(exc)}`);
  }
  return null;
}

/** The lines of an NDJSON stream. */
class Lines {
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly decoder = new TextDecoder();
  private buffer = "";

  constructor(stream: ReadableStream<Uint8Array>) {
    this.reader = stream.getReader();
  }

  /** The next whole line (without its newline); null when the stream ended or broke
   * first. */
  async next(): Promise<string | null> {
    for (let reads = 0; reads < 1_000_000; reads++) {
      const end = this.buffer.indexOf("\n");
      if (end >= 0) {
        const line = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 1);
        return line;
      }
      if (this.buffer.length > MAX_LINE_CHARS) break;
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await this.reader.read();
      } catch {
        return null;
      }
      if (chunk.done) return null; // a line cut short is no line
      this.buffer += this.decoder.decode(chunk.value, { stream: true });
    }
    await this.cancel();
    return null;
  }

  async cancel(): Promise<void> {
    try {
      await this.reader.cancel();
    } catch {
      // already broken
    }
  }
}

// -- actions ----------------------------------------------------------------------------

async function kill(request: Request, _url: URL, env: Env, id: string): Promise<Response> {
  const text = await request.text();
  let body: unknown = {};
  try {
    if (text !== "") body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return error("bad_body", 'Send a JSON object, e.g. {"signal": "TERM"}.', 400);
  }
  const sent = body as Record<string, unknown>;
  let signo: number;
  try {
    signo = signalNumber("signal" in sent ? pyStr(sent.signal) : "KILL");
  } catch (exc) {
    if (exc instanceof UnknownSignal) return error("bad_signal", exc.message, 400);
    throw exc;
  }
  if (!UUID.test(id)) return noSandbox(id);
  return passOn(id, await env.SESSION.getByName(id).fetch(`${INTERNAL}/kill`, { method: "POST", body: JSON.stringify({ signo }) }));
}

async function oom(_request: Request, _url: URL, env: Env, id: string): Promise<Response> {
  if (!UUID.test(id)) return noSandbox(id);
  return passOn(id, await env.SESSION.getByName(id).fetch(`${INTERNAL}/oom`, { method: "POST" }));
}

async function evict(_request: Request, _url: URL, env: Env, id: string): Promise<Response> {
  const bad = badId(id);
  if (bad !== null) return bad;
  // The index answers for sessions without waking their DO; one made before the index
  // existed is asked itself (a read).
  if (!(await sessionIndex(env).has(id)) && !(await env.SESSION.getByName(id).exists())) return unknown(id);
  const answer = await env.SESSION.getByName(id).fetch(`${INTERNAL}/evict`, { method: "POST" });
  if (answer.status === 404) {
    await answer.body?.cancel();
    return unknown(id);
  }
  const { evicted } = (await answer.json()) as { evicted: boolean };
  try {
    // A stub of its own: one that saw its object reset cannot be used again.
    const aborted = await env.SESSION.getByName(id).fetch(`${INTERNAL}/abort`, { method: "POST" });
    await aborted.body?.cancel();
  } catch {
    // the object reset under the call, as asked
  }
  return json({ session_id: id, evicted }, 200);
}

// -- answers ----------------------------------------------------------------------------

/** The DO's answer to a kill or OOM, as the client gets it (no session: no sandbox either,
 * as kit dev answers). */
async function passOn(id: string, answer: Response): Promise<Response> {
  const text = await answer.text();
  if (answer.status === 404 && (JSON.parse(text) as { error?: unknown }).error === "unknown_session") return noSandbox(id);
  return new Response(text, { status: answer.status, headers: { "content-type": "application/json" } });
}

function badId(id: string): Response | null {
  if (UUID.test(id)) return null;
  return error("bad_session_id", `${pyRepr(id)} is not a session id (a lowercase UUID); \`kit sessions\` lists them.`, 400);
}

function unknown(id: string): Response {
  return error("unknown_session", `No session ${id} in this host's log store; \`kit sessions\` lists them.`, 404);
}

function noSandbox(id: string): Response {
  return error("no_sandbox", `Session ${id} has no running sandbox here; \`kit sandbox list\` shows the running ones.`, 404);
}

/** `?after=`: a whole number, 0 or more, as Python's `int()` reads it; null otherwise. */
function seqOf(text: string): number | null {
  const found = /^[\t\n\v\f\r ]*([+-]?[0-9]+(?:_[0-9]+)*)[\t\n\v\f\r ]*$/.exec(text);
  if (found === null) return null;
  const value = Number(found[1].replaceAll("_", ""));
  if (value < 0) return null;
  return Math.min(value, Number.MAX_SAFE_INTEGER); // past any seq: no events after it
}

function decoded(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function error(code: string, message: string, status: number, headers: Record<string, string> = {}): Response {
  return json({ error: code, message }, status, headers);
}

function json(body: unknown, status: number, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

function messageOf(exc: unknown): string {
  return exc instanceof Error ? exc.message : String(exc);
}
