// The session's side of kit's control API (control.ts has the Worker's side and the
// contract, kit/cli/control.py): what `kit sessions`, `kit logs`, `kit sandbox …` and
// `kit do evict` ask of one SessionDO. The Worker reaches it at internal paths under
// CONTROL_PREFIX (a DO is reachable only from its Worker, which checked the API token):
//
//   GET  /_kit/summary        200 the session's row of `GET /_kit/sessions`; 404 no session
//   GET  /_kit/sandbox        200 {"sandbox": its row of `GET /_kit/sandboxes`, or null}
//   GET  /_kit/events?after=N[&follow=1]
//                             NDJSON (ndjson.ts); with follow, a segment: stored then live
//                             events for up to segmentMs, then SEGMENT_LINE (the Worker
//                             asks again from its cursor); 404 no session
//   POST /_kit/kill {"signo"} 202 {"sandbox_id", "signal"}; 404 no_sandbox; 409 starting
//   POST /_kit/oom            202 {"sandbox_id"}; 409 cannot_oom where the container has no
//                             such hook (Cloudflare's has none; kit's emulator has)
//   POST /_kit/evict          {"evicted"}: whether anything of the session was in memory;
//                             its sockets are closed (1001, shutting_down) first
//   POST /_kit/abort          ctx.abort(): the instance is thrown away, storage stays
//
// Reads here use the DO's SQLite directly and write nothing: a listing does not change a
// session. A session "in memory" (`loaded`) is one whose instance holds something of it: a
// socket, a follower, a turn it runs, or a sandbox it watches.

import type { Env } from "./env";
import { CLOSE, E, errorFrame, type EventRow } from "./frames";
import { REPLAY_PAGE, type SessionLog } from "./log";
import { endLine, eventLine } from "./ndjson";
import type { TurnRunner } from "./runner";
import type { ContainerLike } from "./runtime";
import { sessionIndex } from "./sessionindex";

/** The internal paths a SessionDO serves to its Worker's control routes. */
export const CONTROL_PREFIX = "/_kit/";
/** How long one follow request to the DO lasts before the Worker asks again. */
export const FOLLOW_SEGMENT_MS = 60_000;
/** Live events queued for a follower before it goes back to reading the log
 * (kit/cli/follow.py MAX_BEHIND). */
export const MAX_BEHIND = 50_000;
/** The line that ends a follow segment (never passed on to the client). */
export const SEGMENT_LINE = '{"segment": "over"}\n';

/** What SessionControl needs of its SessionDO. */
export interface ControlHost {
  readonly ctx: DurableObjectState;
  readonly env: Env;
  readonly log: SessionLog;
  readonly runner: TurnRunner;
  container(): ContainerLike | null;
}

/** A row of `GET /_kit/sessions` (kit/cli/control.py `session_row`). */
export interface SessionRow {
  session_id: string;
  created_ms: number | null;
  last_seq: number;
  last_kind: string | null;
  last_ts: number | null;
  turns: number;
  open_turns: number;
  sandbox: "running" | "starting" | "none";
  loaded: boolean;
}

/** A row of `GET /_kit/sandboxes`: a container has no PID the host could see, and no pool. */
export interface SandboxRow {
  session_id: string;
  sandbox_id: string;
  tier: string;
  state: "running";
  pid: null;
  pooled: false;
}

/** One `follow` request: live events handed to it, and a wake-up for its stream. */
class Follower {
  readonly queue: EventRow[] = [];
  letGo = false;
  private wake: (() => void) | null = null;

  /** Its stream was cancelled (the client went away): stop waiting. */
  stop(): void {
    this.letGo = true;
    this.wake?.();
  }

  deliver(row: EventRow): void {
    if (this.queue.length >= MAX_BEHIND) this.letGo = true; // the log has it all
    else this.queue.push(row);
    this.wake?.();
  }

  /** Until an event comes or `ms` pass. */
  async wait(ms: number): Promise<void> {
    const timer = new AbortController();
    const woken = new Promise<void>((resolve) => (this.wake = resolve));
    try {
      await Promise.race([woken, scheduler.wait(ms, { signal: timer.signal }).catch(() => undefined)]);
    } finally {
      this.wake = null;
      timer.abort();
    }
  }
}

const encoder = new TextEncoder();

export class SessionControl {
  /** FOLLOW_SEGMENT_MS; tests shorten it on an instance. */
  segmentMs = FOLLOW_SEGMENT_MS;
  /** Settles once a `register` of this instance is done (tests await it). */
  registered: Promise<void> = Promise.resolve();
  private readonly followers = new Set<Follower>();

  constructor(private readonly host: ControlHost) {}

  /** A session made before the SessionIndex existed adds itself to it (once). */
  register(): void {
    const log = this.host.log;
    if (!log.exists() || log.meta("indexed") !== null) return;
    const sessionId = log.meta("session_id");
    if (sessionId === null) return;
    const created = log.meta("created_ms");
    const added = sessionIndex(this.host.env)
      .add(sessionId, created === null ? null : Number(created))
      .then(() => log.setMeta("indexed", "1"))
      .catch((exc: unknown) => console.error(`session ${sessionId}: adding it to the index failed`, exc));
    this.registered = added;
    this.host.ctx.waitUntil(added);
  }

