// The turn runner of a SessionDO: runs open turns one at a time, oldest first, as the
// TurnPlanner (turns.ts, the port of kit/protocol/turns.py) plans them, and watches the
// container they run in. It only does the I/O, as kit/host/session.py `_run_turn`/`_act`/
// `_stream` do.
//
// Attempts are counted in the turn table before each sandbox starts, so a DO instance that
// is evicted mid-turn leaves the turn `running` (or `interrupted`) with its attempts: the
// next instance resumes it with a planner made from that row. The next instance is woken by
// the turn watch alarm (set while a turn is open) or by the next client message, whichever
// comes first (`resume`).

import type { EventRow } from "./frames";
import type { OpenTurn, SessionLog } from "./log";
import { ContainerRuntime, READY_TIMEOUT_MS, RuntimeLost, type ContainerLike } from "./runtime";
import { randomToken, sha256 } from "./tokens";
import { HARNESS_EXIT_CODE, STOPPED_REASONS, TURN_FAILED, TurnPlanner, type TurnAction } from "./turns";

/** How long a sandbox whose stream broke may take to exit before it is destroyed
 * (kit/host/session.py EXIT_WAIT_S). */
export const EXIT_WAIT_MS = 10_000;

/** What the runner needs of its SessionDO. */
export interface RunnerHost {
  readonly log: SessionLog;
  /** The DO's container, if it has one. */
  container(): ContainerLike | null;
  /** Hand a committed event to the live sockets. */
  publish(row: EventRow): void;
  /** Keep the instance alive until `promise` settles. */
  waitUntil(promise: Promise<unknown>): void;
  /** The runtime's start-up config for a new sandbox with these tokens. */
  runtimeConfig(runtimeToken: string, modelToken: string): Promise<Record<string, unknown>>;
  /** `turnId` runs now (the model route's spend meter starts its turn count). */
  beginTurn?(turnId: string): void;
  /** The sandbox's model and store tokens stop working (it exited, or never started). */
  revokeSandboxTokens(): void;
  /** Route the container's outbound HTTP(S) through the Worker (egress.ts), before it
   * starts and again when an instance adopts it. */
  intercept(container: ContainerLike): Promise<void>;
  /** Give the sandbox of `runtime` the session's files `pushed` (path → the SHA-256 this
   * sandbox was given) says it lacks (files.ts `push`); RuntimeLost when the sandbox cannot
   * be reached. */
  pushFiles(runtime: ContainerRuntime, pushed: Map<string, string>): Promise<unknown>;
}

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
  /** A turn's stream on it ended without the turn's end: its runtime may still run that turn
   * (kit's runtime carries a turn on when its client goes), so it takes no other. It is
   * done with: waited for or destroyed, never streamed from again. */
  broken: boolean;
  /** Settles once the exit was seen. */
  exited: Promise<void>;
  /** The session files this sandbox was given, path → SHA-256 (files.ts `push`): a new
   * container starts with none, so it gets every file before its first turn. */
  pushed: Map<string, string>;
}

export class TurnRunner {
  /** EXIT_WAIT_MS; tests shorten it. */
  exitWaitMs = EXIT_WAIT_MS;
  /** How long a started runtime has to get ready (READY_TIMEOUT_MS); tests shorten it. */
  readyTimeoutMs = READY_TIMEOUT_MS;
  /** The last run of the runner (tests await it). */
  turnsRun: Promise<void> = Promise.resolve();
  private running = false;
  /** The runtime of the turn now streaming, if any (its exit is recorded after the stream). */
  private streaming: { turnId: string; runtime: ContainerRuntime } | null = null;
  /** The sandbox this instance started or adopted and watches, while it runs. */
  private live: Live | null = null;
  /** The turn this instance runs now (a sandbox's exit event belongs to it). */
  private runningTurn: string | null = null;

  constructor(private readonly host: RunnerHost) {}

  private get log(): SessionLog {
    return this.host.log;
  }

  /** Resume open turns if this instance is not running them (a woken DO). */
  resume(): void {
    if (this.running || this.log.openTurn() === null) return;
    this.start();
  }

  /** Run open turns on after the current event (and with no client at all). */
  start(): void {
    this.turnsRun = this.runTurns();
    this.host.waitUntil(this.turnsRun);
  }

