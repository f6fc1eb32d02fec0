// SessionIndex: the list of sessions, one Durable Object for the whole Worker (named
// INDEX_NAME). Durable Objects cannot be listed, so `GET /_kit/sessions` and
// `GET /_kit/sandboxes` read the ids here, then ask each session's own DO (control.ts).
//
// A row is written by the Worker at POST /v1/sessions, before the session's DO is made
// (an id whose DO then failed to start names no session: its DO answers so, and the
// listing skips it); a session made before this index existed adds itself the first time
// its DO wakes (sessioncontrol.ts `register`). Sessions are never deleted, so neither are
// rows.

import { DurableObject } from "cloudflare:workers";
import type { Env } from "./env";

/** The name of the one SessionIndex object. */
export const INDEX_NAME = "sessions";

/** The most sessions one listing reads, newest first: each is a request to its own DO. */
export const MAX_LISTED = 500;

const SCHEMA = `CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, created_ms INTEGER)`;

export class SessionIndex extends DurableObject<Env> {
  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.storage.sql.exec(SCHEMA);
  }

  /** Add a session (again is fine: the first row stays). */
  async add(sessionId: string, createdMs: number | null): Promise<void> {
    this.ctx.storage.sql.exec("INSERT OR IGNORE INTO sessions VALUES (?, ?)", sessionId, createdMs);
  }

  /** Up to `limit` session ids, the newest first (those with no creation time last). */
  async list(limit: number = MAX_LISTED): Promise<string[]> {
    return this.ctx.storage.sql
      .exec<{ session_id: string }>(
        "SELECT session_id FROM sessions ORDER BY created_ms IS NULL, created_ms DESC, session_id LIMIT ?",
        limit,
      )
      .toArray()
      .map((r) => r.session_id);
  }

  /** Whether the index holds `sessionId`. */
  async has(sessionId: string): Promise<boolean> {
    return this.ctx.storage.sql.exec("SELECT 1 FROM sessions WHERE session_id = ?", sessionId).toArray().length > 0;
  }
}

/** The index's stub. */
export function sessionIndex(env: Env): DurableObjectStub<SessionIndex> {
  return env.SESSION_INDEX.getByName(INDEX_NAME);
}
