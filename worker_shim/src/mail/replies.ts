// A session's mail: the turn each inbound message starts, and exactly one reply per inbound
// message, kept in the session DO's SQLite (`mail_replies`, one row per inbound id).
//
//   take(turn)   the row and the `user` event (client_msg_id `mail-<sha256 of the
//                Message-ID>`) are written in one synchronous step, once per inbound id: a
//                second delivery of the message finds its row and adds nothing
//   pump()       for each row whose turn has ended (its `result`, or `error` turn_failed in
//                the log): compose the reply (the result's text; a short apology when the
//                turn failed or its result is an error), mark the row `sending`, send it
//                through the send_email binding, mark it `sent` with the platform's id; then
//                tell the MailIndex (outbox listing, thread cap, the reply's ids)
//
// The SessionDO pumps when a turn ends and from its alarm, which stays set while a row
// waits (a DO evicted or restarted after the turn's end still sends). A row found `sending`
// by a new instance is sent again: the one window where a reply can go twice is between the
// platform accepting it and this DO committing `sent` (the reply carries kit's derived
// Message-ID, which lets a receiver that keeps it drop the copy). Rows are never deleted.

import { EmailMessage } from "cloudflare:email";
import type { Env } from "../env";
import type { SessionLog } from "../log";
import { composeReply, toRaw, type ReplyTo } from "./compose";
import { mailIndex, type ReplyRecord } from "./mailindex";
import { Agent } from "./rules";

/** The reply's text when the turn failed (kit/mail/channel.py FAILED_TEXT; `{why}`: the
 * turn_failed event's message). */
export const FAILED_TEXT = "Sorry, I could not answer this message ({why}). Nothing was lost: write again to retry.";
/** The reply's text when the turn's result has none (kit/mail/channel.py's). */
export const NO_ANSWER = "(The agent finished without a written answer.)";
/** Sends of one reply before it is given up (`failed`, listed with its error). */
export const MAX_SEND_ATTEMPTS = 5;
/** How soon the alarm looks again while a reply waits to be sent or listed. */
export const MAIL_RETRY_MS = 5_000;

/** One inbound message handed to its session (by the Worker's email handler). */
export interface MailTurn {
  inbound_id: string;
  client_msg_id: string;
  /** The turn's text (text.ts `turnText`). */
  text: string;
  reply_to: ReplyTo;
  agent: { address: string; name: string };
  /** The thread's plus-address token: replies come from `agent+token@domain`. */
  token: string;
}

/** What sends a reply: the send_email binding, or a test's recorder. */
export interface Mailer {
  send(from: string, to: string, raw: string): Promise<{ messageId: string | null }>;
}

/** The `send_email` binding `KIT_MAIL` (wrangler.jsonc). */
export function bindingMailer(env: Env): Mailer {
  return {
    async send(from, to, raw) {
      if (env.KIT_MAIL === undefined) throw new Error("This Worker has no send_email binding KIT_MAIL: add it to wrangler.jsonc.");
      const sent = await env.KIT_MAIL.send(new EmailMessage(from, to, raw));
      return { messageId: (sent as { messageId?: string } | undefined)?.messageId ?? null };
    },
  };
}

const SCHEMA = `CREATE TABLE IF NOT EXISTS mail_replies (
  turn_id TEXT PRIMARY KEY, inbound_id TEXT NOT NULL UNIQUE, turn TEXT NOT NULL,
  state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, text TEXT, subject TEXT,
  message_id TEXT, created_ms INTEGER, sent_ms INTEGER, error TEXT, listed INTEGER NOT NULL DEFAULT 0
)`;

type ReplyState = "waiting" | "sending" | "sent" | "failed";

interface Row {
  turn_id: string;
  inbound_id: string;
  turn: string;
  state: ReplyState;
  attempts: number;
  text: string | null;
  subject: string | null;
  message_id: string | null;
  /** When the reply was composed (its first send). */
  created_ms: number | null;
  sent_ms: number | null;
  error: string | null;
  listed: number;
}

