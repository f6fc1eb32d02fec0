// SessionDO: one Durable Object per session, kit's session host on Cloudflare. It speaks
// protocol v1 (docs/protocol.md) on hibernatable sockets, keeps the event log in its SQLite
// (log.ts) and runs turns in its container through the runtime API (runtime.ts).
//
// Each socket's protocol state lives in its attachment, so a DO woken from hibernation knows
// where every socket is. Messages of one socket are handled one after another (a chain per
// socket), so answers leave in the order the frames came, even when one of them waits on I/O.

import { DurableObject } from "cloudflare:workers";
import type { Env } from "./env";
import {
  CLOSE,
  E,
  PONG,
  ProtocolError,
  errorFrame,
  eventFrame,
  interruptAckFrame,
  parseClientFrame,
  welcomeFrame,
  type ClientFrame,
  type EventRow,
  type ResumeMode,
} from "./frames";
import { FILES_ROUTE, SessionFiles, serveFiles } from "./files";
import { REPLAY_PAGE, SessionLog } from "./log";
import { MAX_QUEUED_FRAMES, Outbox } from "./outbox";
import { HELLO_TIMEOUT_MS, noSessionSocket } from "./nosession";
import { TurnRunner } from "./runner";
import { CONTROL_PREFIX, SessionControl } from "./sessioncontrol";
import { EGRESS_ROUTE, EGRESS_TOKEN, EGRESS_URL, HttpContainer } from "./httpcontainer";
import { MODEL_PATH, ModelRoute } from "./model";
export { MODEL_PATH } from "./model";
import { RUNTIME_PORT, RuntimeLost, type ContainerLike } from "./runtime";
import { WORKER_HOST, type EgressProps } from "./egress";
import { STORE_CALL, StoreApi, storeUrl } from "./storeapi";
import { randomToken, sameText, sha256 } from "./tokens";
import { MAIL_RETRY_MS, MailReplies, bindingMailer, type MailTurn, type Mailer } from "./mail/replies";

export { exitCodeOf, oomOf, reasonOf } from "./runner";
export { randomToken, sameText, sha256 } from "./tokens";

export { HELLO_TIMEOUT_MS } from "./nosession";

type Phase = "hello" | "auth" | "handshake" | "live" | "closed";

/** A socket's protocol state, kept as its attachment (survives hibernation). */
interface SocketState {
  phase: Phase;
  /** hello.last_seq (0 for null): the replay starts after it. */
  after: number;
  /** When the socket opened (ms): the hello deadline counts from here. */
  opened: number;
}

/** While a turn is open the alarm fires at least this often: it wakes an instance that
 * was evicted mid-turn (which then resumes the turn) and keeps a live one busy. */
export const TURN_WATCH_MS = 30_000;

/** How often a paused replay looks whether its socket has taken the last page. */
const DRAIN_POLL_MS = 10;

