// Raw RFC 5322 mail → Inbound, the one form every mail source is reduced to: the port of
// kit/mail/message.py. Hand-written rather than a MIME library: it reads what kit's rules
// need (headers with RFC 2047 words decoded, the first text/plain part, else the first
// text/html one, attachments' names, sizes and bytes), and it decides as Python's `email` package
// does on the cases of kit/mail/golden/route.jsonl, which a library would not promise.

import { htmlToText } from "./text";

/** Largest raw message accepted (Cloudflare Email Routing's inbound limit). */
export const MAX_INBOUND_BYTES = 25 * 1024 * 1024;

/** MIME parts followed into at most this depth (deeper parts are not read). */
const MAX_DEPTH = 20;
/** Parts read at most (the rest are not read). */
const MAX_PARTS = 1_000;

/** Mail that cannot be taken: the message says why and what to change. */
export class MailError extends Error {
  override name = "MailError";
}

export interface Attachment {
  filename: string;
  content_type: string;
  size: number;
  /** The decoded bytes (saved as a session file: mail/handler.ts). */
  data: Uint8Array;
}

/** What kit reads of one inbound message (kit/mail/message.py `Inbound`). */
export interface Inbound {
  /** Without angle brackets. */
  message_id: string;
  /** The `From` address, lower-cased ("" when there is none). */
  sender: string;
  sender_name: string;
  /** Envelope recipients when the source gives them, else `To` and `Cc`; lower-cased. */
  recipients: string[];
  /** The envelope sender ("": the null path `<>`; null: unknown). */
  return_path: string | null;
  subject: string;
  in_reply_to: string[];
  references: string[];
  /** Every header, names lower-cased; a repeated header keeps its first value. */
  headers: Record<string, string>;
  /** The plain-text body (HTML reduced to text when there is no plain part). */
  text: string;
  attachments: Attachment[];
}

/** The ids in a `Message-ID`/`In-Reply-To`/`References` value, brackets removed, each once. */
export function messageIds(value: string | undefined | null): string[] {
  if (!value) return [];
  const found = [...value.matchAll(/<([^<>\s]+)>/g)].map((m) => m[1]);
  return [...new Set(found)];
}

const CONTROL = /[\x00-\x1f\x7f]+/g;

/** `value` with every run of control characters (CR, LF, NUL, tab...) one space: what
 * reaches a reply's header or the turn's first lines cannot add a line (kit/mail's
 * `one_line`). */
export function oneLine(value: string): string {
  return value.replace(CONTROL, " ").trim();
}

/** `[name, address]` of a single-address header value as written on the wire (encoded
 * words in the name decoded), the address lower-cased; `["", ""]` unless it holds exactly
 * one ASCII address and reads one way only (kit/mail's `address`): in
 * `alice@example.org <mallory@evil.test>`, `<alice@example.org>mallory@evil.test` or
 * `=?utf-8?q?alice=40example.org?=` mail software disagrees on who the sender is. */
export function address(value: string | undefined | null): [string, string] {
  if (!value) return ["", ""];
  const text = unfold(value);
  if (splitList(text).length !== 1) return ["", ""];
  let name: string;
  let spec: string;
  const open = outsideQuotes(text, "<");
  if (open >= 0) {
    const close = text.indexOf(">", open);
    if (close < 0) return ["", ""];
    if (text.slice(close + 1).replace(/\([^()]*\)/g, "").trim() !== "") return ["", ""];
    const phrase = text.slice(0, open).trim();
    if (/[@<>,;:[\]]/.test(phrase.replace(/"(?:[^"\\]|\\.)*"/g, ""))) return ["", ""];
    name = unquote(phrase);
    spec = text.slice(open + 1, close).trim();
  } else {
    const comment = /\(([^()]*)\)/.exec(text);
    spec = text.replace(/\([^()]*\)/g, "").trim();
    if (/[\s,;:<>]/.test(spec)) return ["", ""]; // a group (`undisclosed-recipients:;`) or a list
    name = comment === null ? "" : comment[1].trim();
  }
  if (!/^[\x21-\x7e]+$/.test(spec) || !/^[^@]+@[^@]+$/.test(spec)) return ["", ""];
  const decoded = decodeWords(name);
  if (/[\x00-\x1f\x7f]/.test(decoded)) return ["", ""]; // a line break hidden in the name
  return [decoded.trim(), spec.toLowerCase()];
}

/** The index of the first `char` outside double quotes, or -1. */
function outsideQuotes(text: string, char: string): number {
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\" && quoted) i++;
    else if (c === '"') quoted = !quoted;
    else if (c === char && !quoted) return i;
  }
  return -1;
}

