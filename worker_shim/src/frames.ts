// Session protocol v1 frames (docs/protocol.md §3, kit/protocol/frames.py): parse and
// validate a client frame, spell the host's frames. Sans I/O: text in, a frame or a
// ProtocolError out. The checks run in the order the protocol fixes: size, JSON, object with
// a string type, valid Unicode everywhere, known type, then the type's fields. JSON nested
// deeper than MAX_JSON_DEPTH is `bad_json`.

export const PROTOCOL_VERSION = 1;
/** A client frame larger than this (UTF-8 bytes) is `too_large`, close 1009. */
export const MAX_FRAME_BYTES = 256 * 1024;
/** The longest `user.text` (code points). */
export const MAX_TEXT_CHARS = 100_000;
/** The longest `client_msg_id` (code points). */
export const MAX_ID_CHARS = 128;
/** The longest `hello.token` (code points). */
export const MAX_TOKEN_CHARS = 512;
/** The largest seq: logs keep seqs as signed 64-bit integers. */
export const MAX_SEQ = 2n ** 63n - 1n;
/** The deepest nesting of arrays and objects a frame may have (the frame itself is level 1);
 * deeper is `bad_json`. kit/protocol/frames.py has no number of its own: `json.loads`
 * raises RecursionError at CPython's recursion limit, 1000, less the stack the host already
 * uses (a ping nested 932 deep still passes in `kit dev` on Python 3.11). The shim takes the
 * limit itself. */
export const MAX_JSON_DEPTH = 1000;

/** Stable error codes (kit/protocol/errors.py). */
export const E = {
  BAD_JSON: "bad_json",
  BAD_FRAME: "bad_frame",
  UNKNOWN_TYPE: "unknown_type",
  TOO_LARGE: "too_large",
  HELLO_REQUIRED: "hello_required",
  ALREADY_HELLO: "already_hello",
  UNAUTHORIZED: "unauthorized",
  UNKNOWN_SESSION: "unknown_session",
  SEQ_AHEAD: "seq_ahead",
  SLOW_CONSUMER: "slow_consumer",
  SHUTTING_DOWN: "shutting_down",
  INTERNAL: "internal",
} as const;

/** WebSocket close codes the host uses. */
export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  TOO_LARGE: 1009,
  INTERNAL: 1011,
  BAD_REQUEST: 4400,
  UNAUTHORIZED: 4401,
  UNKNOWN_SESSION: 4404,
  SLOW_CONSUMER: 4408,
} as const;

/** A frame that breaks the protocol; `closeCode` set when the connection must end. */
export class ProtocolError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly closeCode: number | null = null,
  ) {
    super(message);
  }
}

/** A seq as the client sent it: a number, or a bigint past 2^53 (never past MAX_SEQ). */
export type Seq = number | bigint;

export type ClientFrame =
  | { type: "hello"; token: string; lastSeq: Seq | null }
  | { type: "user"; clientMsgId: string; text: string }
  | { type: "ack"; seq: Seq }
  | { type: "interrupt" }
  | { type: "ping" };

const CLIENT_FRAME_TYPES = ["hello", "user", "ack", "interrupt", "ping"];

/** Empty or only whitespace as Python's `str.strip()` sees it (not JS `trim()`: Python also
 * strips U+001C–U+001F and U+0085, and keeps U+FEFF). */
const PY_BLANK = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

/** A JSON number literal that is not an integer (`3.0`, `1e2`): never a seq. */
class FloatLiteral {
  constructor(readonly value: number) {}
}