  /** Pass an interrupt to the sandbox running this instance's turn; whether there was one
   * to pass it to (kit/host/session.py `Session.interrupt`: a turn runs and a sandbox is up).
   * What the runtime answers, or whether it answers at all, does not change that: the
   * turn's own end says how it ended (docs/protocol.md §6). */
  async interrupt(): Promise<boolean> {
    const live = this.live;
    if (this.runningTurn === null || live === null) return false;
    await live.runtime.interrupt();
    return true;
  }

  // -- for kit's control routes (sessioncontrol.ts) ---------------------------------------

  /** Whether this instance runs turns now. */
  get busy(): boolean {
    return this.running;
  }

  /** The sandbox this instance watches, until its exit is seen. */
  watched(): { sandboxId: string; container: ContainerLike } | null {
    const live = this.live;
    return live === null || live.exit !== null ? null : { sandboxId: live.sandboxId, container: live.container };
  }

  /** The sandbox this instance watches or, when no turn is open, a running container an
   * earlier instance started, watched from now on (as the next turn would adopt it), so
   * that a kill's exit is logged; null if none runs. */
  async adoptIdle(): Promise<{ sandboxId: string; container: ContainerLike } | null> {
    const idle = (): boolean => this.live === null && !this.running && this.log.openTurn() === null;
    if (!idle()) return this.watched();
    const container = this.host.container();
    await refreshQuietly(container);
    const token = this.log.meta("runtime_token");
    if (idle() && container !== null && container.running && token) {
      this.live = this.watch(container, this.log.meta("sandbox_id") ?? "sbx-unknown", new ContainerRuntime(container, token), true);
    }
    return this.watched();
  }

