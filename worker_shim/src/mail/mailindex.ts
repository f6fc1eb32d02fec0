// MailIndex: the email threads of the whole Worker, one Durable Object (named
// MAIL_INDEX_NAME). Routing needs a lookup across sessions (a plus-address token, or any
// Message-ID of any thread), and two deliveries of one message must not make two sessions,
// so every routing decision is taken here, in one synchronous step of one object: the
// lookups, kit's rules (rules.ts `decide`) and the rows they lead to commit together.
//
// Tables: `threads` (session, token, participants, replies sent), `thread_ids` (every
// Message-ID kit knows in a thread: the inbound ones, and each reply's, kit's derived one and
// the one the platform gave), `inbound` (each Message-ID taken: `routed`, then `delivered`
// once its session holds the turn), `refused` and `outbox` (what `GET /_kit/mail/refused`
// and `GET /_kit/mail/outbox` list; the newest MAX_KEPT of each are kept).
//
// One object holds every thread: a single-threaded index is a limit of throughput (every
// inbound message is one request to it), not of correctness; at the volume of mail one
// agent answers it is far from reached (docs/email.md).

import { DurableObject } from "cloudflare:workers";
import type { Env } from "../env";
import type { Inbound } from "./message";
import { Agent, REFUSALS, decide, newToken, threadIds, tokens, type Thread } from "./rules";

/** The name of the one MailIndex object. */
export const MAIL_INDEX_NAME = "mail";
/** Rows kept in `refused` and in `outbox` (the oldest go first). */
export const MAX_KEPT = 1_000;
/** The most items one listing gives, newest first, and how many without `?limit=`
 * (kit/mail/routes.py's). */
export const MAX_LISTED_MAIL = 500;
export const DEFAULT_LISTED_MAIL = 50;

