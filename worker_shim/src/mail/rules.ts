// Which inbound mail is answered, and in which thread: the port of kit/mail/rules.py. Pure
// functions; both replay kit/mail/golden/route.jsonl. The order of the checks is part of
// the rules (the first that applies gives the reason): malformed → loop → duplicate →
// token → references → new thread.

import type { Inbound } from "./message";
import { stripQuotes } from "./text";

/** A thread stops being answered after this many replies. */
export const MAX_REPLIES_PER_THREAD = 50;
/** Cloudflare's `reply()` throws above 100 `References` entries; kit caps there. */
export const MAX_REFERENCES = 100;
export const TOKEN_BYTES = 12;

const SYSTEM_SENDERS = new Set(["mailer-daemon", "postmaster"]);
const BULK = new Set(["bulk", "list", "junk"]);

/** Every refusal reason, with the sentence the outbox and the docs show. */
export const REFUSALS = {
  malformed: "the message has no sender address",
  unauthenticated: "the sender's domain failed authentication (DMARC/SPF/DKIM)",
  auto_submitted: "Auto-Submitted says a machine sent it (RFC 3834)",
  auto_response_suppress: "X-Auto-Response-Suppress asks for no automatic reply",
  precedence: "Precedence: bulk, list or junk",
  list: "mail from a mailing list (List-Id)",
  null_sender: "the envelope sender is empty (a bounce or notification)",
  system_sender: "sent by a mailer-daemon or postmaster",
  own_address: "sent from the agent's own address",
  not_addressed: "not addressed to the agent",
  duplicate: "this Message-ID was taken already (its reply stands)",
  unknown_token: "the plus-address token is not one kit issued",
  not_participant: "the sender is not a participant of the thread it points at",
  thread_cap: `the thread had ${MAX_REPLIES_PER_THREAD} replies already`,
  empty: "no text of its own (only quoted history) and no attachments",
} as const;

export type Refusal = keyof typeof REFUSALS;

/** The agent's mail identity. */
export class Agent {
  /** `local@domain`, lower-cased. */
  readonly address: string;
  constructor(
    address: string,
    readonly name: string = "",
  ) {
    this.address = address.toLowerCase();
  }

  get local(): string {
    return this.address.split("@", 1)[0];
  }

  get domain(): string {
    return this.address.slice(this.address.indexOf("@") + 1);
  }

  /** The address replies come from, which routes the next message back. */
  withToken(token: string): string {
    return `${this.local}+${token}@${this.domain}`;
  }

  /** The plus-address token in `addr` if it is this agent's address with one. */
  tokenOf(addr: string): string | null {
    const [local, domain] = partition(addr.toLowerCase(), "@");
    const [base, token, plus] = partition3(local, "+");
    if (domain !== this.domain || base !== this.local || !plus) return null;
    return token;
  }

  /** Whether `addr` is this agent's address, with or without a token. */
  owns(addr: string): boolean {
    const [local, domain] = partition(addr.toLowerCase(), "@");
    return domain === this.domain && partition(local, "+")[0] === this.local;
  }
}

function partition(value: string, sep: string): [string, string] {
  const at = value.indexOf(sep);
  return at < 0 ? [value, ""] : [value.slice(0, at), value.slice(at + sep.length)];
}

function partition3(value: string, sep: string): [string, string, boolean] {
  const at = value.indexOf(sep);
  return at < 0 ? [value, "", false] : [value.slice(0, at), value.slice(at + sep.length), true];
}

/** A mail address for the agent, lower-cased; an Error naming the fix otherwise
 * (kit/mail/rules.py `check_address`). */
export function checkAddress(value: string): string {
  const addr = value.trim().toLowerCase();
  const [local, domain] = partition(addr, "@");
  if (
    !addr.includes("@") ||
    !/^[a-z0-9][a-z0-9._-]{0,63}$/.test(local) ||
    !/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(domain)
  ) {
    throw new Error(
      `${JSON.stringify(value)} is not a mail address kit can use for the agent: write it as name@example.com (letters, digits, '.', '_' or '-' before the @, no '+')`,
    );
  }
  return addr;
}