  /** Run open turns one at a time, oldest first, until none is left. */
  private async runTurns(): Promise<void> {
    if (this.running) return;
    this.running = true;
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
          const why = (exc instanceof Error ? exc.message : String(exc)).replace(/\.$/, "");
          try {
            await this.retireBroken(turn.turn_id);
            const failed = { code: TURN_FAILED, message: `The host failed on this turn: ${why}.` };
            this.host.publish(this.log.endTurn("error", failed, turn.turn_id, "failed"));
          } catch (storage) {
            // The storage fails too (this instance is being reset): the next instance
            // resumes the turn from the log.
            console.error(`turn ${turn.turn_id}: the event log fails; the runner stops`, storage);
            return;
          }
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** Run `turn` as the planner plans it, from its row in the turn table. */
  private async runTurn(turn: OpenTurn): Promise<void> {
    this.runningTurn = turn.turn_id;
    try {
      this.host.beginTurn?.(turn.turn_id);
      // A turn this instance did not start (it is not queued) ran in an instance that is
      // gone; the container may still run its old stream: stop it, the next one recovers.
      if (turn.state !== "queued") await this.stopStale();
      const planner = new TurnPlanner(turn.state, turn.attempts);
      let actions = planner.begin();
      let live: Live | null = null;
      for (let steps = 0; steps < 1_000; steps++) {
        const last = actions[actions.length - 1];
        await this.actAll(turn.turn_id, actions.slice(0, -1), live);
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
          await this.actAll(turn.turn_id, end.slice(0, -1), live); // nothing: endTurn did it
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

  /** After the host failed on `turnId`: stop the sandbox whose stream the failure cut (its
   * runtime would still run the turn and refuse the next one), recording its exit under
   * the turn (`sandbox` `stopped`, reason `stopped`) before the turn's end. */
  private async retireBroken(turnId: string): Promise<void> {
    const live = this.live;
    if (live === null || !live.broken) return;
    this.runningTurn = turnId;
    try {
      live.killReason = "stopped";
      await destroyQuietly(live.container);
      if (!(await settlesWithin(live.exited, this.exitWaitMs))) this.sawExit(live, null, false);
      this.recordExit(live);
    } finally {
      this.runningTurn = null;
    }
  }

  /** Do the planner's actions in order; a give_up and the record of the turn's end after
   * it are one transaction (`log.endTurn`). */
  private async actAll(turnId: string, actions: TurnAction[], live: Live | null): Promise<void> {
    for (let i = 0; i < actions.length; i++) {
      const action = actions[i];
      const after = actions[i + 1];
      if (action.action === "give_up" && after?.action === "record" && !after.attempt) {
        this.host.publish(this.log.endTurn("error", action.error, turnId, after.state));
        i++;
        continue;
      }
      await this.act(turnId, action, live);
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
        return this.host.publish(this.log.append("error", action.error, turnId));
      default:
        throw new Error(`The turn runner cannot do ${action.action} here.`);
    }
  }

  /** Run the turn on `live`'s runtime; the planner's answer to the turn's end (Done: its
   * end event and state are stored together), or null if the stream broke first (the
   * sandbox went away). */
  private async stream(live: Live, turn: OpenTurn, planner: TurnPlanner, recover: boolean): Promise<TurnAction[] | null> {
    this.streaming = { turnId: turn.turn_id, runtime: live.runtime };
    let ended = false;
    try {
      // The session's files first (a new turn, or a recovered one in a new container): a
      // sandbox that cannot take them is lost like one whose stream breaks.
      await this.host.pushFiles(live.runtime, live.pushed);
      for await (const event of live.runtime.turn(turn.turn_id, turn.text, recover)) {
        const [emit, ...rest] = planner.batch([[event.kind, event.data]]);
        if (emit.action !== "emit") throw new Error(`The turn planner answered a batch with ${emit.action}.`);
        const end = rest[0];
        if (emit.count > 0 && end?.action === "record" && !end.attempt) {
          // The turn's end and its state in one transaction (as kit's host: end_turn).
          this.host.publish(this.log.endTurn(event.kind, event.data, turn.turn_id, end.state));
          ended = true;
          return rest.slice(1);
        }
        if (emit.count > 0) this.host.publish(this.log.append(event.kind, event.data, turn.turn_id));
        if (rest.length > 0) {
          ended = true;
          return rest;
        }
      }
      console.log(`session ${this.log.meta("session_id")}: turn ${turn.turn_id}: the runtime's stream ended with no result and no turn_failed`);
    } catch (exc) {
      if (!(exc instanceof RuntimeLost)) throw exc;
      console.log(`session ${this.log.meta("session_id")}: turn ${turn.turn_id} lost its sandbox: ${exc.message}`);
    } finally {
      this.streaming = null;
      if (!ended) live.broken = true; // broken, or left by a host failure: never streamed again
      this.recordExit(live); // it exited as the stream ended: log it after the stream's events
    }
    return null;
  }

  /** A running sandbox for the turn: the one this instance watches (unless a stream on it
   * broke), a running container an earlier instance started (between turns), or a new
   * container started with `sandbox` starting/running events (docs/protocol.md §4). Null
   * when none could start (a `sandbox failed` event is logged; the planner decides what
   * follows). */
  private async startSandbox(turnId: string): Promise<Live | null> {
    const tier = this.log.meta("tier") ?? "basic";
    const container = this.host.container();
    if (this.live?.broken === true) await this.sandboxGone(this.live); // done with: gone first
    if (this.live === null) await refreshQuietly(container);
    const live = this.live;
    if (live !== null && live.exit === null && live.container === container && container.running) return live;
    const token = this.log.meta("runtime_token");
    if (live === null && container !== null && container.running && token) {
      // Started by an instance that is gone, with no turn in it: watch it from here, its
      // outbound calls bound to this instance (one that cannot be is replaced below).
      try {
        await this.host.intercept(container);
        const adopted = this.watch(container, this.log.meta("sandbox_id") ?? "sbx-unknown", new ContainerRuntime(container, token), true);
        this.live = adopted;
        return adopted;
      } catch (exc) {
        console.error(`session ${this.log.meta("session_id")}: the running container cannot be adopted`, exc);
        await destroyQuietly(container);
      }
    }
    this.host.publish(this.log.append("sandbox", { state: "starting", tier }, turnId));
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
      const sessionId = this.log.meta("session_id") ?? "";
      // The whole config in one variable: the runtime moves it to a private file and starts
      // itself again without it (kit/runtime/config.py), so no tool sees the tokens.
      await this.host.intercept(container);
      runtime.start(tier, { [CONFIG_JSON_ENV]: JSON.stringify(await this.host.runtimeConfig(runtimeToken, modelToken)) });
      started = this.watch(container, sandboxId, runtime, false);
      const ready = await runtime.ready(sessionId, this.readyTimeoutMs);
      if (started.exit !== null) throw new RuntimeLost("The container exited as its runtime became ready.");
      started.adopted = true;
      this.live = started;
      this.host.publish(this.log.append("sandbox", { state: "running", sandbox_id: sandboxId, tier, resumed: ready.resumed }, turnId));
      return started;
    } catch (exc) {
      const message = exc instanceof Error ? exc.message : String(exc);
      this.host.publish(this.log.append("sandbox", { state: "failed", tier, message }, turnId));
      if (started !== null && started.exit === null) await destroyQuietly(started.container);
      this.host.revokeSandboxTokens();
      return null;
    }
  }

  /** Watch `container` with monitor() while this instance lives; its exit is recorded by
   * `recordExit` (a `sandbox` event once the sandbox was announced running). */
  private watch(container: ContainerLike, sandboxId: string, runtime: ContainerRuntime, adopted: boolean): Live {
    const live: Live = { sandboxId, container, runtime, adopted, killReason: null, exit: null, recorded: false, broken: false, exited: Promise.resolve(), pushed: new Map() };
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
    if (this.log.meta("sandbox_id") === live.sandboxId) {
      // Its tokens die with it (kit/host/launch.py revokes them so): a token a tool read
      // spends nothing and reads no transcript once the sandbox is gone.
      this.log.setMeta("runtime_token", "");
      this.host.revokeSandboxTokens();
    }
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
    this.host.publish(this.log.append("sandbox", { state, sandbox_id: live.sandboxId, reason, exit_code: live.exit.code }, this.runningTurn));
  }

  /** After a broken stream: make sure the sandbox is dead and its exit recorded, so the next
   * start is a fresh one; one that does not exit within EXIT_WAIT_MS is destroyed (reason
   * `unresponsive`), and one that outlives even that is forgotten (its exit unknown). */
  private async sandboxGone(live: Live | null): Promise<void> {
    if (live === null) return;
    live.broken = true;
    if (!(await settlesWithin(live.exited, this.exitWaitMs))) {
      live.killReason = "unresponsive";
      await destroyQuietly(live.container);
      if (!(await settlesWithin(live.exited, this.exitWaitMs))) this.sawExit(live, null, false);
    }
    this.recordExit(live);
  }

  /** Stop a running container no instance of ours watches (its instance was evicted
   * mid-turn) before the turn is recovered, without a `sandbox` event: as kit's host
   * stops its sandboxes when it restarts (docs/protocol.md §4, "The host restarts"), so
   * every target shows the same events. */
  private async stopStale(): Promise<void> {
    const container = this.host.container();
    if (this.live === null) await refreshQuietly(container);
    if (this.live !== null || container === null || !container.running) return;
    const stale = this.watch(container, this.log.meta("sandbox_id") ?? "sbx-unknown", new ContainerRuntime(container, ""), false);
    stale.killReason = "stopped";
    await destroyQuietly(container);
    if (!(await settlesWithin(stale.exited, this.exitWaitMs))) this.sawExit(stale, null, false);
    this.recordExit(stale);
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

/** The exit code in a `monitor()` rejection, if it names one. */
export function exitCodeOf(exc: unknown): number | null {
  const code = (exc as { exitCode?: unknown } | null)?.exitCode;
  if (typeof code === "number") return code;
  const found = /exit(?:ed with)? code:? ?(\d+)/i.exec(String(exc));
  return found === null ? null : Number(found[1]);
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

/** The runtime reads its config from this variable (kit/runtime/config.py). */
const CONFIG_JSON_ENV = "KIT_RUNTIME_CONFIG_JSON";

/** Learn whether the container runs where the platform does not track it (HttpContainer). */
async function refreshQuietly(container: ContainerLike | null): Promise<void> {
  try {
    await container?.refresh?.();
  } catch (exc) {
    console.log(`asking whether the container runs failed: ${String(exc)}`);
  }
}

async function destroyQuietly(container: ContainerLike): Promise<void> {
  try {
    await container.destroy();
  } catch (exc) {
    console.log(`destroying a container failed: ${String(exc)}`);
  }
}
