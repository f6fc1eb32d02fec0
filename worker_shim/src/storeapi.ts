// The transcript store's HTTP side in the SessionDO: what kit/host/store_routes.py is for
// kit's Python host, with the same checks, refusals and bodies (both replay
// tests/storage/golden/store_wire.jsonl). The Worker forwards
// `POST /v1/sessions/{id}/store/{method}` to the session's DO, whose fetch hands it here
// (docs/protocol.md §13); the sandbox's `do+https://` store (kit/storage/remote.py) sends
// one call per SessionStore method.
//
// Auth is a store token (`Authorization: Bearer kit-store-…`) this DO minted: one for its
// sandbox (`sandbox`, handed to each new container; minting another replaces it) and one
// for the API (`api`, POST /v1/sessions/{id}/store-token). Only their SHA-256 is stored,
// compared in constant time. Every key must be this session's (`session_id`) under the
// project key `kit`, with a plain subpath; the listings answer this session only. A token
// minted with `anyKey` (only where the Worker var KIT_STORE_CONFORMANCE is "1": the SDK's
// conformance suite names many sessions and projects) may use any key in this DO.
//
// Refusals, each `{"error": "refused", "message": …}`: 404 (no such method), 401 (no or a
// wrong token), 413 (a body over MAX_BODY_BYTES, counted as it streams), 408 (a body slower
// than BODY_TIMEOUT_MS), 400 (not JSON, or not the method's shape), 403 (another session's
// or project's key), 503 (the DO's storage failed: the sandbox's store retries).

import { discard } from "./bodies";
import { randomToken, sameText, sha256 } from "./tokens";
import { TranscriptStore, type NewEntry, type StoreKey } from "./store";

/** `/v1/sessions/{id}/store/{method}`: a store call, as the DO's fetch sees it. */
export const STORE_CALL = /^\/v1\/sessions\/[^/]+\/store\/([^/]+)$/;
export const STORE_METHODS: readonly string[] = ["append", "load", "list_sessions", "list_session_summaries", "list_subkeys", "delete"];
/** kit/host/store_routes.py MAX_BODY_BYTES. */
export const MAX_BODY_BYTES = 16 * 1024 * 1024;
/** kit/host/store_routes.py BODY_TIMEOUT_S. */
export const BODY_TIMEOUT_MS = 30_000;
/** The most of a refused call's body read before it is cancelled. */
/** The one project key sandboxes file transcripts under (kit/storage/portable.py). */
export const PROJECT_KEY = "kit";
/** A subagent transcript's subpath: plain names, no empty, `.` or `..` segment. */
const SUBPATH = /^[A-Za-z0-9_-][A-Za-z0-9._-]*(?:\/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$/;

/** Who holds a store token: the session's current sandbox, or an API client. */
export type TokenHolder = "sandbox" | "api";

const TOKENS_SCHEMA = "CREATE TABLE IF NOT EXISTS store_tokens (holder TEXT PRIMARY KEY, sha256 TEXT NOT NULL, any_key INTEGER NOT NULL)";

/** JSON.rawJSON / isRawJSON (workerd's V8 has them; TypeScript's es2024 lib does not). */
const RawJSON = JSON as unknown as { rawJSON(text: string): object; isRawJSON(value: unknown): boolean };

/** A refusal: its status and message. */
class Refusal extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** A call's shape is wrong: 400 `bad <method> call: …` (Python's TypeError/KeyError/ValueError). */
class BadCall extends Error {}

export class StoreApi {
  readonly store: TranscriptStore;
  /** BODY_TIMEOUT_MS; tests shorten it on an instance. */
  bodyTimeoutMs = BODY_TIMEOUT_MS;

  /** `sessionId` reads this DO's session id (null: it holds no session). */
  constructor(
    private readonly storage: DurableObjectStorage,
    private readonly sessionId: () => string | null,
  ) {
    this.store = new TranscriptStore(storage);
  }

