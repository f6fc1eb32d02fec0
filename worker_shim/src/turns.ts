// The turn planner, sans I/O: a faithful port of kit/protocol/turns.py. It decides how a
// turn runs through sandbox deaths and restarts; SessionDO (session.ts) only does the I/O.
// kit's Python host makes the same decisions: both replay kit/protocol/golden/turns/*.jsonl
// (test/planner.test.ts here, tests/protocol/test_turns.py there).
//
//   planner state   new --begin--> starting --sandboxStarted--> streaming
//                   starting --sandboxFailed--> starting (next attempt) | done (given up)
//                   streaming --batch without the end--> streaming
//                   streaming --batch with the end--> done
//                   streaming --streamBroken--> starting (next attempt) | done (given up)
//                   a call in any other state throws InvalidStateError naming the state
//
// The last action of every answer is the one the host then waits on: StartSandbox (answer
// with sandboxStarted or sandboxFailed), Stream (answer with batch per batch of runtime
// events, then streamBroken if the stream ends without the turn's end) or Done; an Emit
// that ends an answer means "keep reading the stream". The actions before it need no
// answer: Record, Wait, AwaitSandboxExit, GiveUp.

import type { TurnState } from "./log";

/** An event's data. */
type Data = { [key: string]: unknown };

/** Sandboxes one turn may use before the host gives up on it. */
export const MAX_SANDBOX_ATTEMPTS = 5;
/** Wait before attempt N of a turn: a first death is retried at once, repeated ones back off. */
export const RESTART_BACKOFF_S: readonly number[] = [0.0, 0.0, 0.5, 1.0, 2.0];
/** Exit reasons reported as `stopped` (on purpose) rather than `died`. */
export const STOPPED_REASONS: ReadonlySet<string> = new Set(["stopped", "idle", "exited", "reload"]);
/** The runtime's exit code when the agent harness (the CLI) died under it
 * (kit/protocol/runtime_api.py HARNESS_EXIT_CODE). */
export const HARNESS_EXIT_CODE = 70;
/** The `code` of the `error` event that ends a turn without a result. */
export const TURN_FAILED = "turn_failed";
/** States of a turn that still has to run (or be recovered). */
export const OPEN_TURN_STATES: readonly TurnState[] = ["queued", "running", "interrupted"];

/** A planner call out of order, or a finished turn given to a planner (kit's
 * kit.protocol.errors.InvalidStateError). */
export class InvalidStateError extends Error {
  override name = "InvalidStateError";
}

/** Whether an event of `kind` with `data` ends its turn: a `result`, or an `error`
 * `turn_failed`. Nothing of the turn follows it. */
export function endsTurn(kind: string, data: Readonly<Data>): boolean {
  return kind === "result" || (kind === "error" && data.code === TURN_FAILED);
}

/** How long to wait (seconds) before attempt `attempt` (0-based) of a turn. */
export function backoffS(attempt: number): number {
  return RESTART_BACKOFF_S[Math.min(attempt, RESTART_BACKOFF_S.length - 1)];
}

/** The `error` event's data for a turn given up after its sandboxes kept failing. */
export function givenUpError(): { code: string; message: string } {
  return {
    code: TURN_FAILED,
    message:
      `The turn was given up after ${MAX_SANDBOX_ATTEMPTS} sandboxes failed; ` +
      "send it again as a new message (a new client_msg_id) to retry.",
  };
}

// -- actions (their JSON is the golden cases' form) ---------------------------------------

/** Write the turn's state to the log; `attempt` counts one more sandbox attempt. */
export interface RecordAction {
  action: "record";
  state: TurnState;
  attempt: boolean;
}
/** Back off this long before the next attempt. */
export interface Wait {
  action: "wait";
  seconds: number;
}
/** Get a running sandbox for the turn; answer with sandboxStarted or sandboxFailed. */
export interface StartSandbox {
  action: "start_sandbox";
}
/** Hand the turn to the sandbox's runtime and read its events; `recover`: the turn ran
 * before, the runtime continues it from the stored transcript. */
export interface Stream {
  action: "stream";
  recover: boolean;
}
/** Append the first `count` events of the batch (the rest are not the turn's); as the
 * last action of an answer: keep reading the stream. */
export interface Emit {
  action: "emit";
  count: number;
}
/** The stream broke: make sure its sandbox is dead (kill it if it does not exit) and its
 * exit recorded before the next one starts. */
export interface AwaitSandboxExit {
  action: "await_sandbox_exit";
}
/** Append an `error` event with `error` as its data: the turn is given up. */
export interface GiveUp {
  action: "give_up";
  error: { code: string; message: string };
}
/** The turn is over, in `state`. */
export interface Done {
  action: "done";
  state: TurnState;
}