/** Refusals outside kit's rules: mail the Worker could not read, or a Worker with no address. */
export const WORKER_REFUSALS = {
  unreadable: "the message cannot be read (no Message-ID, or too large)",
  no_address: "this Worker has no mail address: set the var KIT_MAIL_ADDRESS (kit.toml [mail] address)",
} as const;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS threads (
  session_id TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, participants TEXT NOT NULL,
  replies INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS thread_ids (message_id TEXT PRIMARY KEY, session_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbound (
  message_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, action TEXT NOT NULL, state TEXT NOT NULL, ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
  message_id TEXT, sender TEXT NOT NULL, recipient TEXT NOT NULL, subject TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL, inbound_id TEXT NOT NULL UNIQUE, from_addr TEXT NOT NULL,
  to_addr TEXT NOT NULL, subject TEXT NOT NULL, message_id TEXT, text TEXT NOT NULL,
  created_ms INTEGER NOT NULL, sent_ms INTEGER, error TEXT
);
`;

/** Where one inbound message goes: a thread's session (`new`: made for it), or nowhere. */
export type Routed =
  | { action: "new" | "continue"; session_id: string; token: string }
  | { action: "refuse"; reason: string; detail: string };

/** A refusal as `GET /_kit/mail/refused` lists it (kit/mail/store.py `Refused`; `at`:
 * epoch seconds). */
export interface RefusedItem {
  message_id: string | null;
  sender: string;
  subject: string;
  reason: string;
  detail: string;
  at: number;
}

/** A reply as `GET /_kit/mail/outbox` lists it (kit/mail/store.py `OutboxEntry`, times in
 * epoch seconds; `sent_at` null and `error` set: given up after MAX_SEND_ATTEMPTS). */
export interface OutboxItem {
  in_reply_to: string;
  session_id: string;
  from: string;
  to: string;
  subject: string;
  message_id: string | null;
  text: string;
  created_at: number;
  sent_at: number | null;
  error: string | null;
}

/** A sent (or given up) reply, told by the session's DO. */
export interface ReplyRecord {
  session_id: string;
  inbound_id: string;
  from: string;
  to: string;
  subject: string;
  message_id: string | null;
  text: string;
  created_ms: number;
  sent_ms: number | null;
  error: string | null;
  /** Ids the reply is known by (kit's derived one, the platform's). */
  known_ids: string[];
}

export class MailIndex extends DurableObject<Env> {
  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.storage.sql.exec(SCHEMA);
  }

  /** Route `msg` for `agent` (kit's rules, in one step: see the top of this file). A message
   * routed before and not yet delivered gets the same answer again (its delivery is
   * retried); one delivered before is a `duplicate`. Refusals are recorded. */
  async route(msg: Inbound, agentAddress: string, agentName: string): Promise<Routed> {
    const sql = this.ctx.storage.sql;
    const agent = new Agent(agentAddress, agentName);
    const taken = sql
      .exec<{ session_id: string; action: string; state: string }>("SELECT session_id, action, state FROM inbound WHERE message_id = ?", msg.message_id)
      .toArray()[0];
    if (taken !== undefined && taken.state === "routed") {
      const thread = this.thread("session_id", taken.session_id);
      if (thread !== null) return { action: taken.action as "new" | "continue", session_id: thread.session_id, token: thread.token };
    }
    const toks = tokens(msg, agent);
    const byToken = toks.length > 0 ? this.thread("token", toks[0]) : null;
    let byReference: Thread | null = null;
    for (const id of threadIds(msg)) {
      const row = sql.exec<{ session_id: string }>("SELECT session_id FROM thread_ids WHERE message_id = ?", id).toArray()[0];
      if (row !== undefined) byReference = this.thread("session_id", row.session_id);
      if (byReference !== null) break;
    }
    const d = decide(msg, agent, { seen: taken !== undefined, byToken, byReference, authenticated: null });
    const now = Date.now();
    if (d.action === "refuse") {
      const reason = d.reason ?? "malformed";
      this.refuse({ reason, message_id: msg.message_id, from: msg.sender, to: msg.recipients.join(", "), subject: msg.subject });
      return { action: "refuse", reason, detail: REFUSALS[reason] };
    }
    let thread: Thread;
    if (d.action === "new") {
      thread = { session_id: crypto.randomUUID(), token: newToken(), participants: [msg.sender], replies: 0 };
      sql.exec("INSERT INTO threads VALUES (?, ?, ?, 0, ?)", thread.session_id, thread.token, JSON.stringify(thread.participants), now);
    } else {
      thread = d.thread!;
    }
    sql.exec("INSERT OR IGNORE INTO thread_ids VALUES (?, ?)", msg.message_id, thread.session_id);
    sql.exec("INSERT OR REPLACE INTO inbound VALUES (?, ?, ?, 'routed', ?)", msg.message_id, thread.session_id, d.action, now);
    return { action: d.action, session_id: thread.session_id, token: thread.token };
  }

  /** The session holds the message's turn: another delivery of it is a `duplicate`. */
  async delivered(messageId: string): Promise<void> {
    this.ctx.storage.sql.exec("UPDATE inbound SET state = 'delivered' WHERE message_id = ?", messageId);
  }

  /** Record a refusal (kit's reasons, or WORKER_REFUSALS for mail the rules never saw). */
  async refuse(item: { reason: string; detail?: string; message_id: string | null; from: string; to: string; subject: string }): Promise<void> {
    const detail = item.detail ?? (REFUSALS as Record<string, string>)[item.reason] ?? (WORKER_REFUSALS as Record<string, string>)[item.reason] ?? "";
    const sql = this.ctx.storage.sql;
    sql.exec(
      "INSERT INTO refused (ts, reason, detail, message_id, sender, recipient, subject) VALUES (?, ?, ?, ?, ?, ?, ?)",
      Date.now(),
      item.reason,
      detail.slice(0, 500),
      item.message_id === null ? null : item.message_id.slice(0, 1000),
      item.from.slice(0, 500),
      item.to.slice(0, 1000),
      item.subject.slice(0, 1000),
    );
    sql.exec("DELETE FROM refused WHERE id <= (SELECT MAX(id) FROM refused) - ?", MAX_KEPT);
  }

  /** A session's DO sent (or gave up) the reply to `inbound_id`: list it, count it against
   * the thread's cap, and know its ids (a reply to it routes to the thread). Once per
   * inbound id; again is a no-op. */
  async replied(record: ReplyRecord): Promise<void> {
    const sql = this.ctx.storage.sql;
    if (sql.exec("SELECT 1 FROM outbox WHERE inbound_id = ?", record.inbound_id).toArray().length > 0) return;
    sql.exec(
      "INSERT INTO outbox (session_id, inbound_id, from_addr, to_addr, subject, message_id, text, created_ms, sent_ms, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      record.session_id,
      record.inbound_id,
      record.from,
      record.to,
      record.subject,
      record.message_id,
      record.text,
      record.created_ms,
      record.sent_ms,
      record.error,
    );
    sql.exec("DELETE FROM outbox WHERE id <= (SELECT MAX(id) FROM outbox) - ?", MAX_KEPT);
    if (record.sent_ms === null) return;
    sql.exec("UPDATE threads SET replies = replies + 1 WHERE session_id = ?", record.session_id);
    for (const id of record.known_ids) sql.exec("INSERT OR IGNORE INTO thread_ids VALUES (?, ?)", id, record.session_id);
  }

  /** Up to `limit` refusals, the newest first. */
  async refusedItems(limit: number = MAX_LISTED_MAIL): Promise<RefusedItem[]> {
    return this.ctx.storage.sql
      .exec<{ ts: number; reason: string; detail: string; message_id: string | null; sender: string; recipient: string; subject: string }>(
        "SELECT ts, reason, detail, message_id, sender, recipient, subject FROM refused ORDER BY id DESC LIMIT ?",
        Math.min(limit, MAX_LISTED_MAIL),
      )
      .toArray()
      .map((r) => ({ message_id: r.message_id, sender: r.sender, subject: r.subject, reason: r.reason, detail: r.detail, at: r.ts / 1000 }));
  }

  /** Up to `limit` replies, the newest first. */
  async outboxItems(limit: number = MAX_LISTED_MAIL): Promise<OutboxItem[]> {
    return this.ctx.storage.sql
      .exec<Record<string, SqlStorageValue>>(
        "SELECT session_id, inbound_id, from_addr, to_addr, subject, message_id, text, created_ms, sent_ms, error FROM outbox ORDER BY id DESC LIMIT ?",
        Math.min(limit, MAX_LISTED_MAIL),
      )
      .toArray()
      .map((r) => ({
        in_reply_to: r.inbound_id as string,
        session_id: r.session_id as string,
        from: r.from_addr as string,
        to: r.to_addr as string,
        subject: r.subject as string,
        message_id: r.message_id as string | null,
        text: r.text as string,
        created_at: (r.created_ms as number) / 1000,
        sent_at: r.sent_ms === null ? null : (r.sent_ms as number) / 1000,
        error: r.error as string | null,
      }));
  }

  private thread(by: "session_id" | "token", value: string): Thread | null {
    const row = this.ctx.storage.sql
      .exec<{ session_id: string; token: string; participants: string; replies: number }>(
        `SELECT session_id, token, participants, replies FROM threads WHERE ${by} = ?`,
        value,
      )
      .toArray()[0];
    if (row === undefined) return null;
    return { session_id: row.session_id, token: row.token, participants: JSON.parse(row.participants) as string[], replies: row.replies };
  }
}

/** The index's stub. */
export function mailIndex(env: Env): DurableObjectStub<MailIndex> {
  return env.MAIL_INDEX.getByName(MAIL_INDEX_NAME);
}