/** What MailReplies needs of its SessionDO. */
export interface MailHost {
  readonly env: Env;
  readonly log: SessionLog;
  readonly sql: SqlStorage;
  /** Store the `user` event and its turn; the event row, to publish. */
  addTurn(clientMsgId: string, text: string): { turn_id: string | null };
  /** Publish the event, arm the turn watch, start the runner. */
  started(row: { turn_id: string | null }): Promise<void>;
  mailer(): Mailer;
}

export class MailReplies {
  private chain: Promise<number> = Promise.resolve(0);
  private tableKnown = false;

  constructor(private readonly host: MailHost) {}

  private get sql(): SqlStorage {
    return this.host.sql;
  }

  /** Whether this session has mail rows (reads only: a session without mail stays without
   * the table). */
  hasMail(): boolean {
    if (!this.tableKnown) {
      this.tableKnown = this.sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mail_replies'").toArray().length > 0;
    }
    return this.tableKnown;
  }

  /** Start `turn` unless its inbound message was taken before; the turn's id, and whether
   * it is new. */
  async take(turn: MailTurn): Promise<{ turn_id: string; fresh: boolean }> {
    this.sql.exec(SCHEMA);
    this.tableKnown = true;
    const had = this.sql.exec<{ turn_id: string }>("SELECT turn_id FROM mail_replies WHERE inbound_id = ?", turn.inbound_id).toArray()[0];
    if (had !== undefined) return { turn_id: had.turn_id, fresh: false };
    if (this.host.log.seen(turn.client_msg_id)) throw new Error(`client_msg_id ${turn.client_msg_id} has a turn but no mail row`);
    // One synchronous step: the event, the turn and the mail row commit together.
    const row = this.host.addTurn(turn.client_msg_id, turn.text);
    this.sql.exec("INSERT INTO mail_replies (turn_id, inbound_id, turn, state) VALUES (?, ?, ?, 'waiting')", row.turn_id, turn.inbound_id, JSON.stringify(turn));
    await this.host.started(row);
    return { turn_id: row.turn_id!, fresh: true };
  }

  /** Whether the inbound message `inboundId` started its turn here (reads only). */
  taken(inboundId: string): boolean {
    return this.hasMail() && this.sql.exec("SELECT 1 FROM mail_replies WHERE inbound_id = ?", inboundId).toArray().length > 0;
  }

  /** Whether the turn `turnId` has a mail row (its end should pump). */
  isMailTurn(turnId: string | null): boolean {
    return turnId !== null && this.hasMail() && this.sql.exec("SELECT 1 FROM mail_replies WHERE turn_id = ?", turnId).toArray().length > 0;
  }

  /** Send every reply whose turn has ended, one pump at a time; how many rows still wait
   * for something this pump could not do (a send to retry, a listing to make). */
  pump(): Promise<number> {
    const next = this.chain.then(
      () => this.pumpOnce(),
      () => this.pumpOnce(),
    );
    this.chain = next.catch(() => 0);
    return next;
  }

  /** Settles once the pumps started so far are done. */
  async idle(): Promise<void> {
    await this.chain.catch(() => 0);
  }

  /** Rows that need a pump now: sendable ones and unlisted ones (turns still running wait
   * for their end, which pumps). */
  pending(): number {
    if (!this.hasMail()) return 0;
    return this.sql
      .exec<{ n: number }>("SELECT COUNT(*) AS n FROM mail_replies WHERE state IN ('waiting', 'sending') OR listed = 0")
      .one().n;
  }

  private async pumpOnce(): Promise<number> {
    if (!this.hasMail()) return 0;
    let left = 0;
    const rows = this.sql.exec<Record<string, SqlStorageValue> & Row>("SELECT * FROM mail_replies WHERE state IN ('waiting', 'sending') OR listed = 0 ORDER BY rowid LIMIT 100").toArray();
    for (const row of rows) {
      let current: Row = row;
      if (current.state === "waiting" || current.state === "sending") {
        const end = this.turnEnd(current.turn_id);
        if (end === null) continue; // still running: its end pumps
        current = await this.send(current, end);
        if (current.state === "waiting" || current.state === "sending") left++;
      }
      if ((current.state === "sent" || current.state === "failed") && current.listed === 0) {
        if (!(await this.list(current))) left++;
      }
    }
    return left;
  }