function parseOne(value: string): [string, string] {
  const text = value.trim();
  const angle = /<([^<>]*)>\s*$/.exec(text) ?? /<([^<>]*)>/.exec(text);
  if (angle !== null) {
    const name = unquote(text.slice(0, angle.index).trim());
    return [name, angle[1].trim()];
  }
  const comment = /\(([^()]*)\)/.exec(text);
  const bare = text.replace(/\([^()]*\)/g, "").trim();
  if (/[\s,;:]/.test(bare)) return ["", ""]; // a group (`undisclosed-recipients:;`) or a list
  return [comment === null ? "" : comment[1].trim(), bare];
}

function unquote(name: string): string {
  if (name.length >= 2 && name.startsWith('"') && name.endsWith('"')) return name.slice(1, -1).replace(/\\(.)/g, "$1");
  return name;
}

/** Every address in address-list header values (`To`, `Cc`), lower-cased. */
export function addresses(values: string[]): string[] {
  const out: string[] = [];
  for (const value of values) {
    for (const item of splitList(value)) {
      const [, addr] = parseOne(item.replace(/^[^<>"@]*:/, "").replace(/;\s*$/, ""));
      if (addr.includes("@")) out.push(addr.trim().toLowerCase());
    }
  }
  return out;
}

/** Split at commas outside quotes and angle brackets. */
function splitList(value: string): string[] {
  const items: string[] = [];
  let current = "";
  let quoted = false;
  let angle = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === "\\" && quoted) {
      current += c + (value[i + 1] ?? "");
      i++;
      continue;
    }
    if (c === '"') quoted = !quoted;
    else if (!quoted && c === "<") angle++;
    else if (!quoted && c === ">") angle = Math.max(0, angle - 1);
    if (c === "," && !quoted && angle === 0) {
      items.push(current);
      current = "";
    } else current += c;
  }
  items.push(current);
  return items.map((s) => s.trim()).filter((s) => s !== "");
}

export interface Envelope {
  from?: string | null;
  to?: string[] | null;
}

/** Parse `raw`; MailError for mail kit cannot thread (too large, no `Message-ID`). */
export function parse(raw: Uint8Array, envelope: Envelope = {}): Inbound {
  if (raw.length > MAX_INBOUND_BYTES) {
    throw new MailError(`The message is ${raw.length} bytes; kit takes at most ${MAX_INBOUND_BYTES} (send large files as links).`);
  }
  const root = splitPart(raw);
  const headers: Record<string, string> = {};
  const froms: string[] = [];
  for (const [name, value] of root.headers) {
    const key = name.toLowerCase();
    if (key === "from") froms.push(value);
    if (key in headers) continue;
    headers[key] = oneLine(unfold(decodeWords(value)));
  }
  const ids = messageIds(headers["message-id"]);
  if (ids.length === 0) throw new MailError("The message has no Message-ID header; kit needs one to thread replies.");
  // Two From headers, or one kit reads two ways: no sender (refused as malformed).
  const [name, sender] = froms.length === 1 ? address(froms[0]) : ["", ""];
  let recipients: string[];
  const envTo = envelope.to ?? null;
  if (envTo !== null && envTo.length > 0) {
    recipients = [...new Set(envTo.map((a) => a.trim().toLowerCase()).filter((a) => a !== ""))];
  } else {
    recipients = [...new Set(addresses([headers["to"] ?? "", headers["cc"] ?? ""]))];
  }
  let returnPath: string | null;
  if (envelope.from !== undefined && envelope.from !== null) returnPath = stripBrackets(envelope.from.trim()).toLowerCase();
  else if ("return-path" in headers) returnPath = stripBrackets(headers["return-path"].trim()).trim().toLowerCase();
  else returnPath = null;
  const { text, attachments } = body(root);
  return {
    message_id: ids[0],
    sender,
    sender_name: name,
    recipients,
    return_path: returnPath,
    subject: headers["subject"] ?? "",
    in_reply_to: messageIds(headers["in-reply-to"]),
    references: messageIds(headers["references"]),
    headers,
    text,
    attachments,
  };
}

/** Python's `str.strip("<>")`. */
function stripBrackets(value: string): string {
  return value.replace(/^[<>]+/, "").replace(/[<>]+$/, "");
}

function unfold(value: string): string {
  return value.replace(/\r?\n[ \t]+/g, " ").trim();
}

// -- MIME ------------------------------------------------------------------------------------

interface Part {
  /** Raw header values (unfolded lines joined), in order. */
  headers: Array<[string, string]>;
  body: Uint8Array;
}

const LATIN1 = new TextDecoder("latin1");

/** Headers and body of one part: the headers end at the first empty line. */
function splitPart(raw: Uint8Array): Part {
  let end = -1;
  let bodyStart = raw.length;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== 10) continue;
    // an empty line: "\n\n" or "\n\r\n"
    if (raw[i + 1] === 10) {
      end = i;
      bodyStart = i + 2;
      break;
    }
    if (raw[i + 1] === 13 && raw[i + 2] === 10) {
      end = i;
      bodyStart = i + 3;
      break;
    }
  }
  if (raw[0] === 10 || (raw[0] === 13 && raw[1] === 10)) {
    end = 0; // no headers at all
    bodyStart = raw[0] === 10 ? 1 : 2;
  }
  const head = bytesToText(raw.subarray(0, end < 0 ? raw.length : end));
  const headers: Array<[string, string]> = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && headers.length > 0) {
      headers[headers.length - 1][1] += "\n" + line;
      continue;
    }
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    headers.push([line.slice(0, colon).trim(), line.slice(colon + 1).replace(/^[ \t]+/, "")]);
  }
  return { headers, body: raw.subarray(bodyStart) };
}