/** Parse and validate one client frame; throws ProtocolError with a stable code. */
export function parseClientFrame(text: string): ClientFrame {
  if (text.length > MAX_FRAME_BYTES || utf8Length(text) > MAX_FRAME_BYTES) {
    throw new ProtocolError(
      E.TOO_LARGE,
      `Frame is larger than ${MAX_FRAME_BYTES} bytes; split the message or shorten it.`,
      CLOSE.TOO_LARGE,
    );
  }
  checkDepth(text);
  let obj: unknown;
  try {
    obj = JSON.parse(text, reviveNumber);
  } catch (exc) {
    throw new ProtocolError(E.BAD_JSON, `Frame is not valid JSON: ${(exc as Error).message}.`);
  }
  if (!isObject(obj) || typeof obj.type !== "string") {
    throw new ProtocolError(E.BAD_FRAME, 'Frame must be a JSON object with a string "type".');
  }
  const kind = obj.type;
  checkUnicode(obj, CLIENT_FRAME_TYPES.includes(kind) ? kind : "frame");
  switch (kind) {
    case "hello": {
      const token = requireString(obj, "token", MAX_TOKEN_CHARS, "hello");
      const lastSeq = obj.last_seq ?? null;
      if (lastSeq !== null && !isSeq(lastSeq)) {
        throw new ProtocolError(E.BAD_FRAME, `hello.last_seq must be null or an integer from 0 to ${MAX_SEQ}.`);
      }
      return { type: "hello", token, lastSeq: lastSeq as Seq | null };
    }
    case "user": {
      const clientMsgId = requireString(obj, "client_msg_id", MAX_ID_CHARS, "user");
      const value = obj.text;
      if (typeof value !== "string" || PY_BLANK.test(value)) {
        throw new ProtocolError(E.BAD_FRAME, "user.text must be a non-empty string.");
      }
      if (codePoints(value, MAX_TEXT_CHARS) > MAX_TEXT_CHARS) {
        throw new ProtocolError(
          E.TOO_LARGE,
          `user.text is longer than ${MAX_TEXT_CHARS} characters; shorten the message.`,
          CLOSE.TOO_LARGE,
        );
      }
      return { type: "user", clientMsgId, text: value };
    }
    case "ack": {
      if (!isSeq(obj.seq)) {
        throw new ProtocolError(E.BAD_FRAME, `ack.seq must be an integer from 0 to ${MAX_SEQ}.`);
      }
      return { type: "ack", seq: obj.seq };
    }
    case "interrupt":
      return { type: "interrupt" };
    case "ping":
      return { type: "ping" };
  }
  throw new ProtocolError(
    E.UNKNOWN_TYPE,
    `Unknown frame type '${[...kind].slice(0, 40).join("")}'; expected hello, user, ack, interrupt or ping.`,
  );
}

/** Refuse text whose arrays and objects nest deeper than MAX_JSON_DEPTH (`bad_json`), before
 * it is parsed: one pass over the text, brackets inside strings skipped. Whatever else is
 * wrong with the text is left to JSON.parse, which answers `bad_json` too. */
function checkDepth(text: string): void {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: the next unit is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > MAX_JSON_DEPTH) {
        throw new ProtocolError(E.BAD_JSON, `Frame is not valid JSON: it nests deeper than ${MAX_JSON_DEPTH} levels.`);
      }
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
}

/** Whether `value` is a seq the protocol accepts (an integer literal from 0 to MAX_SEQ). */
export function isSeq(value: unknown): value is Seq {
  if (typeof value === "number") return Number.isSafeInteger(value) && value >= 0;
  if (typeof value === "bigint") return value >= 0n && value <= MAX_SEQ;
  return false;
}

// JSON.parse's source text access tells an integer literal from `3.0`, and keeps integers
// past 2^53 exact (as bigint) so that MAX_SEQ is checked on the literal, as Python does.
function reviveNumber(this: unknown, _key: string, value: unknown, context?: { source?: string }): unknown {
  if (typeof value !== "number") return value;
  const source = context?.source;
  if (source === undefined) return Number.isInteger(value) ? value : new FloatLiteral(value);
  if (!/^-?\d+$/.test(source)) return new FloatLiteral(value);
  if (Number.isSafeInteger(value)) return value;
  return source.length > 21 ? new FloatLiteral(value) : BigInt(source);
}