  /** A new store token for `holder` (its previous one stops working); only the hash is kept. */
  async mintToken(holder: TokenHolder, anyKey = false): Promise<string> {
    const token = "kit-store-" + randomToken();
    const hash = await sha256(token);
    this.storage.sql.exec(TOKENS_SCHEMA);
    this.store.create();
    this.storage.sql.exec("INSERT OR REPLACE INTO store_tokens VALUES (?, ?, ?)", holder, hash, anyKey ? 1 : 0);
    return token;
  }

  /** `holder`'s token stops working. */
  revokeToken(holder: TokenHolder): void {
    if (this.hasTokens()) this.storage.sql.exec("DELETE FROM store_tokens WHERE holder = ?", holder);
  }

  /** One store call, `POST …/store/{method}`. */
  async handle(request: Request, method: string): Promise<Response> {
    if (!STORE_METHODS.includes(method)) {
      await discard(request);
      return refuse(404, `no store method '${method}'`);
    }
    const grant = await this.grant(request.headers.get("authorization") ?? "");
    const session = this.sessionId();
    if (grant === null || session === null) {
      await discard(request);
      return refuse(401, "a live session token is required");
    }
    let body: unknown;
    try {
      const raw = await readBody(request, this.bodyTimeoutMs);
      try {
        body = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(raw), keepNumbers);
      } catch {
        return refuse(400, "the body is not JSON");
      }
      if (!isObject(body)) return refuse(400, "the body is not a JSON object");
      return json(200, `{"result":${this.call(method, body, grant.anyKey ? null : session)}}`);
    } catch (exc) {
      if (exc instanceof Refusal) return refuse(exc.status, exc.message);
      if (exc instanceof BadCall) return refuse(400, `bad ${method} call: ${exc.message}`);
      console.error(`session ${session}: store ${method} failed`, exc);
      return refuse(503, `The session's store failed (${String(exc).slice(0, 200)}); retry.`);
    }
  }

  /** The token's grant, or null if it is none of this DO's tokens (constant time per token). */
  private async grant(authorization: string): Promise<{ anyKey: boolean } | null> {
    if (authorization === "" || !this.hasTokens()) return null;
    const hash = await sha256(authorization.startsWith("Bearer ") ? authorization.slice(7) : authorization);
    let found: { anyKey: boolean } | null = null;
    const rows = this.storage.sql.exec<{ sha256: string; any_key: number }>("SELECT sha256, any_key FROM store_tokens").toArray();
    for (const row of rows) {
      if ((await sameText(hash, row.sha256)) && found === null) found = { anyKey: row.any_key === 1 };
    }
    return found;
  }

  private hasTokens(): boolean {
    return this.storage.sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_tokens'").toArray().length > 0;
  }

  /** Run a checked call; its result as JSON text. `session` null: any key (anyKey tokens). */
  private call(method: string, body: { [key: string]: unknown }, session: string | null): string {
    const store = this.store;
    if (method === "append") {
      const entries = field(body, "entries");
      if (!Array.isArray(entries) || !entries.every(isObject)) throw new BadCall("entries must be a list of objects");
      store.append(checkKey(body, session), entries.map(newEntry));
      return "null";
    }
    if (method === "load") {
      const texts = store.load(checkKey(body, session));
      return texts === null ? "null" : `[${texts.join(",")}]`;
    }
    if (method === "delete") {
      const key = checkKey(body, session);
      store.delete(key.project_key, key.session_id, key.subpath === "" ? null : key.subpath);
      return "null";
    }
    if (method === "list_subkeys") {
      const key = checkKey(body, session, false);
      return JSON.stringify(store.listSubkeys(key.project_key, key.session_id));
    }
    const project = checkProject(field(body, "project_key"), session);
    if (method === "list_sessions") return JSON.stringify(store.listSessions(project, session));
    const summaries = store.listSummaries(project, session);
    return `[${summaries.map((s) => `{"session_id":${JSON.stringify(s.session_id)},"mtime":${s.mtime},"data":${s.data}}`).join(",")}]`;
  }
}

/** The key of a call, held to `session` and the project key (any, for session null), as
 * kit/host/store_routes.py `_key` checks it, in the same order. */
