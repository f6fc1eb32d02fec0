// The bar for kit's session host: the same session protocol (docs/protocol.md) served by a
// Durable Object under `wrangler dev`. bench/host.py drives both with one load driver.
//
// Kept small on purpose: no sandbox (a synthetic turn stands in for one, as on the kit side
// of the bench), no hello timeout, no interrupt, no recovery of a turn cut by an eviction.
// The real Worker/DO shim is worker_shim/.
//
// Durability as ARCHITECTURE §4: an event is written to the DO's SQLite before it is sent.
// The DO's output gate holds every ws.send() until the writes before it are committed, so a
// chunk of events is written, handed to the sockets, and goes out once its commit lands.

import { DurableObject } from "cloudflare:workers";

export interface Env {
  SESSIONS: DurableObjectNamespace<SessionDO>;
  API_TOKEN: string;
}

const MAX_FRAME_BYTES = 256 * 1024;
const MAX_TEXT_CHARS = 100_000;
const MAX_ID_CHARS = 128;
const MAX_TOKEN_CHARS = 512;
const MAX_BURST = 1_000_000;
/** Events per commit in a synthetic burst when the text does not say (`burst N [per_commit]`). */
const DEFAULT_PER_COMMIT = 100;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

type Phase = "hello" | "auth" | "handshake" | "live" | "closed";

/** Per-socket state, kept as the socket's attachment so it survives hibernation. */
interface SocketState {
  phase: Phase;
  /** hello.last_seq: the replay starts after it. */
  after: number;
}

type Frame = Record<string, unknown>;

// --- Worker: POST /v1/sessions, GET /v1/sessions/{id}/ws ---------------------------------

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === "/healthz") return json({ ok: true }, 200);
    if (url.pathname === "/v1/sessions" && request.method === "POST") {
      const auth = request.headers.get("authorization") ?? "";
      if (!env.API_TOKEN || !(await sameText(auth, `Bearer ${env.API_TOKEN}`))) {
        return json(
          { error: "unauthorized", message: "Send Authorization: Bearer <the host's API token>." },
          401,
        );
      }
      const sessionId = crypto.randomUUID();
      const token = "kit-session-" + randomToken();
      await env.SESSIONS.get(env.SESSIONS.idFromName(sessionId)).init(sessionId, await sha256(token));
      const scheme = url.protocol === "https:" ? "wss" : "ws";
      const wsUrl = `${scheme}://${url.host}/v1/sessions/${sessionId}/ws`;
      return json({ session_id: sessionId, token, ws_url: wsUrl }, 201);
    }
    const match = /^\/v1\/sessions\/([^/]+)\/ws$/.exec(url.pathname);
    if (match && request.method === "GET") {
      if (request.headers.get("upgrade")?.toLowerCase() !== "websocket") {
        return json({ error: "upgrade_required", message: "Open this URL as a WebSocket." }, 426);
      }
      // An id that is no UUID gets a DO with no session in it: hello answers unknown_session.
      const id = UUID.test(match[1]) ? match[1] : "not-a-session";
      return env.SESSIONS.get(env.SESSIONS.idFromName(id)).fetch(request);
    }
    return json({ error: "not_found", message: "No such route." }, 404);
  },
} satisfies ExportedHandler<Env>;

// --- The session: one Durable Object per session id ---------------------------------------

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, turn_id TEXT, data TEXT NOT NULL, ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
  turn_id TEXT PRIMARY KEY, client_msg_id TEXT NOT NULL UNIQUE, text TEXT NOT NULL,
  state TEXT NOT NULL, user_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_state ON turns(state, user_seq);
