// Test steps for kit's control API: requests with the API token, NDJSON read line by line.

import { SELF, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { API, AUTH } from "./helpers";

const LINE_TIMEOUT_MS = 10_000;

/** A control request with the API token. */
export function kit(method: string, path: string, body?: string): Promise<Response> {
  return SELF.fetch(`${API}/_kit${path}`, { method, headers: AUTH, body });
}

/** A control request's JSON answer, with its status. */
export async function kitJson(method: string, path: string, body?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const answer = await kit(method, path, body);
  return { status: answer.status, body: (await answer.json()) as Record<string, unknown> };
}

export type Line = { seq?: number; kind?: string; turn_id?: string | null; data?: Record<string, unknown>; ts?: number; end?: string; message?: string };

/** Every line of a (finite) NDJSON answer, parsed, and its raw text. */
export async function lines(answer: Response): Promise<{ items: Line[]; text: string }> {
  const text = await answer.text();
  return { items: text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Line), text };
}

/** An open NDJSON stream (a follow), read one line at a time. */
export class LineReader {
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly decoder = new TextDecoder();
  private buffer = "";
  /** Every line read, blank ones included. */
  readonly raw: string[] = [];

  constructor(answer: Response) {
    this.reader = answer.body!.getReader();
  }

  /** The next line, blank ones included ("" ends nothing); null when the stream ended. */
  async nextRaw(): Promise<string | null> {
    for (let reads = 0; reads < 100_000; reads++) {
      const end = this.buffer.indexOf("\n");
      if (end >= 0) {
        const line = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 1);
        this.raw.push(line);
        return line;
      }
      const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no line within 10 s")), LINE_TIMEOUT_MS));
      const chunk = await Promise.race([this.reader.read(), timeout]);
      if (chunk.done) return null;
      this.buffer += this.decoder.decode(chunk.value, { stream: true });
    }
    throw new Error("no line within 100 000 reads");
  }

  /** The next non-blank line, parsed. */
  async next(): Promise<Line> {
    for (let n = 0; n < 10_000; n++) {
      const line = await this.nextRaw();
      if (line === null) throw new Error("the stream ended");
      if (line !== "") return JSON.parse(line) as Line;
    }
    throw new Error("only blank lines");
  }

  /** Lines up to and including the one with seq `seq`. */
  async until(seq: number): Promise<Line[]> {
    const got: Line[] = [];
    for (let n = 0; n < 10_000; n++) {
      const line = await this.next();
      got.push(line);
      if (line.seq === seq || line.end !== undefined) return got;
    }
    throw new Error(`no seq ${seq} within 10 000 lines`);
  }

  async cancel(): Promise<void> {
    await this.reader.cancel();
  }
}

/** The control side of the session's current DO instance (its private members, for tests). */
export interface ControlInternals {
  control: { segmentMs: number; followers: Set<unknown>; registered: Promise<void> };
}

/** Run `fn` on the session's control side (in its current instance). */
export function onControl<T>(sessionId: string, fn: (internals: ControlInternals) => T | Promise<T>): Promise<T> {
  return runInDurableObject(env.SESSION.getByName(sessionId), (instance) => fn(instance as unknown as ControlInternals));
}