/** One thing the host does for a turn (what TurnPlanner answers, in lists). */
export type TurnAction = RecordAction | Wait | StartSandbox | Stream | Emit | AwaitSandboxExit | GiveUp | Done;

export const Record = (state: TurnState, attempt = false): RecordAction => ({ action: "record", state, attempt });
export const Wait = (seconds: number): Wait => ({ action: "wait", seconds });
export const StartSandbox = (): StartSandbox => ({ action: "start_sandbox" });
export const Stream = (recover: boolean): Stream => ({ action: "stream", recover });
export const Emit = (count: number): Emit => ({ action: "emit", count });
export const AwaitSandboxExit = (): AwaitSandboxExit => ({ action: "await_sandbox_exit" });
export const GiveUp = (error: { code: string; message: string }): GiveUp => ({ action: "give_up", error });
export const Done = (state: TurnState): Done => ({ action: "done", state });

// -- the planner --------------------------------------------------------------------------

/** Where a TurnPlanner is in its turn. */
export type PlannerState = "new" | "starting" | "streaming" | "done";

/** Plans one turn on one host: outcomes in, actions out (see the file's head).
 *
 * `state` and `attempts` are the turn's row in the log. A turn that is not queued ran
 * before (on a sandbox that died, or a DO instance that did): it is recovered. Attempts
 * are counted in the log, so a turn that keeps killing its sandboxes or its host is given
 * up after MAX_SANDBOX_ATTEMPTS however often the host restarts. */
export class TurnPlanner {
  state: PlannerState = "new";
  /** Sandbox attempts counted so far (this one included once it is recorded). */
  attempts: number;
  /** Whether the next stream continues the turn rather than starting it. */
  recover: boolean;

  constructor(state: TurnState, attempts: number) {
    if (!OPEN_TURN_STATES.includes(state)) {
      throw new InvalidStateError(`A ${state} turn is over; there is nothing to plan.`);
    }
    if (!Number.isInteger(attempts) || attempts < 0) {
      throw new RangeError(`attempts must be 0 or more, not ${attempts}.`);
    }
    this.attempts = attempts;
    this.recover = state !== "queued";
  }

  /** Start (or, after a host restart, resume) the turn. */
  begin(): TurnAction[] {
    this.expect("new", "begin");
    return this.nextAttempt([]);
  }

  /** The sandbox StartSandbox asked for runs. */
  sandboxStarted(): TurnAction[] {
    this.expect("starting", "sandbox_started");
    this.state = "streaming";
    return [Stream(this.recover)];
  }

  /** The sandbox failed to start (its `failed` event is recorded): that attempt is used
   * up; the turn is not yet `recover` if it never reached a runtime. */
  sandboxFailed(): TurnAction[] {
    this.expect("starting", "sandbox_failed");
    return this.nextAttempt([]);
  }

  /** A batch of the runtime's events (kind, data), in order. Those through the turn's end
   * are emitted; an end finishes the turn (completed on `result`, failed on `error`
   * `turn_failed`). */
  batch(events: ReadonlyArray<readonly [string, Readonly<Data>]>): TurnAction[] {
    this.expect("streaming", "batch");
    const end = events.findIndex(([kind, data]) => endsTurn(kind, data));
    if (end < 0) return [Emit(events.length)];
    const outcome: TurnState = events[end][0] === "result" ? "completed" : "failed";
    this.state = "done";
    return [Emit(end + 1), Record(outcome), Done(outcome)];
  }

  /** The stream ended without the turn's end (the sandbox went away, or the runtime closed
   * it): the next sandbox continues the turn. */
  streamBroken(): TurnAction[] {
    this.expect("streaming", "stream_broken");
    this.recover = true;
    return this.nextAttempt([Record("interrupted"), AwaitSandboxExit()]);
  }

  private nextAttempt(actions: TurnAction[]): TurnAction[] {
    if (this.attempts >= MAX_SANDBOX_ATTEMPTS) {
      this.state = "done";
      return [...actions, GiveUp(givenUpError()), Record("failed"), Done("failed")];
    }
    const wait = backoffS(this.attempts);
    if (wait > 0) actions.push(Wait(wait));
    this.attempts += 1;
    this.state = "starting";
    return [...actions, Record("running", true), StartSandbox()];
  }

  private expect(state: PlannerState, call: string): void {
    if (this.state !== state) {
      throw new InvalidStateError(`The turn planner is ${this.state}; ${call} needs it ${state}.`);
    }
  }
}