export class SessionDO extends DurableObject<Env> {
  private readonly log: SessionLog;
  /** Per-socket chains of message handling (in memory; lost with the instance, which is
   * fine: nothing is pending once an instance is gone). */
  private readonly chains = new Map<WebSocket, Promise<void>>();
  /** Runs the open turns (runner.ts); tests reach its knobs through the instance. */
  private readonly runner: TurnRunner;
  /** What each socket has not yet taken (in memory: an instance that hibernated had nothing
   * pending, and a new one counts from its first send). */
  private readonly outboxes = new Map<WebSocket, Outbox>();
  /** MAX_QUEUED_FRAMES; tests lower it on an instance. */
  private maxQueuedFrames = MAX_QUEUED_FRAMES;
  /** The emulator's container, when this DO has no `ctx.container` (wrangler dev). */
  private emulated: HttpContainer | null = null;
  /** The sandbox's model calls, metered against the bundle's limits (model.ts). */
  private readonly modelRoute: ModelRoute;
  /** kit's control routes for this session (sessioncontrol.ts). */
  private readonly control: SessionControl;
  /** The session's files (files.ts), put into each container before a turn. */
  private readonly files: SessionFiles;
  /** The session's mail: one reply per inbound message (mail/replies.ts). */
  private readonly mail: MailReplies;
  /** What sends the replies: the send_email binding; tests put a recorder here. */
  mailer: Mailer;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.log = new SessionLog(ctx.storage);
    this.files = new SessionFiles(ctx.storage);
    // An existing session's storage is brought to this version's schema before any event;
    // a DO that holds no session writes nothing (an unknown id stays empty).
    void ctx.blockConcurrencyWhile(async () => {
      this.log.migrate();
    });
    this.modelRoute = new ModelRoute({
      env,
      log: this.log,
      publish: (row) => this.publish(row),
      waitUntil: (promise) => this.ctx.waitUntil(promise),
    });
    this.runner = new TurnRunner({
      log: this.log,
      beginTurn: (turnId) => this.modelRoute.meter.beginTurn(turnId),
      container: () => this.container(),
      publish: (row) => this.publish(row),
      waitUntil: (promise) => this.ctx.waitUntil(promise),
      runtimeConfig: (runtimeToken, modelToken) => this.runtimeConfig(runtimeToken, modelToken),
      revokeSandboxTokens: () => {
        this.log.setMeta("model_token_sha256", "");
        this.log.setMeta("egress_token_sha256", "");
        this.log.setMeta("egress_token_prev_sha256", "");
        this.storeApi.revokeToken("sandbox");
      },
      intercept: (container) => this.intercept(container),
      pushFiles: (runtime, pushed) => this.files.push(runtime, pushed, this.log.meta("session_id") ?? ""),
    });
    // A turn still open in the log is resumed by the alarm or the next client message
    // (runner.resume), not from here: a turn runs on after the event that started it.
    this.control = new SessionControl({ ctx, env, log: this.log, runner: this.runner, container: () => this.container() });
    this.control.register();
    this.mailer = bindingMailer(env);
    this.mail = new MailReplies({
      env,
      log: this.log,
      sql: ctx.storage.sql,
      addTurn: (clientMsgId, text) => this.log.addTurn(clientMsgId, text),
      started: async (row) => {
        this.publish(row as EventRow);
        await this.armTurnWatch();
        this.runner.start();
      },
      mailer: () => this.mailer,
    });
  }

  /** Create the session (called once by the Worker at POST /v1/sessions). */
  async init(sessionId: string, tokenSha256: string, tier: string): Promise<void> {
    // `indexed`: the Worker added the session to the SessionIndex before this call.
    this.log.create({ session_id: sessionId, token_sha256: tokenSha256, tier, created_ms: String(Date.now()), indexed: "1" });
  }

  /** Create the session of a new email thread (the MailIndex chose its id; the Worker's
   * email handler calls this once per delivery, so again is a no-op). Nobody holds its
   * socket token: its events are read on the control API (`kit logs`). */
  async initMail(sessionId: string, tier: string): Promise<void> {
    const tokenSha256 = await sha256("kit-session-" + randomToken());
    if (this.log.exists()) return; // after the await: one synchronous check-and-create
    this.log.create({ session_id: sessionId, token_sha256: tokenSha256, tier, created_ms: String(Date.now()), indexed: "1", channel: "email" });
  }

  /** An inbound message's turn (mail/replies.ts `take`): started once per inbound id; the
   * reply leaves when the turn ends. */
  async mailTurn(turn: MailTurn): Promise<{ turn_id: string; fresh: boolean }> {
    if (!this.log.exists()) throw new Error("This Durable Object holds no session; the email handler makes it first (initMail).");
    this.runner.resume();
    return this.mail.take(turn);
  }

  /** One attachment of the inbound message `inboundId` (named by mail/text.ts
   * `attachmentPlan`), kept as the session file `path` before the message's turn is taken
   * (mail/handler.ts, one attachment at a time). Null once kept, or when the message's turn
   * was taken before (a repeated delivery: nothing is written); else why it was not kept. */
  async saveMailFile(inboundId: string, path: string, data: Uint8Array): Promise<string | null> {
    if (!this.log.exists()) throw new Error("This Durable Object holds no session; the email handler makes it first (initMail).");
    if (this.mail.taken(inboundId)) return null;
    const refused = await this.files.put([{ path, data }]);
    return refused === null ? null : refused.message.replace(/\.$/, "");
  }

  /** Whether this DO holds a session (reads only: the Worker asks before it forwards a
   * socket, so an unknown id never gets an alarm or a table). */
  async exists(): Promise<boolean> {
    return this.log.exists();
  }

  /** The WebSocket upgrade of `/v1/sessions/{id}/ws`, a model call of the session's
   * sandbox (`/v1/sessions/{id}/model/...`) or a transcript store call
   * (`/v1/sessions/{id}/store/{method}`, storeapi.ts), forwarded by the Worker. */
  async fetch(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname;
    if (path.startsWith(CONTROL_PREFIX)) return this.control.fetch(request); // from the Worker's control routes
    if (EGRESS_ROUTE.test(path)) return this.emulatedEgress(request);
    const model = MODEL_PATH.exec(path);
    if (model !== null) return this.model(request, model[1]);
    const store = STORE_CALL.exec(path);
    if (store !== null) return this.storeApi.handle(request, store[1]);
    const files = FILES_ROUTE.exec(path);
    if (files !== null) {
      // From the Worker, which checked the API token and asked `exists` first.
      if (!this.log.exists()) {
        await request.body?.cancel();
        return Response.json({ error: "unknown_session", message: "No session has this id; create one with POST /v1/sessions." }, { status: 404 });
      }
      return serveFiles(request, this.files, files[2]);
    }
    if (!this.log.exists()) return noSessionSocket(); // the Worker asked first; in case it did not
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    const opened = Date.now();
    server.serializeAttachment({ phase: "hello", after: 0, opened } satisfies SocketState);
    const alarm = await this.ctx.storage.getAlarm();
    if (alarm === null || alarm > opened + HELLO_TIMEOUT_MS) await this.ctx.storage.setAlarm(opened + HELLO_TIMEOUT_MS);
    return new Response(null, { status: 101, webSocket: client });
  }

  /** Close sockets that never said hello in time; resume an open turn this instance is not
   * running (it was evicted mid-turn); set the alarm for the next deadline. */
  async alarm(): Promise<void> {
    const now = Date.now();
    let next: number | null = null;
    if (this.log.openTurn() !== null) {
      this.runner.resume();
      next = now + TURN_WATCH_MS;
    }
    // A reply whose turn ended while no instance sent it (evicted, restarted) goes now.
    if (this.mail.pending() > 0 && (await this.mail.pump()) > 0) next = Math.min(next ?? Infinity, now + MAIL_RETRY_MS);
    for (const ws of this.ctx.getWebSockets()) {
      const st = state(ws);
      if (st.phase !== "hello") continue;
      const due = st.opened + HELLO_TIMEOUT_MS;
      if (due <= now) {
        this.fail(ws, new ProtocolError(E.HELLO_REQUIRED, `No hello within ${HELLO_TIMEOUT_MS / 1000} s; send hello first.`, CLOSE.BAD_REQUEST));
      } else if (next === null || due < next) {
        next = due;
      }
    }
    if (next !== null) await this.ctx.storage.setAlarm(next);
  }

  async webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const previous = this.chains.get(ws) ?? Promise.resolve();
    const current = previous.then(() => this.handle(ws, message));
    this.chains.set(ws, current);
    try {
      await current;
    } finally {
      if (this.chains.get(ws) === current) this.chains.delete(ws);
    }
  }

  async webSocketClose(ws: WebSocket, code: number, _reason: string): Promise<void> {
    this.chains.delete(ws);
    this.outboxes.delete(ws);
    try {
      ws.close(code === 1005 || code === 1006 ? CLOSE.NORMAL : code, "closed");
    } catch {
      // already closed
    }
  }

  async webSocketError(ws: WebSocket): Promise<void> {
    this.chains.delete(ws);
    this.outboxes.delete(ws);
  }

  // -- one client message -----------------------------------------------------------------

  private async handle(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const st = state(ws);
    if (st.phase === "closed") return;
    this.runner.resume();
    try {
      if (typeof message !== "string") {
        throw new ProtocolError(E.BAD_FRAME, "Send frames as WebSocket text messages holding JSON.");
      }
      const frame = parseClientFrame(message);
      await this.apply(ws, st, frame);
    } catch (exc) {
      if (exc instanceof ProtocolError) return this.fail(ws, exc);
      console.error(`session ${this.log.meta("session_id")}: connection failed`, exc);
      this.fail(ws, new ProtocolError(E.INTERNAL, "The host failed on this connection; reconnect and resume.", CLOSE.INTERNAL));
    }
  }

  private async apply(ws: WebSocket, st: SocketState, frame: ClientFrame): Promise<void> {
    if (frame.type === "ping") return this.send(ws, PONG);
    if (frame.type === "hello") {
      if (st.phase !== "hello") throw new ProtocolError(E.ALREADY_HELLO, "This connection already said hello.");
      return this.hello(ws, st, frame.token, frame.lastSeq);
    }
    if (st.phase === "hello" || st.phase === "auth") {
      throw new ProtocolError(E.HELLO_REQUIRED, "Send hello with the session token first.");
    }
    if (frame.type === "user") return await this.user(frame.clientMsgId, frame.text);
    if (frame.type === "ack") {
      if (st.phase === "handshake") await this.replay(ws, st);
      return;
    }
    return this.interrupt(ws);
  }

  private async hello(ws: WebSocket, st: SocketState, token: string, claimed: number | bigint | null): Promise<void> {
    const expected = this.log.meta("token_sha256");
    if (expected === null) {
      throw new ProtocolError(E.UNKNOWN_SESSION, "No session has this id; create one with POST /v1/sessions.", CLOSE.UNKNOWN_SESSION);
    }
    setState(ws, { ...st, phase: "auth" });
    if (!(await sameText(await sha256(token), expected))) {
      throw new ProtocolError(E.UNAUTHORIZED, "Wrong session token.", CLOSE.UNAUTHORIZED);
    }
    // From here to the end one synchronous step: no event can be appended in between.
    const have = claimed ?? 0;
    const last = this.log.lastSeq();
    if (have > last) {
      throw new ProtocolError(
        E.SEQ_AHEAD,
        `hello.last_seq ${have} is past this session's last event ${last}; reconnect with last_seq null to receive the whole session.`,
        CLOSE.BAD_REQUEST,
      );
    }
    const after = Number(have);
    const resume: ResumeMode = last > after ? "resuming" : this.log.openTurn() !== null ? "pending" : "none";
    this.send(ws, welcomeFrame(this.log.meta("session_id")!, resume, last));
    setState(ws, { ...st, phase: resume === "none" ? "live" : "handshake", after });
  }

  /** Send every event after hello.last_seq flagged replay, then go live (docs/protocol.md
   * §5, kit/host/app.py `_replay`): full pages go out one at a time, the next read only once
   * the socket has taken the last (other events run meanwhile); the last page is read, and
   * the socket goes live, in one synchronous step, so nothing is missed or sent twice. */
  private async replay(ws: WebSocket, st: SocketState): Promise<void> {
    const box = this.outbox(ws);
    let after = st.after;
    const pages = Math.floor(Math.max(0, this.log.lastSeq() - after) / REPLAY_PAGE) + 1;
    for (let n = 0; n < pages; n++) {
      if (state(ws).phase !== "handshake") return; // closed meanwhile
      const rows = this.log.page(after, REPLAY_PAGE);
      if (rows.length < REPLAY_PAGE) break;
      for (const row of rows) box.send(eventFrame(row, true));
      after = rows[rows.length - 1].seq;
      setState(ws, { ...state(ws), after });
      if (!(await this.drained(ws, box))) return;
    }
    if (state(ws).phase !== "handshake") return;
    for (let n = 0; n < Number.MAX_SAFE_INTEGER; n++) {
      const rows = this.log.page(after, REPLAY_PAGE);
      for (const row of rows) box.send(eventFrame(row, true));
      if (rows.length < REPLAY_PAGE) break;
      after = rows[rows.length - 1].seq;
    }
    setState(ws, { ...state(ws), phase: "live", after });
  }

  /** Wait until `ws` has taken everything sent to it (or, where the runtime does not say,
   * one turn of the event loop); false if it closed meanwhile. */
  private async drained(ws: WebSocket, box: Outbox): Promise<boolean> {
    do {
      await scheduler.wait(box.measured ? DRAIN_POLL_MS : 0);
      if (state(ws).phase === "closed" || ws.readyState >= 2) return false; // CLOSING, CLOSED
    } while (!box.drained());
    return true;
  }

  private async user(clientMsgId: string, text: string): Promise<void> {
    if (this.log.seen(clientMsgId)) return; // applied before: nothing happens
    this.publish(this.log.addTurn(clientMsgId, text));
    await this.armTurnWatch();
    // Not awaited: the turn runs on after this message (and with no client at all).
    this.runner.start();
  }

  private async interrupt(ws: WebSocket): Promise<void> {
    // kit/host/app.py `_interrupt`: the oldest open turn when the interrupt came (the one
    // running, or next to run), or, if none was open, the one that started meanwhile.
    const open = this.log.openTurn();
    const interrupted = await this.runner.interrupt();
    const turn = open ?? (interrupted ? this.log.openTurn() : null);
    this.send(ws, interruptAckFrame(turn?.turn_id ?? null, interrupted));
  }

  // -- turns ------------------------------------------------------------------------------
  //
  // The TurnRunner (runner.ts) runs them; while a turn is open the alarm fires within
  // TURN_WATCH_MS, so an instance evicted mid-turn is woken to resume it (`runner.resume`).

  /** Make sure the alarm fires within TURN_WATCH_MS while a turn is open. */
  private async armTurnWatch(): Promise<void> {
    const due = Date.now() + TURN_WATCH_MS;
    const alarm = await this.ctx.storage.getAlarm();
    if (alarm === null || alarm > due) await this.ctx.storage.setAlarm(due);
  }

  /** The container: workerd's own; under `wrangler dev --enable-containers=false`
   * (`ctx.container` undefined) the container emulator's when KIT_CONTAINER_EMULATOR names
   * it; else none. */
  private container(): ContainerLike | null {
    if (this.ctx.container !== undefined) return this.ctx.container;
    const url = this.env.KIT_CONTAINER_EMULATOR;
    if (!url) return null;
    this.emulated ??= new HttpContainer({
      url,
      token: this.env.KIT_CONTAINER_EMULATOR_TOKEN ?? "",
      id: this.ctx.id.toString(),
      image: this.env.KIT_CONTAINER_IMAGE || undefined,
      worker: this.env.KIT_WORKER_URL || undefined,
      egressToken: async (token) => {
        // The emulator switches tokens after this: the previous one stays good until the
        // sandbox's tokens are revoked, so no request in between is refused.
        this.log.setMeta("egress_token_prev_sha256", this.log.meta("egress_token_sha256") ?? "");
        this.log.setMeta("egress_token_sha256", await sha256(token));
      },
    });
    return this.emulated;
  }

  /** A request of the emulated container's, delivered by kit's container emulator to the
   * DO that intercepted it (a rehearsal): with the token kept at interception, passed to a
   * KitEgress binding with the URL the container asked for; 401 otherwise. */
  private async emulatedEgress(request: Request): Promise<Response> {
    const sent = request.headers.get(EGRESS_TOKEN) ?? "";
    const target = request.headers.get(EGRESS_URL) ?? "";
    const hash = await sha256(sent);
    let known = false;
    for (const key of ["egress_token_sha256", "egress_token_prev_sha256"]) {
      const kept = this.log.meta(key) ?? "";
      if (kept !== "" && (await sameText(hash, kept))) known = true;
    }
    if (!known || !/^http:\/\//.test(target)) {
      await request.body?.cancel();
      return Response.json({ error: "unauthorized", message: "Not an intercepted request of this session's container." }, { status: 401 });
    }
    const headers = new Headers(request.headers);
    headers.delete(EGRESS_TOKEN);
    headers.delete(EGRESS_URL);
    const body = request.method === "GET" || request.method === "HEAD" ? null : request.body;
    let asked: Request;
    try {
      asked = new Request(target, { method: request.method, headers, body, redirect: "manual" });
    } catch {
      await request.body?.cancel();
      return Response.json({ error: "bad_request", message: `Not a URL: ${target.slice(0, 200)}` }, { status: 400 });
    }
    return this.egressBinding().fetch(asked);
  }

  /** A KitEgress binding for this session's container; RuntimeLost where the runtime makes
   * none (an old compatibility date). */
  private egressBinding(): Fetcher {
    const make = (this.ctx.exports as { KitEgress?: (options: { props: EgressProps }) => Fetcher } | undefined)?.KitEgress;
    if (make === undefined) {
      throw new RuntimeLost("This runtime has no ctx.exports.KitEgress to intercept the container's outbound HTTP: update wrangler and the compatibility date.");
    }
    return make({ props: { sessionId: this.log.meta("session_id") ?? "" } });
  }

  /** Hand the container's outbound HTTP(S) to KitEgress (egress.ts), bound to this
   * session: the only way its model and store calls reach this DO, and its allowlist. A
   * container that cannot be intercepted is not started: it would reach nothing of kit's,
   * and maybe the internet. */
  private async intercept(container: ContainerLike): Promise<void> {
    if (container.interceptAllOutboundHttp === undefined || container.interceptOutboundHttps === undefined) {
      throw new RuntimeLost("This runtime cannot intercept the container's outbound HTTP (interceptAllOutboundHttp, interceptOutboundHttps): update wrangler and the compatibility date.");
    }
    const binding = this.egressBinding();
    await container.interceptAllOutboundHttp(binding);
    await container.interceptOutboundHttps("*", binding);
  }

  /** The runtime's start-up config (kit/protocol/runtime_config.py RuntimeConfig, as
   * kit/host/sandbox.py runtime_config makes it), passed in the container's environment:
   * the paths of kit's runtime image, the model route of this session on the Worker. */
  private async runtimeConfig(runtimeToken: string, modelToken: string): Promise<Record<string, unknown>> {
    const sessionId = this.log.meta("session_id") ?? "";
    // Intercepted (egress.ts): on Cloudflare, and through kit's container emulator.
    const worker = `http://${WORKER_HOST}`;
    return {
      session_id: sessionId,
      // kit deploy's image holds the bundle in /bundles/<digest[:32]> (as a Fly sandbox does).
      bundle_dir: this.env.KIT_BUNDLE_DIR || `/bundles/${(this.env.KIT_BUNDLE_DIGEST ?? "").slice(0, 32)}`,
      workspace: "/workspace",
      home: "/home/kit",
      tmp_dir: "/tmp",
      // The transcript store in this DO (storeapi.ts), with a token of this sandbox's own.
      store_url: storeUrl(worker, sessionId),
      store_token: await this.storeToken(),
      listen: `tcp:0.0.0.0:${RUNTIME_PORT}`,
      model_base_url: `${worker}/v1/sessions/${sessionId}/model`,
      model_unix_socket: null,
      model_token: modelToken,
      runtime_token: runtimeToken,
      bundle_digest: this.env.KIT_BUNDLE_DIGEST || null,
    };
  }

  /** A model call of this session's sandbox (model.ts): checked against the model token
   * minted at the sandbox's start and the spend limits, metered as its reply streams. */
  private async model(request: Request, rest: string): Promise<Response> {
    return this.modelRoute.fetch(request, rest);
  }

  /** Hand an event to every live socket; the output gate releases it after the commit. A
   * socket with more than MAX_QUEUED_FRAMES frames unsent is closed instead (`slow_consumer`,
   * 4408, after what it was sent): the log keeps everything, it resumes by last_seq. */
  private publish(row: EventRow): void {
    const frame = eventFrame(row, false);
    for (const ws of this.ctx.getWebSockets()) {
      if (state(ws).phase !== "live") continue;
      const box = this.outbox(ws);
      if (box.queued() > this.maxQueuedFrames) {
        this.fail(ws, new ProtocolError(E.SLOW_CONSUMER, "Too far behind; reconnect and resume with last_seq.", CLOSE.SLOW_CONSUMER));
      } else {
        box.send(frame);
      }
    }
    this.control.published(row);
    if (endsTurn(row) && this.mail.isMailTurn(row.turn_id)) this.ctx.waitUntil(this.pumpMail());
  }

  /** Send the replies of ended turns; the alarm retries what is left. */
  private async pumpMail(): Promise<void> {
    try {
      if ((await this.mail.pump()) === 0) return;
    } catch (exc) {
      console.error(`session ${this.log.meta("session_id")}: sending mail replies failed`, exc);
    }
    const due = Date.now() + MAIL_RETRY_MS;
    const alarm = await this.ctx.storage.getAlarm();
    if (alarm === null || alarm > due) await this.ctx.storage.setAlarm(due);
  }

  private outbox(ws: WebSocket): Outbox {
    let box = this.outboxes.get(ws);
    if (box === undefined) {
      box = new Outbox({ send: (text) => send(ws, text), get bufferedAmount() { return (ws as { bufferedAmount?: number }).bufferedAmount; } });
      this.outboxes.set(ws, box);
    }
    return box;
  }

  private send(ws: WebSocket, text: string): void {
    this.outbox(ws).send(text);
  }

  private fail(ws: WebSocket, exc: ProtocolError): void {
    this.send(ws, errorFrame(exc.code, exc.message));
    if (exc.closeCode === null) return;
    setState(ws, { ...state(ws), phase: "closed" });
    try {
      ws.close(exc.closeCode, exc.code);
    } catch {
      // already closed
    }
  }

  // -- the transcript store (storeapi.ts, store.ts; docs/protocol.md §13) ------------------

  private transcripts: StoreApi | null = null;

  /** The session's transcript store and its HTTP side, made on first use. */
  private get storeApi(): StoreApi {
    this.transcripts ??= new StoreApi(this.ctx.storage, () => this.log.meta("session_id"));
    return this.transcripts;
  }

  /** A new store token for the session's next sandbox, to put in its runtime config as
   * `store_token` beside `store_url` = `storeUrl(<this Worker's URL>, <session id>)`; the
   * previous sandbox's token stops working. */
  async storeToken(): Promise<string> {
    return this.storeApi.mintToken("sandbox");
  }

  /** `POST /v1/sessions/{id}/store-token`, from the Worker: a new API store token (the
   * previous one stops working), null when this DO holds no session. `anyKey` tokens only
   * where the Worker var KIT_STORE_CONFORMANCE is "1". */
  async apiStoreToken(anyKey: boolean): Promise<string | null> {
    if (!this.log.exists() || this.log.meta("session_id") === null) return null;
    if (anyKey && this.env.KIT_STORE_CONFORMANCE !== "1") throw new Error("any-key store tokens need KIT_STORE_CONFORMANCE=1");
    return this.storeApi.mintToken("api", anyKey);
  }
}

// --- helpers ---------------------------------------------------------------------------------



/** A `result`, or an `error` `turn_failed`: the end of its turn. */
function endsTurn(row: EventRow): boolean {
  if (row.kind === "result") return true;
  if (row.kind !== "error" || !row.data.includes("turn_failed")) return false;
  return (JSON.parse(row.data) as { code?: unknown }).code === "turn_failed";
}

function state(ws: WebSocket): SocketState {
  return (ws.deserializeAttachment() as SocketState | null) ?? { phase: "hello", after: 0, opened: Date.now() };
}

function setState(ws: WebSocket, st: SocketState): void {
  ws.serializeAttachment(st);
}

function send(ws: WebSocket, text: string): void {
  try {
    ws.send(text);
  } catch {
    // closed under us: webSocketClose follows
  }
}