  /** The reply's text when the turn has ended, else null. */
  private turnEnd(turnId: string): string | null {
    const rows = this.sql
      .exec<{ kind: string; data: string }>(
        "SELECT kind, data FROM events WHERE turn_id = ? AND kind IN ('result', 'error') ORDER BY seq DESC LIMIT 20",
        turnId,
      )
      .toArray();
    for (const row of rows) {
      const data = JSON.parse(row.data) as Record<string, unknown>;
      if (row.kind === "result") {
        const text = typeof data.text === "string" ? data.text.trim() : "";
        return text || NO_ANSWER;
      }
      if (data.code === "turn_failed") return FAILED_TEXT.replace("{why}", typeof data.message === "string" && data.message ? data.message : "the turn failed");
    }
    return null;
  }

  private async send(row: Row, answer: string): Promise<Row> {
    const turn = JSON.parse(row.turn) as MailTurn;
    const agent = new Agent(turn.agent.address, turn.agent.name);
    const reply = await composeReply(turn.reply_to, agent, turn.token, answer);
    const subject = reply.headers.find(([n]) => n === "Subject")![1];
    const attempts = row.attempts + 1;
    const created = row.created_ms ?? Date.now();
    this.sql.exec(
      "UPDATE mail_replies SET state = 'sending', attempts = ?, text = ?, subject = ?, created_ms = ? WHERE turn_id = ?",
      attempts,
      answer,
      subject,
      created,
      row.turn_id,
    );
    row = { ...row, created_ms: created };
    try {
      const sent = await this.host.mailer().send(reply.from.address, reply.to.address, toRaw(reply));
      const now = Date.now();
      this.sql.exec("UPDATE mail_replies SET state = 'sent', message_id = ?, sent_ms = ?, error = NULL WHERE turn_id = ?", sent.messageId, now, row.turn_id);
      return { ...row, state: "sent", attempts, text: answer, subject, message_id: sent.messageId, sent_ms: now, error: null };
    } catch (exc) {
      const error = (exc instanceof Error ? exc.message : String(exc)).slice(0, 500);
      const state: ReplyState = attempts >= MAX_SEND_ATTEMPTS ? "failed" : "sending";
      console.error(`session ${this.host.log.meta("session_id")}: the reply to ${turn.inbound_id} was not sent (attempt ${attempts}): ${error}`);
      this.sql.exec("UPDATE mail_replies SET state = ?, error = ?, sent_ms = ? WHERE turn_id = ?", state, error, state === "failed" ? Date.now() : null, row.turn_id);
      return { ...row, state, attempts, text: answer, subject, error, sent_ms: state === "failed" ? Date.now() : null };
    }
  }

  /** Tell the MailIndex of a sent (or given up) reply; whether it took it. */
  private async list(row: Row): Promise<boolean> {
    const turn = JSON.parse(row.turn) as MailTurn;
    const agent = new Agent(turn.agent.address, turn.agent.name);
    const derived = (await composeReply(turn.reply_to, agent, turn.token, "")).headers.find(([n]) => n === "Message-ID")![1];
    const strip = (id: string) => id.replace(/^<|>$/g, "");
    const record: ReplyRecord = {
      session_id: this.host.log.meta("session_id") ?? "",
      inbound_id: turn.inbound_id,
      from: agent.withToken(turn.token),
      to: turn.reply_to.sender,
      subject: row.subject ?? "",
      message_id: row.message_id === null ? null : strip(row.message_id),
      text: row.text ?? "",
      created_ms: row.created_ms ?? Date.now(),
      sent_ms: row.state === "sent" ? row.sent_ms : null,
      error: row.state === "sent" ? null : row.error,
      known_ids: [strip(derived), ...(row.message_id === null ? [] : [strip(row.message_id)])],
    };
    try {
      await mailIndex(this.host.env).replied(record);
    } catch (exc) {
      console.error(`session ${record.session_id}: the mail index did not take the reply to ${turn.inbound_id}`, exc);
      return false;
    }
    this.sql.exec("UPDATE mail_replies SET listed = 1 WHERE turn_id = ?", row.turn_id);
    return true;
  }
}