/** Header bytes as text: UTF-8 (RFC 6532), U+FFFD where they are not (as kit/mail). */
function bytesToText(bytes: Uint8Array): string {
  return new TextDecoder("utf-8").decode(bytes);
}

function header(part: Part, name: string): string | null {
  const found = part.headers.find(([n]) => n.toLowerCase() === name);
  return found === undefined ? null : unfold(found[1]);
}

interface Params {
  value: string;
  params: Record<string, string>;
}

/** `type/subtype; key=value; key="quoted value"`, the value lower-cased. */
function structured(value: string | null): Params {
  if (value === null) return { value: "", params: {} };
  const [first, ...rest] = splitParams(value);
  const params: Record<string, string> = {};
  for (const item of rest) {
    const eq = item.indexOf("=");
    if (eq <= 0) continue;
    const key = item.slice(0, eq).trim().toLowerCase();
    params[key] = unquote(item.slice(eq + 1).trim());
  }
  return { value: first.trim().toLowerCase(), params };
}

function splitParams(value: string): string[] {
  const out: string[] = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === "\\" && quoted) {
      current += c + (value[i + 1] ?? "");
      i++;
    } else if (c === '"') {
      quoted = !quoted;
      current += c;
    } else if (c === ";" && !quoted) {
      out.push(current);
      current = "";
    } else current += c;
  }
  out.push(current);
  return out;
}

function body(root: Part): { text: string; attachments: Attachment[] } {
  let plain: string | null = null;
  let html: string | null = null;
  const attachments: Attachment[] = [];
  let parts = 0;
  const walk = (part: Part, depth: number): void => {
    if (++parts > MAX_PARTS || depth > MAX_DEPTH) return;
    const type = structured(header(part, "content-type"));
    const ctype = /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+$/.test(type.value) ? type.value : "text/plain";
    if (ctype.startsWith("multipart/")) {
      const boundary = type.params["boundary"];
      if (boundary) for (const child of splitMultipart(part.body, boundary)) walk(splitPart(child), depth + 1);
      return;
    }
    if (ctype === "message/rfc822") {
      walk(splitPart(decodeTransfer(part)), depth + 1);
      return;
    }
    const disposition = structured(header(part, "content-disposition"));
    const dispositionValue = disposition.value === "" ? null : disposition.value;
    const rawName = disposition.params["filename"] ?? type.params["name"] ?? null;
    const filename = rawName === null ? null : decodeWords(rawName);
    if (dispositionValue === "attachment" || (filename && dispositionValue !== "inline") || (filename && !ctype.startsWith("text/"))) {
      const data = decodeTransfer(part);
      attachments.push({ filename: filename || "attachment", content_type: ctype, size: data.length, data });
      return;
    }
    if (ctype === "text/plain" && plain === null) plain = textOf(part, type.params["charset"]);
    else if (ctype === "text/html" && html === null) html = textOf(part, type.params["charset"]);
  };
  walk(root, 0);
  if (plain !== null) return { text: lines(plain), attachments };
  if (html !== null) return { text: lines(htmlToText(html)), attachments };
  return { text: "", attachments };
}

