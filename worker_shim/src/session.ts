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
import { REPLAY_PAGE, SessionLog } from "./log";
import { ContainerRuntime, RuntimeLost, type ContainerLike } from "./runtime";

/** No hello this long after the socket opened: `hello_required`, close 4400. */
export const HELLO_TIMEOUT_MS = 10_000;

type Phase = "hello" | "auth" | "handshake" | "live" | "closed";

/** A socket's protocol state, kept as its attachment (survives hibernation). */
interface SocketState {
  phase: Phase;
  /** hello.last_seq (0 for null): the replay starts after it. */
  after: number;
  /** When the socket opened (ms): the hello deadline counts from here. */
  opened: number;
}

/** Whether a runtime event ends its turn (kit/protocol/turns.py `ends_turn`). */
export function endsTurn(kind: string, data: Record<string, unknown>): boolean {
  return kind === "result" || (kind === "error" && data.code === "turn_failed");
}

export class SessionDO extends DurableObject<Env> {
  private readonly log: SessionLog;
  /** Per-socket chains of message handling (in memory; lost with the instance, which is
   * fine: nothing is pending once an instance is gone). */
  private readonly chains = new Map<WebSocket, Promise<void>>();
  private turnsRunning = false;
  /** The runtime of the turn now streaming, if any (for interrupts). */
  private streaming: { turnId: string; runtime: ContainerRuntime } | null = null;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.log = new SessionLog(ctx.storage.sql);
    // TODO(recovery): a woken DO with a turn still `running` lost its stream with the old
    // instance; the turn planner port decides what to do (docs/protocol.md §7).
  }

  /** Create the session (called once by the Worker at POST /v1/sessions). */
  async init(sessionId: string, tokenSha256: string, tier: string): Promise<void> {
    this.log.create({ session_id: sessionId, token_sha256: tokenSha256, tier });
  }

  /** The WebSocket upgrade of `/v1/sessions/{id}/ws`, forwarded by the Worker. */
  async fetch(_request: Request): Promise<Response> {
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    const opened = Date.now();
    server.serializeAttachment({ phase: "hello", after: 0, opened } satisfies SocketState);
    const alarm = await this.ctx.storage.getAlarm();
    if (alarm === null || alarm > opened + HELLO_TIMEOUT_MS) await this.ctx.storage.setAlarm(opened + HELLO_TIMEOUT_MS);
    return new Response(null, { status: 101, webSocket: client });
  }

  /** Close sockets that never said hello in time; set the alarm for the next deadline. */
  async alarm(): Promise<void> {
    // TODO(recovery): a container that stopped while the DO slept is noticed here (and on
    // every request): check `running`, record the death, continue the turn.
    const now = Date.now();
    let next: number | null = null;
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
    try {
      ws.close(code === 1005 || code === 1006 ? CLOSE.NORMAL : code, "closed");
    } catch {
      // already closed
    }
  }

  async webSocketError(ws: WebSocket): Promise<void> {
    this.chains.delete(ws);
  }

  // -- one client message -----------------------------------------------------------------

  private async handle(ws: WebSocket, message: string | ArrayBuffer): Promise<void> {
    const st = state(ws);
    if (st.phase === "closed") return;
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
    if (frame.type === "ping") return send(ws, PONG);
    if (frame.type === "hello") {
      if (st.phase !== "hello") throw new ProtocolError(E.ALREADY_HELLO, "This connection already said hello.");
      return this.hello(ws, st, frame.token, frame.lastSeq);
    }
    if (st.phase === "hello" || st.phase === "auth") {
      throw new ProtocolError(E.HELLO_REQUIRED, "Send hello with the session token first.");
    }
    if (frame.type === "user") return this.user(frame.clientMsgId, frame.text);
    if (frame.type === "ack") {
      if (st.phase === "handshake") this.replay(ws, st);
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
    send(ws, welcomeFrame(this.log.meta("session_id")!, resume, last));
    setState(ws, { ...st, phase: resume === "none" ? "live" : "handshake", after });
  }

  /** Send every event after hello.last_seq flagged replay, page by page, then go live; all
   * in one synchronous step, so nothing is missed or sent twice. */
  private replay(ws: WebSocket, st: SocketState): void {
    let after = st.after;
    for (let pages = 0; pages < Number.MAX_SAFE_INTEGER; pages++) {
      const rows = this.log.page(after, REPLAY_PAGE);
      for (const row of rows) send(ws, eventFrame(row, true));
      if (rows.length < REPLAY_PAGE) break;
      after = rows[rows.length - 1].seq;
    }
    setState(ws, { ...st, phase: "live" });
  }

  private user(clientMsgId: string, text: string): void {
    if (this.log.seen(clientMsgId)) return; // applied before: nothing happens
    this.publish(this.log.addTurn(clientMsgId, text));
    // Not awaited: the turn runs on after this message (and with no client at all).
    this.ctx.waitUntil(this.runTurns());
  }

  private async interrupt(ws: WebSocket): Promise<void> {
    const open = this.log.openTurn();
    const streaming = this.streaming;
    let interrupted = false;
    if (open !== null && streaming !== null && streaming.turnId === open.turn_id) {
      interrupted = await streaming.runtime.interrupt();
    }
    send(ws, interruptAckFrame(open?.turn_id ?? null, interrupted));
  }

  // -- turns ------------------------------------------------------------------------------

  /** Run open turns one at a time, oldest first, until none is left. */
  private async runTurns(): Promise<void> {
    if (this.turnsRunning) return;
    this.turnsRunning = true;
    try {
      for (let n = 0; n < 100_000; n++) {
        const turn = this.log.openTurn();
        if (turn === null) return;
        try {
          await this.runTurn(turn.turn_id, turn.text, turn.state === "interrupted");
        } catch (exc) {
          // The host itself failed on the turn (a bug, a storage error): end the turn so the
          // next one can run, as kit's host does (docs/protocol.md §4, turn_failed).
          console.error(`session ${this.log.meta("session_id")}: turn ${turn.turn_id} failed in the host`, exc);
          this.log.setTurnState(turn.turn_id, "failed");
          this.publish(
            this.log.append("error", { code: "turn_failed", message: "The host failed on this turn; send it again as a new message (a new client_msg_id) to retry." }, turn.turn_id),
          );
        }
      }
    } finally {
      this.turnsRunning = false;
    }
  }

  private async runTurn(turnId: string, text: string, recover: boolean): Promise<void> {
    this.log.setTurnState(turnId, "running", true);
    const runtime = await this.sandbox(turnId);
    if (runtime === null) return;
    this.streaming = { turnId, runtime };
    try {
      for await (const event of runtime.turn(turnId, text, recover)) {
        const row = this.log.append(event.kind, event.data, turnId);
        if (endsTurn(event.kind, event.data)) {
          this.log.setTurnState(turnId, event.kind === "result" ? "completed" : "failed");
          this.publish(row);
          return;
        }
        this.publish(row);
      }
      throw new RuntimeLost("The runtime's stream ended with no result and no turn_failed.");
    } catch (exc) {
      if (!(exc instanceof RuntimeLost)) throw exc;
      // TODO(recovery): a lost sandbox. The turn planner port (kit/protocol/turns.py) takes
      // over here: record `interrupted`, await the exit (monitor()), a `sandbox died` event
      // with the exit code (137 → oom/killed, 143 → signalled), the next attempt with
      // recover. Until then the turn fails with a clear message.
      this.log.setTurnState(turnId, "failed");
      this.publish(
        this.log.append("error", { code: "turn_failed", message: `The sandbox was lost (${exc.message}); send the message again as a new message (a new client_msg_id) to retry.` }, turnId),
      );
    } finally {
      this.streaming = null;
    }
  }

  /** A ready runtime for the turn: the running one, or a new container started with
   * `sandbox` starting/running events (docs/protocol.md §4). Null when none could start
   * (a `sandbox failed` event and the turn's `turn_failed` are logged). */
  private async sandbox(turnId: string): Promise<ContainerRuntime | null> {
    const tier = this.log.meta("tier") ?? "basic";
    const container = this.container();
    const token = this.log.meta("runtime_token");
    if (container !== null && container.running && token) return new ContainerRuntime(container, token);
    this.publish(this.log.append("sandbox", { state: "starting", tier }, turnId));
    try {
      if (container === null) {
        throw new RuntimeLost(
          "This Durable Object has no container: configure `containers` in wrangler.jsonc, or run under `kit dev --target cloudflare`.",
        );
      }
      const runtimeToken = "kit-runtime-" + randomToken();
      const sandboxId = "sbx-" + randomToken().slice(0, 12).toLowerCase();
      this.log.setMeta("runtime_token", runtimeToken);
      this.log.setMeta("sandbox_id", sandboxId);
      const runtime = new ContainerRuntime(container, runtimeToken);
      // TODO(config): the runtime's full config (kit/host/sandbox.py runtime_config) with the
      // model route's per-session token; today only what the runtime API needs.
      runtime.start(tier, { KIT_RUNTIME_TOKEN: runtimeToken, KIT_SESSION_ID: this.log.meta("session_id") ?? "" });
      container.monitor().then(
        () => this.sandboxExited(sandboxId, 0),
        (exc: unknown) => this.sandboxExited(sandboxId, exitCodeOf(exc)),
      );
      const ready = await runtime.ready();
      this.publish(this.log.append("sandbox", { state: "running", sandbox_id: sandboxId, tier, resumed: ready.resumed }, turnId));
      return runtime;
    } catch (exc) {
      const message = exc instanceof Error ? exc.message : String(exc);
      this.publish(this.log.append("sandbox", { state: "failed", tier, message }, turnId));
      // TODO(recovery): the planner retries a failed start (MAX_SANDBOX_ATTEMPTS).
      this.log.setTurnState(turnId, "failed");
      this.publish(
        this.log.append("error", { code: "turn_failed", message: `No sandbox could start: ${message}` }, turnId),
      );
      return null;
    }
  }

  /** The container of `sandboxId` exited (seen by `monitor()` while this instance lives).
   * TODO(recovery): record `sandbox died`/`stopped` with the reason (137 → oom or killed,
   * 143 → signalled, 70 → harness) and let the turn planner continue an open turn. Today it
   * only forgets the runtime, so the next turn starts a new container. */
  private sandboxExited(sandboxId: string, exitCode: number | null): void {
    console.log(`session ${this.log.meta("session_id")}: sandbox ${sandboxId} exited (${exitCode ?? "unknown"})`);
    if (this.log.meta("sandbox_id") === sandboxId) this.log.setMeta("runtime_token", "");
  }

  /** The container: workerd's own, or none. TODO(HttpContainer): under `wrangler dev
   * --enable-containers=false` (`ctx.container` undefined) the emulator's, from
   * KIT_CONTAINER_EMULATOR. */
  private container(): ContainerLike | null {
    return this.ctx.container ?? null;
  }

  /** Hand an event to every live socket; the output gate releases it after the commit. */
  private publish(row: EventRow): void {
    const frame = eventFrame(row, false);
    for (const ws of this.ctx.getWebSockets()) {
      if (state(ws).phase === "live") send(ws, frame);
    }
  }

  private fail(ws: WebSocket, exc: ProtocolError): void {
    send(ws, errorFrame(exc.code, exc.message));
    if (exc.closeCode === null) return;
    setState(ws, { ...state(ws), phase: "closed" });
    try {
      ws.close(exc.closeCode, exc.code);
    } catch {
      // already closed
    }
  }
}

// --- helpers ---------------------------------------------------------------------------------

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

/** The exit code in a `monitor()` rejection, if it names one. */
export function exitCodeOf(exc: unknown): number | null {
  const code = (exc as { exitCode?: unknown } | null)?.exitCode;
  if (typeof code === "number") return code;
  const found = /exit(?:ed with)? code:? ?(\d+)/i.exec(String(exc));
  return found === null ? null : Number(found[1]);
}

export function randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

export async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Constant-time equality of two strings (their lengths are not secret). */
export async function sameText(a: string, b: string): Promise<boolean> {
  const [x, y] = [new TextEncoder().encode(a), new TextEncoder().encode(b)];
  return x.length === y.length && crypto.subtle.timingSafeEqual(x, y);
}