function requireString(obj: Record<string, unknown>, key: string, limit: number, frame: string): string {
  const value = obj[key];
  if (typeof value !== "string" || value === "") {
    throw new ProtocolError(E.BAD_FRAME, `${frame}.${key} must be a non-empty string.`);
  }
  if (codePoints(value, limit) > limit) {
    throw new ProtocolError(E.BAD_FRAME, `${frame}.${key} must be at most ${limit} characters.`);
  }
  return value;
}

/** Code points in `s` (Python's len), counted only when the UTF-16 length passes `limit`. */
function codePoints(s: string, limit: number): number {
  if (s.length <= limit) return s.length;
  let n = 0;
  for (const _ of s) n++;
  return n;
}

function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof FloatLiteral);
}

/** Where the first lone surrogate is in `s`, counted in code points (null: valid Unicode). */
function loneSurrogate(s: string): number | null {
  if (s.isWellFormed()) return null;
  let at = 0;
  for (const ch of s) {
    const unit = ch.charCodeAt(0);
    if (ch.length === 1 && unit >= 0xd800 && unit <= 0xdfff) return at;
    at++;
  }
  return null;
}

type Path = [string | number, Path] | null;

/** Refuse a frame holding a lone surrogate in any key or string value, naming the first one
 * found in the same order as kit/protocol/frames.py (depth-first, last container first). */
function checkUnicode(frame: Record<string, unknown>, name: string): void {
  const todo: Array<[Record<string, unknown> | unknown[], Path]> = [[frame, null]];
  while (todo.length > 0) {
    const [container, path] = todo.pop()!;
    const items: Array<[string | number, unknown]> = Array.isArray(container)
      ? container.map((v, i) => [i, v])
      : Object.entries(container);
    for (const [key, item] of items) {
      if (typeof key === "string") {
        const at = loneSurrogate(key);
        if (at !== null) {
          const where = path ? spell(name, path) : "the frame";
          throw new ProtocolError(
            E.BAD_FRAME,
            `A key in ${where} is not valid Unicode (a lone surrogate at character ${at}); send UTF-8 text.`,
          );
        }
      }
      if (typeof item === "string") {
        const at = loneSurrogate(item);
        if (at !== null) {
          throw new ProtocolError(
            E.BAD_FRAME,
            `${spell(name, [key, path])} is not valid Unicode (a lone surrogate at character ${at}); send UTF-8 text.`,
          );
        }
      } else if (Array.isArray(item) || isObject(item)) {
        todo.push([item, [key, path]]);
      }
    }
  }
}

function spell(name: string, path: Path): string {
  const parts: string[] = [];
  for (let p = path; p !== null; p = p[1]) {
    const part = p[0];
    parts.push(typeof part === "number" ? `[${part}]` : "." + [...part].slice(0, 40).join(""));
  }
  return name + parts.reverse().join("");
}

// --- host -> client ------------------------------------------------------------------------

export type ResumeMode = "none" | "resuming" | "pending";

/** One durable event as the log holds it; `data` is its JSON text. */
export interface EventRow {
  seq: number;
  kind: string;
  turn_id: string | null;
  data: string;
  ts: number;
}

export function welcomeFrame(sessionId: string, resume: ResumeMode, lastSeq: number): string {
  return JSON.stringify({ type: "welcome", protocol: PROTOCOL_VERSION, session_id: sessionId, resume, last_seq: lastSeq });
}

/** An event frame; the stored JSON text of `data` is spliced in as is. */
export function eventFrame(row: EventRow, replay: boolean): string {
  return (
    `{"type":"event","seq":${row.seq},"kind":${JSON.stringify(row.kind)},"data":${row.data},` +
    `"replay":${replay},"ts":${row.ts},"turn_id":${JSON.stringify(row.turn_id)}}`
  );
}

export function errorFrame(code: string, message: string): string {
  return JSON.stringify({ type: "error", code, message });
}

export const PONG = '{"type":"pong"}';

export function interruptAckFrame(turnId: string | null, interrupted: boolean): string {
  return JSON.stringify({ type: "interrupt_ack", turn_id: turnId, interrupted });
}
