// The text a message gives the agent: its own words, without the quoted history. The port
// of kit/mail/text.py (and message.py's `html_to_text`); both replay
// kit/mail/golden/strip.jsonl and route.jsonl's turn texts.

import type { Attachment, Inbound } from "./message";

/** Longest body handed to the agent; the rest is cut with a note saying so. */
export const MAX_TURN_CHARS = 32_000;

const CUT = [
  /^-{2,}\s*Original Message\s*-{2,}\s*$/i,
  /^-{2,}\s*Forwarded message\s*-{2,}\s*$/i,
  /^_{10,}\s*$/,
  /^On\b.{0,200}\bwrote:\s*$/i,
  /^-- ?$/,
];
const ON_START = /^On\b/i;
const WROTE_END = /\bwrote:\s*$/i;

/** Code points in `text` (Python's `len`). */
function chars(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** `text` without quoted history and signature (kit/mail/text.py `strip_quotes`): cut at
 * the first line that starts a quote or a signature (`On … wrote:`, also over two lines;
 * `-----Original Message-----`; a line of underscores; `-- `), then drop lines starting
 * with `>`; trailing blank lines go. */
export function stripQuotes(text: string): string {
  const lines = text.replace(/\r\n/g, "\n").replace(/\r/g, "\n").split("\n");
  const kept: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (CUT.some((p) => p.test(line))) break;
    if (ON_START.test(line) && i + 1 < lines.length && WROTE_END.test(lines[i + 1]) && chars(line) + chars(lines[i + 1]) <= 300) break;
    if (line.startsWith(">")) continue;
    kept.push(line.trimEnd());
  }
  return kept.join("\n").replace(/^\n+/, "").replace(/\n+$/, "").trim();
}

/** What the agent reads for `msg` (kit/mail/text.py `turn_text`): who wrote, the subject,
 * the body without quotes, and the attachments (`saved`: for each, where it went — `saved
 * as PATH` — or why it did not, as `attachmentPlan` says; null: none were saved). */
export function turnText(msg: Inbound, saved: string[] | null = null): string {
  let body = stripQuotes(msg.text);
  const length = chars(body);
  if (length > MAX_TURN_CHARS) body = [...body].slice(0, MAX_TURN_CHARS).join("") + `\n[… cut: the message was ${length} characters]`;
  const sender = msg.sender_name ? `${msg.sender_name} <${msg.sender}>` : msg.sender;
  const parts = [`Email from ${sender}`, msg.subject ? `Subject: ${msg.subject}` : "", "", body];
  if (msg.attachments.length > 0) {
    parts.push("", "Attachments:");
    msg.attachments.forEach((a, i) => parts.push(attachmentLine(a, saved !== null && saved.length > 0 ? (saved[i] ?? null) : null)));
  }
  return parts
    .filter((p, i) => p !== "" || i >= 2)
    .join("\n")
    .trimEnd();
}

function attachmentLine(a: Attachment, where: string | null): string {
  return `- ${a.filename} (${a.content_type}, ${a.size} bytes): ${where || "not saved"}`;
}

/** Attachments saved per message; the rest are listed, not saved. */
export const MAX_ATTACHMENTS = 10;
/** The largest attachment saved. */
export const MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024;
/** A saved name's UTF-8 bytes at most, room left for ` (10)`: a session file's path takes at
 * most 255 bytes a part (kit/mail/text.py MAX_NAME_BYTES). */
export const MAX_NAME_BYTES = 240;
/** Python's `[^\w.\- ]+` on str: \w is a letter or number of any script, or `_` (Python's
 * \w leaves marks out, as \p{L}\p{N} do). */
const UNSAFE = /[^\p{L}\p{N}_.\- ]+/gu;

function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** Python's `str.strip(" .")`. */
function stripSpacesAndDots(text: string): string {
  return text.replace(/^[ .]+/, "").replace(/[ .]+$/, "");
}

/** Python's `str.rpartition(".")`: before the last dot, the dot, after it (no dot: "", "",
 * all of it). */
function rpartitionDot(text: string): [string, string, string] {
  const at = text.lastIndexOf(".");
  return at < 0 ? ["", "", text] : [text.slice(0, at), ".", text.slice(at + 1)];
}

/** A plain file name for an attachment's name (kit/mail/text.py `safe_filename`): its last
 * path part, only letters, digits, `.`, `-`, `_` and spaces, no leading dot, at most 100
 * characters and MAX_NAME_BYTES bytes (the extension kept). Shared with Python through golden/attachments.jsonl. */
