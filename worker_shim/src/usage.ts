// Reading token usage out of a Messages API reply's body as it streams through the model
// route (kit/host/usage.py `_EventStream`, `_JsonMessage` and `_Usage`; workerd has framed
// the HTTP already). Fed the bytes after they were passed on, it reports each increase of
// the call's usage:
//
// - an SSE stream: `usage` of `message_start` (input, cache writes and reads, the first
//   output tokens) and of each `message_delta` (cumulative: output, and input or cache
//   counts when present); only `data:` lines that carry `"usage"` are decoded, and a line
//   over MAX_LINE_BYTES is content, skipped unread;
// - a JSON message: its `usage` once the body is complete (over MAX_JSON_BYTES, or not
//   JSON: `broken`, and the route cuts the reply, as kit's proxy closes its connection).

import { NO_TOKENS, total, type Tokens } from "./limits";

export const MAX_LINE_BYTES = 1024 * 1024;
export const MAX_JSON_BYTES = 16 * 1024 * 1024;

const NEWLINE = 0x0a;
const DATA = new TextEncoder().encode("data:");

/** One call's usage so far; reports each increase (`_Usage`). */
class Usage {
  private readonly seen = new Map<string, number>();
  private reported: Tokens = NO_TOKENS;

  constructor(private readonly onUsage: (grown: Tokens) => void) {}

  update(usage: unknown): void {
    if (usage === null || typeof usage !== "object" || Array.isArray(usage)) return;
    const counts: Record<string, unknown> = { ...(usage as Record<string, unknown>) };
    const breakdown = counts.cache_creation;
    if (breakdown !== null && typeof breakdown === "object" && !Array.isArray(breakdown)) {
      counts.ephemeral_1h_input_tokens = (breakdown as Record<string, unknown>).ephemeral_1h_input_tokens;
    }
    for (const [key, value] of Object.entries(counts)) {
      // Counts only grow within a call (message_delta's are cumulative).
      if (typeof value === "number" && Number.isInteger(value) && value >= 0) this.seen.set(key, Math.max(this.seen.get(key) ?? 0, value));
    }
    const now: Tokens = {
      input: this.seen.get("input_tokens") ?? 0,
      output: this.seen.get("output_tokens") ?? 0,
      cache_write: this.seen.get("cache_creation_input_tokens") ?? 0,
      cache_write_1h: this.seen.get("ephemeral_1h_input_tokens") ?? 0,
      cache_read: this.seen.get("cache_read_input_tokens") ?? 0,
    };
    const was = this.reported;
    const grown: Tokens = {
      input: now.input - was.input,
      output: now.output - was.output,
      cache_write: now.cache_write - was.cache_write,
      cache_write_1h: now.cache_write_1h - was.cache_write_1h,
      cache_read: now.cache_read - was.cache_read,
    };
    if (total(grown) !== 0 || grown.cache_write_1h !== 0) {
      this.reported = now;
      this.onUsage(grown);
    }
  }
}

/** The body of one reply that costs (a 200 to /v1/messages), read for usage. */
export interface BodyUsage {
  feed(data: Uint8Array): void;
  /** The body is complete. */
  finish(): void;
  /** Why the body cannot be read (null: all is well). */
  readonly broken: string | null;
}

/** The reader for a reply with `status` and `contentType` to a call that `costs` (not
 * count_tokens); null for a reply whose usage is not read: an error (not billed), a
 * count_tokens answer, a kind other than an event stream or JSON. */
export function replyUsage(costs: boolean, status: number, contentType: string | null, onUsage: (grown: Tokens) => void): BodyUsage | null {
  if (!costs || status !== 200) return null;
  const kind = (contentType ?? "").split(";", 1)[0].trim().toLowerCase();
  if (kind === "text/event-stream") return new EventStream(onUsage);
  if (kind === "application/json") return new JsonMessage(onUsage);
  return null;
}

class EventStream implements BodyUsage {
  readonly broken = null;
  private readonly usage: Usage;
  private line: Uint8Array[] = [];
  private lineBytes = 0;
  private skipping = false;
  private readonly decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

  constructor(onUsage: (grown: Tokens) => void) {
    this.usage = new Usage(onUsage);
  }

  feed(data: Uint8Array): void {
    let start = 0;
    for (let n = 0; n <= data.length; n++) {
      const end = data.indexOf(NEWLINE, start);
      if (end < 0) {
        if (!this.skipping) {
          this.keep(data.subarray(start));
          if (this.lineBytes > MAX_LINE_BYTES) {
            this.clear();
            this.skipping = true;
          }
        }
        return;
      }
      if (this.skipping) this.skipping = false;
      else {
        this.keep(data.subarray(start, end));
        this.eventLine(this.take());
      }
      this.clear();
      start = end + 1;
    }
  }

  finish(): void {}

  private keep(part: Uint8Array): void {
    if (part.length === 0) return;
    this.lineBytes += part.length;
    this.line.push(part.slice());
  }

  private clear(): void {
    this.line = [];
    this.lineBytes = 0;
  }

  private take(): Uint8Array {
    if (this.line.length === 1) return this.line[0];
    const out = new Uint8Array(this.lineBytes);
    let at = 0;
    for (const part of this.line) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  private eventLine(line: Uint8Array): void {
    if (line.length < DATA.length || !DATA.every((b, i) => line[i] === b)) return;
    let text: string;
    try {
      text = this.decoder.decode(line.subarray(DATA.length));
    } catch {
      return; // not UTF-8: not usage (Python's json.loads refuses it too)
    }
    if (!text.includes('"usage"')) return;
    let event: unknown;
    try {
      event = JSON.parse(text);
    } catch {
      return;
    }
    if (event === null || typeof event !== "object" || Array.isArray(event)) return;
    const ev = event as Record<string, unknown>;
    if (ev.type === "message_start" && ev.message !== null && typeof ev.message === "object" && !Array.isArray(ev.message)) {
      this.usage.update((ev.message as Record<string, unknown>).usage);
    } else if (ev.type === "message_delta") {
      this.usage.update(ev.usage);
    }
  }
}

class JsonMessage implements BodyUsage {
  broken: string | null = null;
  private readonly usage: Usage;
  private parts: Uint8Array[] = [];
  private size = 0;

  constructor(onUsage: (grown: Tokens) => void) {
    this.usage = new Usage(onUsage);
  }

  feed(data: Uint8Array): void {
    if (this.broken !== null) return;
    this.size += data.length;
    if (this.size > MAX_JSON_BYTES) {
      this.broken = "a JSON response over 16 MiB";
      this.parts = [];
      return;
    }
    this.parts.push(data.slice());
  }

  finish(): void {
    if (this.broken !== null) return;
    let message: unknown;
    try {
      const body = new Uint8Array(this.size);
      let at = 0;
      for (const part of this.parts) {
        body.set(part, at);
        at += part.length;
      }
      message = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(body));
    } catch {
      this.broken = "a 200 JSON response that is not JSON";
      return;
    }
    if (message !== null && typeof message === "object" && !Array.isArray(message)) this.usage.update((message as Record<string, unknown>).usage);
  }
}