`;

export class SessionDO extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  private lastSeq: number;
  private turnCount: number;
  /** Every accepted socket and its state (rebuilt from attachments after hibernation). */
  private readonly sockets = new Map<WebSocket, SocketState>();
  private running = false;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(SCHEMA);
    this.lastSeq = this.sql.exec<{ s: number }>("SELECT COALESCE(MAX(seq), 0) AS s FROM events").one().s;
    this.turnCount = this.sql.exec<{ n: number }>("SELECT COUNT(*) AS n FROM turns").one().n;
    for (const ws of ctx.getWebSockets()) {
      this.sockets.set(ws, (ws.deserializeAttachment() as SocketState | null) ?? { phase: "hello", after: 0 });
    }
    // Exact `{"type":"ping"}` is answered without waking the object; other pings below.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair('{"type":"ping"}', '{"type":"pong"}'));
  }

  /** Called once by the Worker when it creates the session. */
  async init(sessionId: string, tokenSha256: string): Promise<void> {
    this.sql.exec("INSERT OR REPLACE INTO meta VALUES ('session_id', ?), ('token_sha256', ?)", sessionId, tokenSha256);
  }

  async fetch(_request: Request): Promise<Response> {
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    this.setState(server, { phase: "hello", after: 0 });
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const st = this.sockets.get(ws);
    if (st === undefined || st.phase === "closed") return;
    if (typeof message !== "string") {
      return this.error(ws, "bad_frame", "Send frames as WebSocket text messages holding JSON.");
    }
    if (message.length > MAX_FRAME_BYTES && new TextEncoder().encode(message).length > MAX_FRAME_BYTES) {
      return this.fail(ws, "too_large", `Frame is larger than ${MAX_FRAME_BYTES} bytes; split the message or shorten it.`, 1009);
    }
    let frame: Frame;
    try {
      frame = JSON.parse(message) as Frame;
    } catch (exc) {
      return this.error(ws, "bad_json", `Frame is not valid JSON: ${String(exc)}.`);
    }
    if (typeof frame !== "object" || frame === null || Array.isArray(frame) || typeof frame.type !== "string") {
      return this.error(ws, "bad_frame", 'Frame must be a JSON object with a string "type".');
    }
    const type = frame.type;
    if (type === "ping") return this.send(ws, '{"type":"pong"}');
    if (!["hello", "user", "ack", "interrupt"].includes(type)) {
      return this.error(ws, "unknown_type", `Unknown frame type '${type.slice(0, 40)}'; expected hello, user, ack, interrupt or ping.`);
    }
    if (type === "hello") {
      if (st.phase !== "hello") return this.error(ws, "already_hello", "This connection already said hello.");
      return this.hello(ws, st, frame);
    }
    if (st.phase === "hello" || st.phase === "auth") {
      return this.error(ws, "hello_required", "Send hello with the session token first.");
    }
    if (type === "user") return this.user(ws, frame);
    if (type === "ack") {
      if (!isSeq(frame.seq)) return this.error(ws, "bad_frame", "ack.seq must be a non-negative integer.");
      if (st.phase === "handshake") this.replay(ws, st);
    }
    // interrupt: a synthetic turn cannot be interrupted.
  }

  async webSocketClose(ws: WebSocket, code: number, _reason: string): Promise<void> {
    this.sockets.delete(ws);
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, "closed");
    } catch {
      // already closed
    }
  }

  async webSocketError(ws: WebSocket): Promise<void> {
    this.sockets.delete(ws);
  }

  // -- the handshake ------------------------------------------------------------------------

  private async hello(ws: WebSocket, st: SocketState, frame: Frame): Promise<void> {
    const token = frame.token;
    if (typeof token !== "string" || token.length === 0) {
      return this.error(ws, "bad_frame", "hello.token must be a non-empty string.");
    }
    if (token.length > MAX_TOKEN_CHARS) {
      return this.error(ws, "bad_frame", `hello.token must be at most ${MAX_TOKEN_CHARS} characters.`);
    }
    const claimed = frame.last_seq ?? null;
    if (claimed !== null && !isSeq(claimed)) {
      return this.error(ws, "bad_frame", "hello.last_seq must be null or a non-negative integer.");
    }
    const meta = new Map(this.sql.exec<{ key: string; value: string }>("SELECT key, value FROM meta").toArray().map((r) => [r.key, r.value]));
    const expected = meta.get("token_sha256");
    if (expected === undefined) {
      return this.fail(ws, "unknown_session", "No session has this id; create one with POST /v1/sessions.", 4404);
    }
    this.setState(ws, { phase: "auth", after: 0 });
    if (!(await sameText(await sha256(token), expected))) {
      return this.fail(ws, "unauthorized", "Wrong session token.", 4401);
    }
    // From here to the end, one synchronous step: nothing can be emitted in between.
    const have = (claimed as number | null) ?? 0;
    const last = this.lastSeq;
    if (have > last) {
      return this.fail(ws, "seq_ahead", `hello.last_seq ${have} is past this session's last event ${last}; reconnect with last_seq null to receive the whole session.`, 4400);
    }
    const resume = last > have ? "resuming" : this.openTurn() ? "pending" : "none";
    this.send(ws, JSON.stringify({ type: "welcome", protocol: 1, session_id: meta.get("session_id"), resume, last_seq: last }));
    this.setState(ws, { phase: resume === "none" ? "live" : "handshake", after: have });
  }

  /** Send every event after hello.last_seq flagged replay, then go live: one synchronous step. */
  private replay(ws: WebSocket, st: SocketState): void {
    const rows = this.sql.exec<EventRow>("SELECT seq, kind, turn_id, data, ts FROM events WHERE seq > ? ORDER BY seq", st.after);
    for (const row of rows) this.send(ws, eventFrame(row, true));
    this.setState(ws, { phase: "live", after: st.after });
  }

  // -- turns --------------------------------------------------------------------------------

  private user(ws: WebSocket, frame: Frame): void {
    const id = frame.client_msg_id;
    if (typeof id !== "string" || id.length === 0) return this.error(ws, "bad_frame", "user.client_msg_id must be a non-empty string.");
    if (id.length > MAX_ID_CHARS) return this.error(ws, "bad_frame", `user.client_msg_id must be at most ${MAX_ID_CHARS} characters.`);
    const text = frame.text;
    if (typeof text !== "string" || text.trim().length === 0) return this.error(ws, "bad_frame", "user.text must be a non-empty string.");
    if (text.length > MAX_TEXT_CHARS && [...text].length > MAX_TEXT_CHARS) {
      return this.fail(ws, "too_large", `user.text is longer than ${MAX_TEXT_CHARS} characters; shorten the message.`, 1009);
    }
    if (this.sql.exec("SELECT 1 FROM turns WHERE client_msg_id = ?", id).toArray().length > 0) return; // applied before
    const turnId = `t${this.turnCount + 1}`;
    const frames = this.append([["user", JSON.stringify({ client_msg_id: id, text })]], turnId);
    this.sql.exec("INSERT INTO turns VALUES (?, ?, ?, 'queued', ?)", turnId, id, text, this.lastSeq);
    this.turnCount += 1;
    this.publish(frames);
    // Not awaited: the turn runs on after this message, like a runtime streaming into the host.
    void this.runTurns();
  }

  /** Run queued turns one at a time, oldest first. */
  private async runTurns(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      // Let the user event commit (and go out) before the turn's first events are written.
      await this.ctx.storage.sync();
      for (let n = 0; n < 1_000_000; n++) {
        const turn = this.openTurn();
        if (turn === null) return;
        this.sql.exec("UPDATE turns SET state = 'running' WHERE turn_id = ?", turn.turn_id);
        const chunks = syntheticTurn(turn.text);
        for (let i = 0; i < chunks.length; i++) {
          const frames = this.append(chunks[i], turn.turn_id);
          if (i === chunks.length - 1) {
            this.sql.exec("UPDATE turns SET state = 'completed' WHERE turn_id = ?", turn.turn_id);
          }
          this.publish(frames);
          await this.ctx.storage.sync(); // one commit per chunk, as kit commits per runtime chunk
        }
      }
    } finally {
      this.running = false;
    }
  }

  private openTurn(): { turn_id: string; text: string } | null {
    const rows = this.sql
      .exec<{ turn_id: string; text: string }>("SELECT turn_id, text FROM turns WHERE state IN ('queued', 'running') ORDER BY user_seq LIMIT 1")
      .toArray();
    return rows[0] ?? null;
  }

  // -- the log ------------------------------------------------------------------------------

  /** Write events (committed with the current batch); their frames, to send after. */
  private append(items: Array<[string, string]>, turnId: string | null): string[] {
    const frames: string[] = [];
    for (const [kind, data] of items) {
      const row: EventRow = { seq: ++this.lastSeq, kind, turn_id: turnId, data, ts: Date.now() };
      this.sql.exec("INSERT INTO events VALUES (?, ?, ?, ?, ?)", row.seq, kind, turnId, data, row.ts);
      frames.push(eventFrame(row, false));
    }
    return frames;
  }

  /** Hand frames to every live socket; the output gate releases them after the commit. */
  private publish(frames: string[]): void {
    for (const [ws, st] of this.sockets) {
      if (st.phase !== "live") continue;
      for (const f of frames) this.send(ws, f);
    }
  }

  // -- sockets ------------------------------------------------------------------------------

  private setState(ws: WebSocket, st: SocketState): void {
    this.sockets.set(ws, st);
    ws.serializeAttachment(st);
  }

  private send(ws: WebSocket, text: string): void {
    try {
      ws.send(text);
    } catch {
      this.sockets.delete(ws); // closed under us: webSocketClose follows
    }
  }

  private error(ws: WebSocket, code: string, message: string): void {
    this.send(ws, JSON.stringify({ type: "error", code, message }));
  }

  private fail(ws: WebSocket, code: string, message: string, closeCode: number): void {
    this.error(ws, code, message);
    this.setState(ws, { phase: "closed", after: 0 });
    try {
      ws.close(closeCode, code);
    } catch {
      // already closed
    }
  }
}

