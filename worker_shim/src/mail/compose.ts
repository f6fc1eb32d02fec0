// The reply to an inbound message: threaded, marked as automatic, a derived id. The port of
// kit/mail/compose.py; both replay kit/mail/golden/compose.jsonl. `composeReply` gives the
// headers as a reader sees them (RFC 2047 words decoded) and the body; `toRaw` writes the
// message as it goes out (CRLF, encoded words for non-ASCII, folded lines, the body in
// base64 when it is not short-lined ASCII).

import type { Inbound } from "./message";
import { cappedReferences, type Agent } from "./rules";
import { sha256 } from "../tokens";

const RE = /^\s*(re|aw|sv)\s*:/i;

export interface Reply {
  /** Header names and values as a reader sees them, in order. */
  headers: Array<[string, string]>;
  /** Names and addresses of From and To, for the raw form's encoding. */
  from: { name: string; address: string };
  to: { name: string; address: string };
  body: string;
}

/** `Re: subject`, without stacking `Re:`. */
export function replySubject(subject: string): string {
  const s = subject.trim();
  if (RE.test(s)) return s;
  return s ? `Re: ${s}` : "Re: your message";
}

/** The reply's `Message-ID` (no brackets): derived from the inbound id, so a reply sent
 * again after a crash carries the same id (where the platform keeps it). */
export async function replyMessageId(inboundId: string, agent: Agent): Promise<string> {
  return `kit-${(await sha256(inboundId)).slice(0, 32)}@${agent.domain}`;
}

/** `References` of the reply: the inbound's (or its `In-Reply-To`) then its id. */
export function replyReferences(msg: Pick<Inbound, "references" | "in_reply_to" | "message_id">): string[] {
  const parent = msg.references.length > 0 ? [...msg.references] : msg.in_reply_to.slice(0, 1);
  return cappedReferences([...parent, msg.message_id]);
}

/** Python's `email.utils.formataddr` as the header reads once decoded. */
export function formatAddr(name: string, address: string): string {
  if (!name) return address;
  if (/[\][\\()<>@,:;".]/.test(name)) return `"${name.replace(/([\\"])/g, "\\$1")}" <${address}>`;
  return `${name} <${address}>`;
}

/** What `compose` needs of the inbound message (kept by the session's DO until the reply). */
export type ReplyTo = Pick<Inbound, "message_id" | "sender" | "sender_name" | "subject" | "references" | "in_reply_to">;

/** The reply to `msg` carrying `answer`, from the thread's plus address. */
export async function composeReply(msg: ReplyTo, agent: Agent, token: string, answer: string, date: Date = new Date()): Promise<Reply> {
  const from = { name: agent.name, address: agent.withToken(token) };
  const to = { name: msg.sender_name, address: msg.sender };
  return {
    from,
    to,
    headers: [
      ["From", formatAddr(from.name, from.address)],
      ["To", formatAddr(to.name, to.address)],
      ["Subject", replySubject(msg.subject)],
      ["Date", date.toUTCString()],
      ["Message-ID", `<${await replyMessageId(msg.message_id, agent)}>`],
      ["In-Reply-To", `<${msg.message_id}>`],
      ["References", replyReferences(msg).map((i) => `<${i}>`).join(" ")],
      ["Auto-Submitted", "auto-replied"],
      ["X-Auto-Response-Suppress", "All"],
    ],
    body: answer.endsWith("\n") ? answer : answer + "\n",
  };
}

/** The reply as it goes out: RFC 5322 text with CRLF line ends. */
export function toRaw(reply: Reply): string {
  const lines: string[] = [];
  for (const [name, value] of reply.headers) {
    let raw: string;
    if (name === "From") raw = rawAddr(reply.from.name, reply.from.address);
    else if (name === "To") raw = rawAddr(reply.to.name, reply.to.address);
    else if (name === "Subject") raw = encodeWords(value);
    else raw = value;
    lines.push(fold(`${name}: ${raw}`));
  }
  const ascii = /^[\x00-\x7f]*$/.test(reply.body) && reply.body.split("\n").every((l) => l.length <= 998);
  lines.push("MIME-Version: 1.0", 'Content-Type: text/plain; charset="utf-8"');
  if (ascii) {
    lines.push("Content-Transfer-Encoding: 7bit", "", reply.body.replace(/\r?\n/g, "\r\n"));
  } else {
    lines.push("Content-Transfer-Encoding: base64", "", base64Lines(reply.body));
  }
  return lines.join("\r\n");
}

function rawAddr(name: string, address: string): string {
  if (!name) return address;
  if (/^[\x20-\x7e]*$/.test(name)) return formatAddr(name, address);
  return `${encodeWords(name)} <${address}>`;
}

/** `text` as RFC 2047 encoded words where it is not printable ASCII. */
function encodeWords(text: string): string {
  if (/^[\x20-\x7e]*$/.test(text)) return text;
  const words: string[] = [];
  let chunk = "";
  for (const ch of text) {
    // 45 bytes of UTF-8 make 60 base64 characters: each word stays under 76.
    if (new TextEncoder().encode(chunk + ch).length > 45) {
      words.push(chunk);
      chunk = "";
    }
    chunk += ch;
  }
  if (chunk) words.push(chunk);
  return words.map((w) => `=?utf-8?b?${base64(new TextEncoder().encode(w))}?=`).join(" ");
}

/** A header line folded at spaces so no line passes 78 characters where it can be helped. */
function fold(line: string): string {
  if (line.length <= 78) return line;
  const out: string[] = [];
  let current = "";
  for (const word of line.split(" ")) {
    if (current && current.length + 1 + word.length > 78) {
      out.push(current);
      current = " " + word;
    } else current = current ? `${current} ${word}` : word;
  }
  out.push(current);
  return out.join("\r\n");
}

function base64(bytes: Uint8Array): string {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

function base64Lines(text: string): string {
  const encoded = base64(new TextEncoder().encode(text.replace(/\r?\n/g, "\r\n")));
  const out: string[] = [];
  for (let i = 0; i < encoded.length; i += 76) out.push(encoded.slice(i, i + 76));
  return out.join("\r\n") + "\r\n";
}
