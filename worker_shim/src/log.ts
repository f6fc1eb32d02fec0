// The session's durable state in the DO's SQLite (ctx.storage.sql): its metadata, the
// append-only event log and the turn table, the same shape as kit/host/eventlog.py.
//
// Every write here is synchronous and lands in the DO's implicit transaction; the output gate
// holds any ws.send() made after it until that transaction is committed. So "append, then
// send" is "durable, then sent" (ARCHITECTURE §4 invariant 1).

import type { EventRow } from "./frames";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, turn_id TEXT, data TEXT NOT NULL, ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
  turn_id TEXT PRIMARY KEY, client_msg_id TEXT NOT NULL UNIQUE, text TEXT NOT NULL,
  state TEXT NOT NULL, user_seq INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS turns_open ON turns(state, user_seq);
`;

/** Turn states (docs/protocol.md §6): queued → running → completed | failed, and
 * running → interrupted → running when a sandbox dies under the turn. */
export type TurnState = "queued" | "running" | "interrupted" | "completed" | "failed";

/** A turn still to finish, oldest first. */
export interface OpenTurn {
  turn_id: string;
  text: string;
  state: TurnState;
  attempts: number;
}

/** Events read per page of a replay (docs/protocol.md §5). */
export const REPLAY_PAGE = 1000;

/** The largest event row: DO SQLite's 2 MB per row and string (reference/cloudflare.md §4),
 * the bytes kit's Durable Object emulator refuses past (emulator/durable_objects/limits.py
 * MAX_VALUE_BYTES), so an event kit's Python host cannot store there is not stored here
 * either. */
export const MAX_ROW_BYTES = 2_000_000;
/** What a row holds besides its data, kind and turn id (three integers), counted high. */
const ROW_OVERHEAD_BYTES = 32;

/** An event too large for one row of the log: nothing of it was stored. The turn it came
 * with fails (`turn_failed`), as on kit's Python host, whose append fails the same way. */
export class EventTooLarge extends Error {
  override name = "EventTooLarge";
}

/** The `meta` key counting the session's turns (a turn's id is `t<count>`). */
const TURN_COUNT = "turn_count";

/** One session's log. Cheap to make, and it writes nothing until the session exists: the
 * schema is created by `create`, and brought up to date by `migrate` on every instance of
 * an existing session, so a DO that holds no session (an unknown id) stays empty. */
export class SessionLog {
  private lastSeqCache: number | null = null;
  private turnCountCache: number | null = null;
  private existsCache = false;

  private readonly sql: SqlStorage;

  constructor(private readonly storage: DurableObjectStorage) {
    this.sql = storage.sql;
  }

  /** Make the tables and store the session's metadata (once, at POST /v1/sessions). */
  create(meta: Record<string, string>): void {
    this.sql.exec(SCHEMA);
    for (const [key, value] of Object.entries({ ...meta, [TURN_COUNT]: "0" })) {
      this.sql.exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", key, value);
    }
    this.existsCache = true;
  }

  /** Bring an existing session's storage to this version's schema: its tables and the turn
   * counter (counted once for a session stored before it). Writes nothing when this DO holds
   * no session; whether it holds one. */
  migrate(): boolean {
    if (!this.exists()) return false;
    this.sql.exec(SCHEMA);
    if (this.meta(TURN_COUNT) === null) {
      const n = this.sql.exec<{ n: number }>("SELECT COUNT(*) AS n FROM turns").one().n;
      this.setMeta(TURN_COUNT, String(n));
    }
    return true;
  }

  /** Whether this DO holds a session (a read only; sessions are never deleted, so a yes is
   * kept). */
  exists(): boolean {
    if (!this.existsCache) {
      this.existsCache = this.sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").toArray().length > 0;
    }
    return this.existsCache;
  }

  meta(key: string): string | null {
    if (!this.exists()) return null;
    const rows = this.sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key).toArray();
    return rows[0]?.value ?? null;
  }

  setMeta(key: string, value: string): void {
    this.sql.exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", key, value);
  }

  lastSeq(): number {
    if (this.lastSeqCache === null) {
      this.lastSeqCache = this.sql.exec<{ s: number }>("SELECT COALESCE(MAX(seq), 0) AS s FROM events").one().s;
    }
    return this.lastSeqCache;
  }

  /** Append one event (`data` an object, stored as JSON text); the row, to send after.
   * EventTooLarge, with nothing stored, for a row over MAX_ROW_BYTES. */
  append(kind: string, data: unknown, turnId: string | null): EventRow {
    const row: EventRow = { seq: this.lastSeq() + 1, kind, turn_id: turnId, data: JSON.stringify(data), ts: Date.now() };
    const size = utf8Length(row.data) + utf8Length(kind) + utf8Length(turnId ?? "") + ROW_OVERHEAD_BYTES;
    if (size > MAX_ROW_BYTES) {
      throw new EventTooLarge(`a ${kind} event of ${size} bytes is over the ${MAX_ROW_BYTES} bytes an event may have in the log`);
    }
    this.sql.exec("INSERT INTO events VALUES (?, ?, ?, ?, ?)", row.seq, row.kind, row.turn_id, row.data, row.ts);
    this.lastSeqCache = row.seq;
    return row;
  }

  /** Up to `limit` events after `after`, in seq order. */
  page(after: number, limit: number = REPLAY_PAGE): EventRow[] {
    return this.sql
      .exec<Record<string, SqlStorageValue> & EventRow>(
        "SELECT seq, kind, turn_id, data, ts FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        after,
        limit,
      )
      .toArray();
  }

  /** Whether a user message with this id was applied before (it is, at most once). */
  seen(clientMsgId: string): boolean {
    return this.sql.exec("SELECT 1 FROM turns WHERE client_msg_id = ?", clientMsgId).toArray().length > 0;
  }

  /** Store the `user` event, its queued turn and the turn count in one transaction; the
   * event row. */
  addTurn(clientMsgId: string, text: string): EventRow {
    const n = (this.turnCountCache ?? Number(this.meta(TURN_COUNT) ?? "0")) + 1;
    const turnId = `t${n}`;
    const seq = this.lastSeq() + 1;
    try {
      const row = this.storage.transactionSync(() => {
        const row = this.append("user", { client_msg_id: clientMsgId, text }, turnId);
        this.sql.exec("INSERT INTO turns VALUES (?, ?, ?, 'queued', ?, 0)", turnId, clientMsgId, text, row.seq);
        this.setMeta(TURN_COUNT, String(n));
        return row;
      });
      this.turnCountCache = n;
      return row;
    } catch (exc) {
      this.lastSeqCache = seq - 1; // rolled back with the rest
      throw exc;
    }
  }

  /** Store a turn's last event (its `result` or `turn_failed`) and its end state in one
   * transaction: an instance reset between the two would leave a turn whose answer is
   * stored still open, and the next instance would run it again. The event row. */
  endTurn(kind: string, data: unknown, turnId: string, state: TurnState): EventRow {
    const seq = this.lastSeq() + 1;
    try {
      return this.storage.transactionSync(() => {
        const row = this.append(kind, data, turnId);
        this.updateTurn(turnId, state, false);
        return row;
      });
    } catch (exc) {
      this.lastSeqCache = seq - 1; // rolled back with the rest
      throw exc;
    }
  }

  /** The oldest open turn (queued, running or interrupted), if any. */
  openTurn(): OpenTurn | null {
    if (!this.exists()) return null;
    const rows = this.sql
      .exec<Record<string, SqlStorageValue> & OpenTurn>(
        "SELECT turn_id, text, state, attempts FROM turns WHERE state IN ('queued', 'running', 'interrupted') ORDER BY user_seq LIMIT 1",
      )
      .toArray();
    return rows[0] ?? null;
  }

  /** Record a turn's new state; `attempt` counts one more sandbox for it. */
  setTurnState(turnId: string, state: TurnState, attempt = false): void {
    this.updateTurn(turnId, state, attempt);
  }

  private updateTurn(turnId: string, state: TurnState, attempt: boolean): void {
    this.sql.exec(
      "UPDATE turns SET state = ?, attempts = attempts + ? WHERE turn_id = ?",
      state,
      attempt ? 1 : 0,
      turnId,
    );
  }
}

/** UTF-8 bytes of `text` (lone surrogates count 3, as TextEncoder writes U+FFFD), without
 * encoding it. */
export function utf8Length(text: string): number {
  let n = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 2; // a pair: 4 bytes for 2 units
      i++;
    } else n += 2;
  }
  return n;
}