// --- helpers -------------------------------------------------------------------------------

interface EventRow extends Record<string, SqlStorageValue> {
  seq: number;
  kind: string;
  turn_id: string | null;
  data: string;
  ts: number;
}

/** An event frame; `data` is stored as JSON text and spliced in as is. */
function eventFrame(row: EventRow, replay: boolean): string {
  return (
    `{"type":"event","seq":${row.seq},"kind":${JSON.stringify(row.kind)},"data":${row.data},` +
    `"replay":${replay},"ts":${row.ts},"turn_id":${JSON.stringify(row.turn_id)}}`
  );
}

/**
 * The synthetic turn, identical to bench/kit_host.py's runtime: `burst N [per_commit]` gives N
 * text_delta events and a result, `per_commit` events at a time; any other text one
 * text_delta and a result. Returns the chunks of [kind, data JSON].
 */
function syntheticTurn(text: string): Array<Array<[string, string]>> {
  const result: [string, string] = [
    "result",
    JSON.stringify({
      is_error: false, subtype: "success", text: "done", num_turns: 1, duration_ms: 0,
      stop_reason: "end_turn", total_cost_usd: 0, usage: {},
    }),
  ];
  const burst = /^burst (\d+)(?: (\d+))?$/.exec(text.trim());
  if (burst === null) return [[["text_delta", JSON.stringify({ text: "ok" })], result]];
  const n = Math.min(Number(burst[1]), MAX_BURST);
  const per = Math.max(1, Number(burst[2] ?? DEFAULT_PER_COMMIT));
  const events: Array<[string, string]> = [];
  for (let i = 0; i < n; i++) events.push(["text_delta", JSON.stringify({ text: `word${i} ` })]);
  events.push(result);
  const chunks: Array<Array<[string, string]>> = [];
  for (let i = 0; i < events.length; i += per) chunks.push(events.slice(i, i + per));
  return chunks;
}

function isSeq(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0;
}

function json(body: unknown, status: number): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

function randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function sameText(a: string, b: string): Promise<boolean> {
  const [x, y] = [new TextEncoder().encode(a), new TextEncoder().encode(b)];
  return x.length === y.length && crypto.subtle.timingSafeEqual(x, y);
}
