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
import { REPLAY_PAGE, SessionLog, type OpenTurn } from "./log";
import { HttpContainer } from "./httpcontainer";
import { ContainerRuntime, RuntimeLost, RUNTIME_PORT, type ContainerLike } from "./runtime";
import { HARNESS_EXIT_CODE, STOPPED_REASONS, TURN_FAILED, TurnPlanner, type TurnAction } from "./turns";

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

/** While a turn is open the alarm fires at least this often: it wakes an instance that
 * was evicted mid-turn (which then resumes the turn) and keeps a live one busy. */
export const TURN_WATCH_MS = 30_000;
/** How long a sandbox whose stream broke may take to exit before it is destroyed
 * (kit/host/session.py EXIT_WAIT_S). */
export const EXIT_WAIT_MS = 10_000;

/** A sandbox this instance watches with monitor(). */
interface Live {
  sandboxId: string;
  container: ContainerLike;
  runtime: ContainerRuntime;
  /** Announced with `sandbox` `running` (its exit is then logged too). */
  adopted: boolean;
  /** Why the host ended it, when it did (`unresponsive`, `stopped`): the exit's reason. */
  killReason: string | null;
  /** Its exit was seen (its code, and whether it was an OOM kill). */
  exit: { code: number | null; oom: boolean } | null;
  /** Its exit event is in the log (or it needs none: never announced running). */
  recorded: boolean;
  /** Settles once the exit was seen. */
  exited: Promise<void>;
}