/** The body parts between `--boundary` lines (the preamble and epilogue dropped). */
function splitMultipart(bytes: Uint8Array, boundary: string): Uint8Array[] {
  const text = LATIN1.decode(bytes); // one char per byte: offsets are byte offsets
  const delimiter = "--" + boundary;
  const parts: Uint8Array[] = [];
  let start: number | null = null;
  let pos = 0;
  for (let n = 0; n < MAX_PARTS + 1 && pos <= text.length; n++) {
    const at = text.indexOf(delimiter, pos);
    if (at < 0) break;
    const lineStart = at === 0 || text[at - 1] === "\n";
    const after = at + delimiter.length;
    if (!lineStart) {
      pos = after;
      continue;
    }
    if (start !== null) {
      // the part ends before the line break that precedes the delimiter
      let end = at - 1;
      if (end > start && text[end - 1] === "\r") end--;
      parts.push(bytes.subarray(start, Math.max(start, end)));
    }
    if (text.startsWith("--", after)) return parts;
    const eol = text.indexOf("\n", after);
    if (eol < 0) return parts;
    start = eol + 1;
    pos = start;
  }
  if (start !== null && start < bytes.length) parts.push(bytes.subarray(start)); // no closing delimiter
  return parts;
}

/** A part's body with its Content-Transfer-Encoding undone. */
function decodeTransfer(part: Part): Uint8Array {
  const cte = (header(part, "content-transfer-encoding") ?? "").trim().toLowerCase();
  if (cte === "base64") return base64Bytes(LATIN1.decode(part.body));
  if (cte === "quoted-printable") return quotedPrintable(part.body);
  return part.body;
}

function textOf(part: Part, charset: string | undefined): string {
  return decodeCharset(decodeTransfer(part), charset);
}

/** Bytes in `charset` (UTF-8 where none is named, or where it is unknown to the runtime). */
export function decodeCharset(bytes: Uint8Array, charset: string | undefined): string {
  let label = (charset ?? "utf-8").trim().toLowerCase();
  if (label === "us-ascii" || label === "ascii") label = "utf-8";
  try {
    return new TextDecoder(label).decode(bytes);
  } catch {
    return new TextDecoder("utf-8").decode(bytes);
  }
}

function lines(text: string): string {
  return text.replace(/\r\n/g, "\n").replace(/\r/g, "\n");
}

function base64Bytes(text: string): Uint8Array {
  const clean = text.replace(/[^A-Za-z0-9+/]/g, "");
  const usable = clean.slice(0, clean.length - (clean.length % 4 === 1 ? 1 : 0));
  const padded = usable + "=".repeat((4 - (usable.length % 4)) % 4);
  try {
    const bin = atob(padded);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch {
    return new Uint8Array();
  }
}

function quotedPrintable(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(bytes.length);
  let n = 0;
  const hex = (c: number | undefined): number => {
    if (c === undefined) return -1;
    if (c >= 48 && c <= 57) return c - 48;
    if (c >= 65 && c <= 70) return c - 55;
    if (c >= 97 && c <= 102) return c - 87;
    return -1;
  };
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (c !== 61) {
      out[n++] = c;
      continue;
    }
    if (bytes[i + 1] === 10) {
      i += 1; // soft line break
      continue;
    }
    if (bytes[i + 1] === 13 && bytes[i + 2] === 10) {
      i += 2;
      continue;
    }
    const hi = hex(bytes[i + 1]);
    const lo = hex(bytes[i + 2]);
    if (hi >= 0 && lo >= 0) {
      out[n++] = hi * 16 + lo;
      i += 2;
    } else out[n++] = c;
  }
  return out.subarray(0, n);
}

/** RFC 2047 encoded words decoded; the white space between two of them dropped. */
export function decodeWords(value: string): string {
  const word = /=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=/g;
  const joined = value.replace(/(=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)\s+(?==\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)/g, "$1");
  return joined.replace(word, (whole, charset: string, encoding: string, text: string) => {
    const label = charset.split("*")[0];
    let bytes: Uint8Array;
    if (encoding.toLowerCase() === "b") bytes = base64Bytes(text);
    else bytes = quotedPrintable(new TextEncoder().encode(text.replace(/_/g, " ")));
    try {
      return new TextDecoder(label.toLowerCase()).decode(bytes);
    } catch {
      return whole;
    }
  });
}