export function safeFilename(name: string): string {
  const path = name.replaceAll("\\", "/");
  let base = stripSpacesAndDots(path.slice(path.lastIndexOf("/") + 1).replace(UNSAFE, "_"));
  const points = [...base];
  if (points.length > 100) {
    const [stem, dot, ext] = rpartitionDot(base);
    const extLength = [...ext].length;
    base = dot && extLength <= 10 ? [...stem].slice(0, 99 - extLength).join("") + dot + ext : points.slice(0, 100).join("");
  }
  for (let n = 0; n <= 100 && utf8Length(base) > MAX_NAME_BYTES; n++) {
    // one character off the stem (the extension kept), else off the end
    const [stem, dot, ext] = rpartitionDot(base);
    const stemPoints = [...stem];
    base = dot && stemPoints.length > 1 && [...ext].length <= 10 ? stemPoints.slice(0, -1).join("") + dot + ext : [...base].slice(0, -1).join("");
  }
  return base || "attachment";
}

/** For each attachment of `msg` (kit/mail/text.py `attachment_plan`): the file name to save
 * it as in `folder` (null: not saved) and the phrase the agent reads (`saved as
 * folder/name` or why not). At most MAX_ATTACHMENTS, each at most MAX_ATTACHMENT_BYTES;
 * names unique without regard to case (`a (2).txt` for a second `a.txt`). */
export function attachmentPlan(msg: Pick<Inbound, "attachments">, folder: string): Array<[string | null, string]> {
  const plan: Array<[string | null, string]> = [];
  const taken = new Set<string>();
  msg.attachments.forEach((a, n) => {
    if (n >= MAX_ATTACHMENTS) {
      plan.push([null, `not saved (more than ${MAX_ATTACHMENTS} attachments)`]);
      return;
    }
    if (a.size > MAX_ATTACHMENT_BYTES) {
      plan.push([null, `not saved (larger than ${Math.floor(MAX_ATTACHMENT_BYTES / 2 ** 20)} MiB)`]);
      return;
    }
    const first = safeFilename(a.filename);
    let name = first;
    const [stem, dot, ext] = rpartitionDot(first);
    for (let k = 2; k < MAX_ATTACHMENTS + 2; k++) {
      // one name per attachment at most
      if (!taken.has(name.toLowerCase())) break;
      name = dot ? `${stem} (${k})${dot}${ext}` : `${first} (${k})`;
    }
    taken.add(name.toLowerCase());
    plan.push([name, `saved as ${folder}/${name}`]);
  });
  return plan;
}

const TAG = /<[^>]*>/g;
const BLOCK = /<\s*(br|\/p|\/div|\/li|\/tr|\/h[1-6])\b[^>]*>/gi;
const DROP = /<\s*(script|style|head)\b.*?<\s*\/\s*\1\s*>/gis;
const QUOTE_BLOCK = /<\s*blockquote\b.*?<\s*\/\s*blockquote\s*>/gis;
/** Python's `str.splitlines` separators. */
const LINE_BREAKS = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/;

/** A plain reading of an HTML body: blocks become lines, quoted blocks are dropped. */
export function htmlToText(html: string): string {
  let text = html.replace(DROP, "").replace(QUOTE_BLOCK, "").replace(BLOCK, "\n").replace(TAG, "");
  text = unescapeHtml(text);
  // A trailing empty piece (which splitlines drops) goes with the final trim.
  return text
    .split(LINE_BREAKS)
    .map((line) => line.trim())
    .join("\n")
    .trim();
}

const NAMED: Record<string, string> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
  nbsp: "\u00a0",
  copy: "\u00a9",
  reg: "\u00ae",
  hellip: "\u2026",
  mdash: "\u2014",
  ndash: "\u2013",
  lsquo: "\u2018",
  rsquo: "\u2019",
  ldquo: "\u201c",
  rdquo: "\u201d",
  euro: "\u20ac",
  laquo: "\u00ab",
  raquo: "\u00bb",
  middot: "\u00b7",
  bull: "\u2022",
};

/** HTML character references: numeric ones, and the common named ones. */
function unescapeHtml(text: string): string {
  return text.replace(/&(#[xX][0-9a-fA-F]+|#[0-9]+|[a-zA-Z][a-zA-Z0-9]*);/g, (whole, ref: string) => {
    if (ref.startsWith("#")) {
      const code = ref[1] === "x" || ref[1] === "X" ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10);
      if (!Number.isFinite(code) || code <= 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return "\ufffd";
      return String.fromCodePoint(code);
    }
    return NAMED[ref] ?? NAMED[ref.toLowerCase()] ?? whole;
  });
}