export class SessionDO extends DurableObject<Env> {
  private readonly log: SessionLog;
  /** Per-socket chains of message handling (in memory; lost with the instance, which is
   * fine: nothing is pending once an instance is gone). */
  private readonly chains = new Map<WebSocket, Promise<void>>();
  private turnsRunning = false;
  /** The runtime of the turn now streaming, if any (for interrupts). */
  private streaming: { turnId: string; runtime: ContainerRuntime } | null = null;
  /** The sandbox this instance started or adopted and watches, while it runs. */
  private live: Live | null = null;
  /** The turn this instance runs now (a sandbox's exit event belongs to it). */
  private runningTurn: string | null = null;
  /** The last run of the turn runner (tests await it on an instance). */
  private turnsRun: Promise<void> = Promise.resolve();
  /** EXIT_WAIT_MS; tests shorten it on an instance. */
  private exitWaitMs = EXIT_WAIT_MS;
  /** The emulator's container, when this DO has no `ctx.container` (wrangler dev). */
  private emulated: HttpContainer | null = null;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.log = new SessionLog(ctx.storage.sql);
    // A turn still open in the log is resumed by the alarm or the next client message
    // (resumeTurns), not from here: the constructor runs before ctx is fully usable.
  }

  /** Create the session (called once by the Worker at POST /v1/sessions). */
  async init(sessionId: string, tokenSha256: string, tier: string): Promise<void> {
    this.log.create({ session_id: sessionId, token_sha256: tokenSha256, tier });
  }

  /** The WebSocket upgrade of `/v1/sessions/{id}/ws`, or a model call of the session's
   * sandbox (`/v1/sessions/{id}/model/...`), forwarded by the Worker. */
  async fetch(request: Request): Promise<Response> {
    const model = MODEL_PATH.exec(new URL(request.url).pathname);
    if (model !== null) return this.model(request, model[1]);
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
      this.resumeTurns();
      next = now + TURN_WATCH_MS;
    }
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
    this.resumeTurns();
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
    if (frame.type === "user") return await this.user(frame.clientMsgId, frame.text);
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

  private async user(clientMsgId: string, text: string): Promise<void> {
    if (this.log.seen(clientMsgId)) return; // applied before: nothing happens
    this.publish(this.log.addTurn(clientMsgId, text));
    await this.armTurnWatch();
    // Not awaited: the turn runs on after this message (and with no client at all).
    this.startTurns();
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
  //
  // A turn runs as the TurnPlanner (turns.ts, the port of kit/protocol/turns.py) plans it;
  // these methods only do the I/O, as kit/host/session.py `_run_turn`/`_act`/`_stream` do.
  // Attempts are counted in the turn table before each sandbox starts, so a DO instance
  // that is evicted mid-turn leaves the turn `running` (or `interrupted`) with its attempts:
  // the next instance resumes it with a planner made from that row. The next instance is
  // woken by the turn watch alarm (set while a turn is open, every TURN_WATCH_MS) or by the
  // next client message, whichever comes first (`resumeTurns`).

  /** Resume open turns if this instance is not running them (a woken DO). */
  private resumeTurns(): void {
    if (this.turnsRunning || this.log.openTurn() === null) return;
    this.startTurns();
  }

  /** Run open turns on after the current event (and with no client at all). */
  private startTurns(): void {
    this.turnsRun = this.runTurns();
    this.ctx.waitUntil(this.turnsRun);
  }

  /** Make sure the alarm fires within TURN_WATCH_MS while a turn is open. */
  private async armTurnWatch(): Promise<void> {
    const due = Date.now() + TURN_WATCH_MS;
    const alarm = await this.ctx.storage.getAlarm();
    if (alarm === null || alarm > due) await this.ctx.storage.setAlarm(due);
  }

  /** Run open turns one at a time, oldest first, until none is left. */
  private async runTurns(): Promise<void> {
    if (this.turnsRunning) return;
    this.turnsRunning = true;
    try {
      for (let n = 0; n < 100_000; n++) {
        const turn = this.log.openTurn();
        if (turn === null) return;
        try {
          await this.runTurn(turn);
        } catch (exc) {
          // The host itself failed on the turn (a bug, a storage error): end the turn so the
          // next one can run, as kit's host does (docs/protocol.md §4, turn_failed).
          console.error(`turn ${turn.turn_id} failed in the host`, exc);
          try {
            this.log.setTurnState(turn.turn_id, "failed");
            this.publish(
              this.log.append("error", { code: TURN_FAILED, message: "The host failed on this turn; send it again as a new message (a new client_msg_id) to retry." }, turn.turn_id),
            );
          } catch (storage) {
            // The storage fails too (this instance is being reset): the next instance
            // resumes the turn from the log.
            console.error(`turn ${turn.turn_id}: the event log fails; the runner stops`, storage);
            return;
          }
        }
      }
    } finally {
      this.turnsRunning = false;
    }
  }

  /** Run `turn` as the planner plans it, from its row in the turn table. */
  private async runTurn(turn: OpenTurn): Promise<void> {
    this.runningTurn = turn.turn_id;
    try {
      // A turn this instance did not start (it is not queued) ran in an instance that is
      // gone; the container may still run its old stream: stop it, the next one recovers.
      if (turn.state !== "queued") await this.stopStale();
      const planner = new TurnPlanner(turn.state, turn.attempts);
      let actions = planner.begin();
      let live: Live | null = null;
      for (let steps = 0; steps < 1_000; steps++) {
        const last = actions[actions.length - 1];
        for (const action of actions.slice(0, -1)) await this.act(turn.turn_id, action, live);
        if (last.action === "start_sandbox") {
          live = await this.startSandbox(turn.turn_id);
          actions = live === null ? planner.sandboxFailed() : planner.sandboxStarted();
        } else if (last.action === "stream") {
          if (live === null) throw new Error("The turn planner asked to stream with no sandbox.");
          const end = await this.stream(live, turn, planner, last.recover);
          if (end === null) {
            actions = planner.streamBroken(); // the sandbox went away: the next one continues
            continue;
          }
          for (const action of end.slice(0, -1)) await this.act(turn.turn_id, action, live);
          return;
        } else if (last.action === "done") {
          return;
        } else {
          throw new Error(`The turn planner ended an answer with ${last.action}.`);
        }
      }
      throw new Error("The turn took 1 000 planner steps; the planner must have looped.");
    } finally {
      this.runningTurn = null;
    }
  }

  /** Do one of the planner's actions that needs no answer. */
  private async act(turnId: string, action: TurnAction, live: Live | null): Promise<void> {
    switch (action.action) {
      case "record":
        return this.log.setTurnState(turnId, action.state, action.attempt);
      case "wait":
        // At most 2 s; if the instance is evicted meanwhile, the log says `interrupted`
        // and the next instance backs off again as the planner says.
        return scheduler.wait(action.seconds * 1000);
      case "await_sandbox_exit":
        return this.sandboxGone(live);
      case "give_up":
        return this.publish(this.log.append("error", action.error, turnId));
      default:
        throw new Error(`The turn runner cannot do ${action.action} here.`);
    }
  }

  /** Run the turn on `live`'s runtime; the planner's answer to the turn's end (Record,
   * Done), or null if the stream broke first (the sandbox went away). */
  private async stream(live: Live, turn: OpenTurn, planner: TurnPlanner, recover: boolean): Promise<TurnAction[] | null> {
    this.streaming = { turnId: turn.turn_id, runtime: live.runtime };
    try {
      for await (const event of live.runtime.turn(turn.turn_id, turn.text, recover)) {
        const [emit, ...rest] = planner.batch([[event.kind, event.data]]);
        if (emit.action !== "emit") throw new Error(`The turn planner answered a batch with ${emit.action}.`);
        if (emit.count > 0) this.publish(this.log.append(event.kind, event.data, turn.turn_id));
        if (rest.length > 0) return rest;
      }
      console.log(`session ${this.log.meta("session_id")}: turn ${turn.turn_id}: the runtime's stream ended with no result and no turn_failed`);
    } catch (exc) {
      if (!(exc instanceof RuntimeLost)) throw exc;
      console.log(`session ${this.log.meta("session_id")}: turn ${turn.turn_id} lost its sandbox: ${exc.message}`);
    } finally {
      this.streaming = null;
      this.recordExit(live); // it exited as the stream ended: log it after the stream's events
    }
    return null;
  }

  /** A running sandbox for the turn: the one this instance watches, a running container
   * an earlier instance started (between turns), or a new container started with
   * `sandbox` starting/running events (docs/protocol.md §4). Null when none could start
   * (a `sandbox failed` event is logged; the planner decides what follows). */
  private async startSandbox(turnId: string): Promise<Live | null> {
    const tier = this.log.meta("tier") ?? "basic";
    const container = this.container();
    if (this.live === null) await refreshQuietly(container);
    const live = this.live;
    if (live !== null && !live.exit !== null && live.container === container && container.running) return live;
    const token = this.log.meta("runtime_token");
    if (live === null && container !== null && container.running && token) {
      // Started by an instance that is gone, with no turn in it: watch it from here.
      const adopted = this.watch(container, this.log.meta("sandbox_id") ?? "sbx-unknown", new ContainerRuntime(container, token), true);
      this.live = adopted;
      return adopted;
    }
    this.publish(this.log.append("sandbox", { state: "starting", tier }, turnId));
    let started: Live | null = null;
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
      const modelToken = "kit-model-" + randomToken();
      this.log.setMeta("model_token_sha256", await sha256(modelToken));
      const runtime = new ContainerRuntime(container, runtimeToken);
      const config = this.runtimeConfig(runtimeToken, modelToken);
      runtime.start(tier, { [CONFIG_JSON_ENV]: JSON.stringify(config) });
      started = this.watch(container, sandboxId, runtime, false);
      const ready = await runtime.ready();
      if (started.exit !== null) throw new RuntimeLost("The container exited as its runtime became ready.");
      started.adopted = true;
      this.live = started;
      this.publish(this.log.append("sandbox", { state: "running", sandbox_id: sandboxId, tier, resumed: ready.resumed }, turnId));
      return started;
    } catch (exc) {
      const message = exc instanceof Error ? exc.message : String(exc);
      this.publish(this.log.append("sandbox", { state: "failed", tier, message }, turnId));
      if (started !== null && !started.exit !== null) await destroyQuietly(started.container);
      return null;
    }
  }

  /** Watch `container` with monitor() while this instance lives; its exit is recorded by
   * `recordExit` (a `sandbox` event once the sandbox was announced running). */
  private watch(container: ContainerLike, sandboxId: string, runtime: ContainerRuntime, adopted: boolean): Live {
    const live: Live = { sandboxId, container, runtime, adopted, killReason: null, exit: null, recorded: false, exited: Promise.resolve() };
    live.exited = container
      .monitor()
      .then(
        () => this.sawExit(live, 0, false),
        (exc: unknown) => this.sawExit(live, exitCodeOf(exc), oomOf(exc)),
      )
      .catch((exc: unknown) => console.error(`sandbox ${sandboxId}: recording its exit failed`, exc));
    return live;
  }

  /** A watched sandbox exited: forget it; record the exit now unless a turn is streaming
   * from it (then the turn records it after the events it read: AwaitSandboxExit, or the
   * end of the stream), so the log says what the sandbox said before it died. */
  private sawExit(live: Live, code: number | null, oom: boolean): void {
    if (live.exit !== null) return;
    live.exit = { code, oom };
    if (this.live === live) this.live = null;
    if (this.log.meta("sandbox_id") === live.sandboxId) this.log.setMeta("runtime_token", "");
    if (this.streaming?.runtime !== live.runtime) this.recordExit(live);
  }

  /** Log a seen exit once: `sandbox` `died` or `stopped` with its reason and exit code
   * (kit/host/session.py `_watch`), under the turn running now, if any; nothing for a
   * sandbox never announced running (its start's `failed` event says it). */
  private recordExit(live: Live): void {
    if (live.exit === null || live.recorded) return;
    live.recorded = true;
    if (!live.adopted) return;
    const reason = live.killReason ?? reasonOf(live.exit.code, live.exit.oom);
    const state = STOPPED_REASONS.has(reason) ? "stopped" : "died";
    this.publish(this.log.append("sandbox", { state, sandbox_id: live.sandboxId, reason, exit_code: live.exit.code }, this.runningTurn));
  }

  /** After a broken stream: make sure the sandbox is dead and its exit recorded; one that
   * does not exit within EXIT_WAIT_MS is destroyed (reason `unresponsive`). */
  private async sandboxGone(live: Live | null): Promise<void> {
    if (live === null) return;
    if (!(await settlesWithin(live.exited, this.exitWaitMs))) {
      live.killReason = "unresponsive";
      await destroyQuietly(live.container);
      if (!(await settlesWithin(live.exited, this.exitWaitMs))) this.sawExit(live, null, false);
    }
    this.recordExit(live);
  }

  /** Stop a running container no instance of ours watches (its instance was evicted
   * mid-turn): `sandbox` `stopped` with reason `stopped`, before the turn is recovered. */
  private async stopStale(): Promise<void> {
    const container = this.container();
    if (this.live === null) await refreshQuietly(container);
    if (this.live !== null || container === null || !container.running) return;
    const stale = this.watch(container, this.log.meta("sandbox_id") ?? "sbx-unknown", new ContainerRuntime(container, ""), true);
    stale.killReason = "stopped";
    await destroyQuietly(container);
    if (!(await settlesWithin(stale.exited, this.exitWaitMs))) this.sawExit(stale, null, false);
    this.recordExit(stale);
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
    });
    return this.emulated;
  }

  /** The runtime's start-up config (kit/protocol/runtime_config.py RuntimeConfig, as
   * kit/host/sandbox.py runtime_config makes it), passed in the container's environment:
   * the paths of kit's runtime image, the model route of this session on the Worker. */
  private runtimeConfig(runtimeToken: string, modelToken: string): Record<string, unknown> {
    const sessionId = this.log.meta("session_id") ?? "";
    const worker = (this.env.KIT_WORKER_URL || "http://kit.internal").replace(/\/$/, "");
    return {
      session_id: sessionId,
      bundle_dir: this.env.KIT_BUNDLE_DIR || "/opt/kit/bundle",
      workspace: "/workspace",
      home: "/home/kit",
      tmp_dir: "/tmp",
      store_url: "memory://",
      listen: `tcp:0.0.0.0:${RUNTIME_PORT}`,
      model_base_url: `${worker}/v1/sessions/${sessionId}/model`,
      model_unix_socket: null,
      model_token: modelToken,
      runtime_token: runtimeToken,
      bundle_digest: this.env.KIT_BUNDLE_DIGEST || null,
    };
  }

  /** A model call of this session's sandbox: its model token (`x-api-key` or Bearer, as
   * the CLI sends it) checked against the one minted at the sandbox's start, then the call
   * forwarded to KIT_MODEL_UPSTREAM with the real key, which no sandbox ever sees. */
  private async model(request: Request, rest: string): Promise<Response> {
    const sent = request.headers.get("x-api-key") ?? bearerOf(request.headers.get("authorization"));
    const want = this.log.meta("model_token_sha256");
    if (!sent || !want || !(await sameText(await sha256(sent), want))) {
      await drain(request);
      return modelError(401, "authentication_error", "kit's model route: unknown or expired session token.");
    }
    const key = this.env.ANTHROPIC_API_KEY;
    if (!key) {
      await drain(request);
      return modelError(503, "api_error", "kit's model route has no ANTHROPIC_API_KEY (a Worker secret).");
    }
    const headers = new Headers();
    for (const [name, value] of request.headers) {
      if (!MODEL_DROPPED.has(name.toLowerCase())) headers.set(name, value);
    }
    headers.set("x-api-key", key);
    const upstream = (this.env.KIT_MODEL_UPSTREAM || "https://api.anthropic.com").replace(/\/$/, "");
    const search = new URL(request.url).search;
    try {
      return await fetch(`${upstream}/${rest}${search}`, {
        method: request.method,
        headers,
        body: request.method === "GET" || request.method === "HEAD" ? null : request.body,
      });
    } catch (exc) {
      return modelError(502, "api_error", `kit's model route could not reach the model upstream: ${String(exc)}.`);
    }
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

/** `/v1/sessions/{id}/model/{rest}`: a sandbox's model call (the rest goes upstream). */
export const MODEL_PATH = /^\/v1\/sessions\/[^/]+\/model\/(.*)$/;
const MODEL_DRAIN_BYTES = 1 << 20;
/** The runtime reads its config from this variable (kit/runtime/config.py). */
const CONFIG_JSON_ENV = "KIT_RUNTIME_CONFIG_JSON";
/** Request headers a model call does not pass upstream: credentials, hop-by-hop. */
const MODEL_DROPPED = new Set(["x-api-key", "authorization", "host", "cookie", "connection", "content-length", "transfer-encoding", "cf-connecting-ip", "x-forwarded-for"]);

function bearerOf(header: string | null): string | null {
  if (header === null) return null;
  const space = header.indexOf(" ");
  return space > 0 && header.slice(0, space).toLowerCase() === "bearer" ? header.slice(space + 1).trim() : null;
}

/** An error as the Messages API shapes it, so the CLI reports it as such. */
function modelError(status: number, type: string, message: string): Response {
  return new Response(JSON.stringify({ type: "error", error: { type, message } }), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/** Read a refused request's body (up to MODEL_DRAIN_BYTES, then cancel): a body left
 * unread makes workerd report the forwarding Worker's stream as an uncaught error. */
async function drain(request: Request): Promise<void> {
  if (request.body === null) return;
  const reader = request.body.getReader();
  let read = 0;
  try {
    for (let i = 0; i < 100_000 && read < MODEL_DRAIN_BYTES; i++) {
      const { done, value } = await reader.read();
      if (done) return;
      read += value.byteLength;
    }
    await reader.cancel();
  } catch {
    // the sender went away
  }
}

async function refreshQuietly(container: ContainerLike | null): Promise<void> {
  try {
    await container?.refresh?.();
  } catch (exc) {
    console.log(`asking whether the container runs failed: ${String(exc)}`);
  }
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

/** Whether a `monitor()` rejection says the container was killed for memory. */
export function oomOf(exc: unknown): boolean {
  return (exc as { oom?: unknown } | null)?.oom === true || /\b(oom|out of memory)\b/i.test(String(exc));
}

/** The reason of an exit (kit/host/sandbox.py `reason_of`, with OOM as the provider tells):
 * 137 (SIGKILL) `oom` or `killed`, 143 (SIGTERM) `stopped`, 70 `harness`, 0 `exited`,
 * anything else (or no code) `crashed`. */
export function reasonOf(exitCode: number | null, oom: boolean): string {
  if (exitCode === 137) return oom ? "oom" : "killed";
  if (exitCode === 143) return "stopped";
  if (exitCode === HARNESS_EXIT_CODE) return "harness";
  if (exitCode === 0) return "exited";
  return "crashed";
}

/** Whether `promise` settles within `ms` (a timer, no busy wait). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const timeout = new AbortController();
  const expired = scheduler.wait(ms, { signal: timeout.signal }).then(() => false, () => false);
  const settled = promise.then(() => true, () => true);
  try {
    return await Promise.race([settled, expired]);
  } finally {
    timeout.abort();
  }
}

async function destroyQuietly(container: ContainerLike): Promise<void> {
  try {
    await container.destroy();
  } catch (exc) {
    console.log(`destroying a container failed: ${String(exc)}`);
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