/** A thread's plus-address token: random, lower-case base32 (mail is case-insensitive). */
export function newToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(TOKEN_BYTES));
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  let bits = 0;
  let value = 0;
  let out = "";
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

/** An email thread and the session that answers it. */
export interface Thread {
  session_id: string;
  token: string;
  participants: string[];
  replies: number;
}

/** What to do with one inbound message. */
export interface Decision {
  action: "new" | "continue" | "refuse";
  /** The thread it continues (`continue`). */
  thread?: Thread;
  reason?: Refusal;
}

/** Why `msg` must get no automatic reply (RFC 3834 §2 and common practice), if so. */
export function loopReason(msg: Inbound, agent: Agent): Refusal | null {
  const h = msg.headers;
  const auto = (h["auto-submitted"] ?? "").split(";", 1)[0].trim().toLowerCase();
  if (auto && auto !== "no") return "auto_submitted";
  if ("x-auto-response-suppress" in h) return "auto_response_suppress";
  if (BULK.has((h["precedence"] ?? "").trim().toLowerCase())) return "precedence";
  if ("list-id" in h) return "list";
  if (msg.return_path === "") return "null_sender";
  for (const addr of [msg.sender, msg.return_path ?? ""]) {
    if (SYSTEM_SENDERS.has(addr.split("@", 1)[0].split("+", 1)[0])) return "system_sender";
  }
  if (agent.owns(msg.sender) || (msg.return_path && agent.owns(msg.return_path))) return "own_address";
  return null;
}

/** The plus-address tokens the message was sent to. */
export function tokens(msg: Inbound, agent: Agent): string[] {
  return msg.recipients.map((a) => agent.tokenOf(a)).filter((t): t is string => t !== null);
}

/** The ids a reply points at, nearest first (`In-Reply-To`, then `References` from the newest). */
export function threadIds(msg: Inbound): string[] {
  return [...new Set([...msg.in_reply_to, ...[...msg.references].reverse()])];
}

export interface Lookups {
  /** Its Message-ID was taken before. */
  seen: boolean;
  /** The thread of the first token in `tokens`, null when there is none or it is unknown. */
  byToken: Thread | null;
  /** The thread of the first of `threadIds` kit knows. */
  byReference: Thread | null;
  /** The source's verdict on the sender (false: failed; null: the source gives none). */
  authenticated?: boolean | null;
}

/** Route `msg` (kit/mail/rules.py `decide`). */
export function decide(msg: Inbound, agent: Agent, look: Lookups): Decision {
  if (!msg.sender) return { action: "refuse", reason: "malformed" };
  if (look.authenticated === false) return { action: "refuse", reason: "unauthenticated" };
  const loop = loopReason(msg, agent);
  if (loop !== null) return { action: "refuse", reason: loop };
  if (!msg.recipients.some((a) => agent.owns(a))) return { action: "refuse", reason: "not_addressed" };
  if (look.seen) return { action: "refuse", reason: "duplicate" };
  if (tokens(msg, agent).length > 0) {
    if (look.byToken === null) return { action: "refuse", reason: "unknown_token" };
    return continued(msg, look.byToken);
  }
  if (look.byReference !== null) return continued(msg, look.byReference);
  if (isEmpty(msg)) return { action: "refuse", reason: "empty" };
  return { action: "new" };
}

function continued(msg: Inbound, thread: Thread): Decision {
  if (!thread.participants.includes(msg.sender)) return { action: "refuse", reason: "not_participant" };
  if (thread.replies >= MAX_REPLIES_PER_THREAD) return { action: "refuse", reason: "thread_cap" };
  if (isEmpty(msg)) return { action: "refuse", reason: "empty" };
  return { action: "continue", thread };
}

function isEmpty(msg: Inbound): boolean {
  return !stripQuotes(msg.text) && msg.attachments.length === 0;
}

/** `References` for a reply: at most MAX_REFERENCES, keeping the first (the thread's root)
 * and the newest. */
export function cappedReferences(ids: Iterable<string>): string[] {
  const refs = [...new Set(ids)];
  if (refs.length <= MAX_REFERENCES) return refs;
  return [refs[0], ...refs.slice(-(MAX_REFERENCES - 1))];
}