function checkKey(body: { [key: string]: unknown }, session: string | null, withSubpath = true): StoreKey {
  const key = field(body, "key");
  if (!isObject(key)) throw new BadCall("key must be an object");
  if (session !== null && key.session_id !== session) {
    throw new Refusal(403, "a sandbox may touch only its own session's transcript");
  }
  const project = checkProject(key.project_key, session);
  const sessionId = field(key, "session_id");
  if (typeof sessionId !== "string") throw new BadCall("session_id must be a string");
  const sub = key.subpath;
  let subpath = "";
  if (withSubpath && pyTruthy(sub)) {
    if (typeof sub !== "string" || !SUBPATH.test(sub)) throw new BadCall("subpath must be plain names joined by /");
    subpath = sub;
  }
  return { project_key: project, session_id: sessionId, subpath };
}

function checkProject(value: unknown, session: string | null): string {
  if (typeof value !== "string" || (session !== null && value !== PROJECT_KEY)) {
    throw new Refusal(403, `transcripts are filed under project_key ${session === null ? "None" : `'${PROJECT_KEY}'`} only`);
  }
  return value;
}

/** `obj[name]`, or BadCall naming it as Python's KeyError does. */
function field(obj: { [key: string]: unknown }, name: string): unknown {
  if (!Object.hasOwn(obj, name)) throw new BadCall(`'${name}'`);
  return obj[name];
}

function newEntry(value: { [key: string]: unknown }): NewEntry {
  const uuid = typeof value.uuid === "string" && value.uuid !== "" ? value.uuid : null;
  return { text: JSON.stringify(value), uuid, value };
}

/** JSON.parse reviver: numbers stay as written (JSON.stringify gives their source back), so
 * an entry's integers past 2^53, `1.0` or `-0.0` load exactly as appended. */
function keepNumbers(this: unknown, _key: string, value: unknown, context?: { source?: string }): unknown {
  return typeof value === "number" && context?.source !== undefined ? RawJSON.rawJSON(context.source) : value;
}

function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !RawJSON.isRawJSON(value);
}

/** Python's truthiness of a decoded JSON value (empty lists and objects, 0 and "" are false). */
function pyTruthy(value: unknown): boolean {
  if (value === null || value === undefined || value === false || value === "") return false;
  if (RawJSON.isRawJSON(value)) return Number((value as { rawJSON: string }).rawJSON) !== 0;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === "object") return Object.keys(value).length > 0;
  return true;
}

/** The body as it streams: 413 past MAX_BODY_BYTES (whatever Content-Length said), 408 past
 * `timeoutMs` for the whole of it. */
async function readBody(request: Request, timeoutMs: number): Promise<Uint8Array> {
  if (Number(request.headers.get("content-length") ?? 0) > MAX_BODY_BYTES) {
    throw new Refusal(413, `a store call is at most ${MAX_BODY_BYTES} bytes`);
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  const timer = new AbortController();
  const expired = scheduler.wait(timeoutMs, { signal: timer.signal }).then(
    () => "expired" as const,
    () => "expired" as const,
  );
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (let reads = 0; reads < 100_000_000; reads++) {
      const next = await Promise.race([reader.read(), expired]);
      if (next === "expired") throw new Refusal(408, `the body did not arrive within ${timeoutMs / 1000} s`);
      if (next.done) break;
      size += next.value.byteLength;
      if (size > MAX_BODY_BYTES) throw new Refusal(413, `a store call is at most ${MAX_BODY_BYTES} bytes`);
      chunks.push(next.value);
    }
  } catch (exc) {
    reader.cancel().catch(() => {});
    throw exc;
  } finally {
    timer.abort();
  }
  const body = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.byteLength;
  }
  return body;
}

/** The `do+https://` (or `do+http://`) store URL of session `sessionId` on the Worker at
 * `origin` (e.g. `https://kit.example.workers.dev`): what a sandbox's config names, with a
 * token from `SessionDO.storeToken()`. */
export function storeUrl(origin: string, sessionId: string): string {
  const url = new URL(origin);
  return `do+${url.protocol}//${url.host}/v1/sessions/${sessionId}/store`;
}


function refuse(status: number, message: string): Response {
  return json(status, JSON.stringify({ error: "refused", message }));
}

function json(status: number, text: string): Response {
  return new Response(text, { status, headers: { "content-type": "application/json" } });
}