  /** A committed event: to every follower (after the commit, as to sockets). */
  published(row: EventRow): void {
    for (const follower of this.followers) follower.deliver(row);
  }

  /** Whether anything of the session is in this instance's memory. */
  loaded(): boolean {
    const { ctx, runner } = this.host;
    return ctx.getWebSockets().length > 0 || this.followers.size > 0 || runner.busy || runner.watched() !== null;
  }

  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const what = url.pathname.slice(CONTROL_PREFIX.length);
    if (what === "abort") this.host.ctx.abort("evicted by kit's control API (kit do evict)");
    if (!this.host.log.exists()) return json({ error: "unknown_session" }, 404);
    switch (what) {
      case "summary":
        return json(await this.summary(), 200);
      case "sandbox":
        return json({ sandbox: await this.sandboxRow() }, 200);
      case "events": {
        const after = Number(url.searchParams.get("after") ?? "0");
        const body = url.searchParams.get("follow") === "1" ? this.followed(after) : this.stored(after);
        return new Response(body, { headers: { "content-type": "application/x-ndjson" } });
      }
      case "kill":
        return this.kill(((await request.json()) as { signo: number }).signo);
      case "oom":
        return this.oom();
      case "evict":
        return json({ evicted: this.evict() }, 200);
      default:
        return json({ error: "not_found" }, 404);
    }
  }

  // -- reads ------------------------------------------------------------------------------

  private async summary(): Promise<SessionRow> {
    const { log } = this.host;
    const sql = this.host.ctx.storage.sql;
    const last = sql.exec<{ seq: number; kind: string; ts: number }>("SELECT seq, kind, ts FROM events ORDER BY seq DESC LIMIT 1").toArray()[0];
    const counts = sql
      .exec<{ turns: number; open: number }>(
        "SELECT COUNT(*) AS turns, COALESCE(SUM(state IN ('queued', 'running', 'interrupted')), 0) AS open FROM turns",
      )
      .one();
    const created = log.meta("created_ms");
    const running = await this.runningSandbox();
    return {
      session_id: log.meta("session_id") ?? "",
      created_ms: created === null ? null : Number(created),
      last_seq: last?.seq ?? 0,
      last_kind: last?.kind ?? null,
      last_ts: last?.ts ?? null,
      turns: counts.turns,
      open_turns: counts.open,
      sandbox: running !== null ? "running" : this.starting() ? "starting" : "none",
      loaded: this.loaded(),
    };
  }

  private async sandboxRow(): Promise<SandboxRow | null> {
    const running = await this.runningSandbox();
    if (running === null) return null;
    const { log } = this.host;
    return { session_id: log.meta("session_id") ?? "", sandbox_id: running, tier: log.meta("tier") ?? "basic", state: "running", pid: null, pooled: false };
  }

  /** The id of the sandbox running for the session: the one this instance watches, or a
   * container an earlier instance started that still runs (on Cloudflare a container
   * outlives its DO instance); null if none. Changes nothing. */
  private async runningSandbox(): Promise<string | null> {
    const { runner, log } = this.host;
    const watched = runner.watched();
    if (watched !== null) return watched.sandboxId;
    if (runner.busy) return null; // between a sandbox's death and the next one's start
    const container = this.host.container();
    if (container === null) return null;
    try {
      await container.refresh?.();
    } catch (exc) {
      console.log(`asking whether the container runs failed: ${String(exc)}`);
      return null;
    }
    if (runner.watched() !== null) return runner.watched()!.sandboxId; // adopted meanwhile
    return container.running && !runner.busy ? (log.meta("sandbox_id") ?? "sbx-unknown") : null;
  }

  /** A turn runs and the log last said its sandbox is starting. */
  private starting(): boolean {
    if (!this.host.runner.busy) return false;
    const rows = this.host.ctx.storage.sql
      .exec<{ data: string }>("SELECT data FROM events WHERE kind = 'sandbox' ORDER BY seq DESC LIMIT 1")
      .toArray();
    return rows.length > 0 && (JSON.parse(rows[0].data) as { state?: unknown }).state === "starting";
  }

  /** Every stored event after `after`, page by page, then the `done` line. */
  private stored(after: number): ReadableStream<Uint8Array> {
    const { log } = this.host;
    let cursor = after;
    let sent = 0;
    return new ReadableStream<Uint8Array>({
      pull(controller) {
        const rows = log.page(cursor, REPLAY_PAGE);
        if (rows.length > 0) {
          controller.enqueue(encoder.encode(rows.map(eventLine).join("")));
          cursor = rows[rows.length - 1].seq;
          sent += rows.length;
        }
        if (rows.length < REPLAY_PAGE) {
          controller.enqueue(encoder.encode(endLine("done", `${sent} event(s).`)));
          controller.close();
        }
      },
    });
  }

  /** One follow segment: every event after `after`, stored then live, each once, in order
   * (kit/cli/follow.py): the log is read page by page; the last page is read and the
   * follower subscribed in one synchronous step, so no commit falls between the two. */
  private followed(after: number): ReadableStream<Uint8Array> {
    const { log } = this.host;
    const deadline = Date.now() + this.segmentMs;
    const followers = this.followers;
    let cursor = after;
    let follower: Follower | null = null;
    let cancelled = false;
    const detach = (): void => {
      if (follower !== null) followers.delete(follower);
      follower = null;
    };
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        for (let step = 0; step < 1_000 && !cancelled; step++) {
          if (follower === null) {
            const rows = log.page(cursor, REPLAY_PAGE);
            if (rows.length < REPLAY_PAGE) {
              follower = new Follower();
              followers.add(follower);
            }
            if (rows.length > 0) {
              controller.enqueue(encoder.encode(rows.map(eventLine).join("")));
              cursor = rows[rows.length - 1].seq;
              return;
            }
          }
          if (follower === null) continue; // unreachable: a full page was sent
          const out: EventRow[] = [];
          for (const row of follower.queue.splice(0)) {
            if (row.seq <= cursor) continue;
            if (row.seq !== cursor + 1) {
              follower.letGo = true; // never expected: the log sets it right
              break;
            }
            out.push(row);
            cursor = row.seq;
          }
          if (out.length > 0) {
            controller.enqueue(encoder.encode(out.map(eventLine).join("")));
            return;
          }
          if (follower.letGo) {
            detach(); // read what it missed from the log
            continue;
          }
          const left = deadline - Date.now();
          if (left <= 0) {
            detach();
            controller.enqueue(encoder.encode(SEGMENT_LINE));
            controller.close();
            return;
          }
          await follower.wait(left);
        }
      },
      cancel() {
        cancelled = true;
        follower?.stop();
        detach();
      },
    });
  }

  // -- actions ----------------------------------------------------------------------------

  /** kit/cli/control.py `kill`: the signal to the session's running sandbox; its death is
   * logged by the runner's watch (`sandbox died killed 137`, as kit's host logs it). */
  private async kill(signo: number): Promise<Response> {
    const target = await this.target();
    if (target instanceof Response) return target;
    try {
      target.container.signal(signo);
    } catch (exc) {
      return json({ error: "sandbox_unreachable", message: `Cannot signal sandbox ${target.sandboxId}: ${messageOf(exc)}` }, 503);
    }
    return json({ sandbox_id: target.sandboxId, signal: signo }, 202);
  }

  /** kit/cli/control.py `oom`: push the sandbox past its memory limit, where its container
   * can be made to (kit's container emulator); it dies `oom` 137. */
  private async oom(): Promise<Response> {
    const target = await this.target();
    if (target instanceof Response) return target;
    if (target.container.oom === undefined) {
      return json(
        {
          error: "cannot_oom",
          message: `Sandbox ${target.sandboxId} cannot rehearse an OOM kill (its provider has no such hook).`,
        },
        409,
      );
    }
    try {
      await target.container.oom();
    } catch (exc) {
      return json({ error: "cannot_oom", message: messageOf(exc) }, 409);
    }
    return json({ sandbox_id: target.sandboxId }, 202);
  }

  /** The sandbox a kill or an OOM acts on, or the refusal kit's host gives: 409
   * `sandbox_starting` while one starts (or a turn an earlier instance ran is about to be
   * recovered: it is resumed now, and its recovery starts a new sandbox); 404 `no_sandbox`. */
  private async target(): Promise<{ sandboxId: string; container: ContainerLike } | Response> {
    const { runner, log } = this.host;
    const sessionId = log.meta("session_id") ?? "";
    const starting = json(
      {
        error: "sandbox_starting",
        message: `Session ${sessionId}'s sandbox is starting; try again once \`kit sandbox list\` shows it running.`,
      },
      409,
    );
    let target = runner.watched();
    if (target === null && !runner.busy && log.openTurn() !== null) {
      runner.resume();
      return starting;
    }
    if (target === null && this.starting()) return starting;
    target ??= await runner.adoptIdle();
    if (target !== null) return target;
    return json(
      { error: "no_sandbox", message: `Session ${sessionId} has no running sandbox here; \`kit sandbox list\` shows the running ones.` },
      404,
    );
  }

  /** Before the instance is thrown away: whether anything of the session was in memory;
   * its clients' sockets closed as kit's host closes them on an eviction (they resume). */
  private evict(): boolean {
    const evicted = this.loaded();
    for (const ws of this.host.ctx.getWebSockets()) {
      try {
        ws.send(errorFrame(E.SHUTTING_DOWN, "The session's Durable Object was evicted; reconnect and resume."));
        ws.close(CLOSE.GOING_AWAY, E.SHUTTING_DOWN);
      } catch {
        // closed under us
      }
    }
    return evicted;
  }
}

function json(body: unknown, status: number): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

function messageOf(exc: unknown): string {
  return exc instanceof Error ? exc.message : String(exc);
}
