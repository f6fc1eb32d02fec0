// Replays kit's golden protocol transcripts (kit/protocol/golden/*.jsonl) against the shim,
// with the matching rules of kit/protocol/golden.py and the driver of tests/host/wsdriver.py.

import { SELF } from "cloudflare:test";

const FRAME_TIMEOUT_MS = 10_000;
const MAX_REPEAT = 100_000;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface Step {
  action: "connect" | "send" | "send_raw" | "expect" | "expect_close" | "ignore";
  value: Json;
  repeat: boolean;
}

/** The steps of a transcript's text (notes dropped). */
export function parseGolden(text: string): Step[] {
  const steps: Step[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const obj = JSON.parse(line) as Record<string, Json>;
    if ("note" in obj) continue;
    const keys = Object.keys(obj).filter((k) => k !== "repeat");
    if (keys.length !== 1) throw new Error(`golden line with keys ${keys.join(", ")}: ${line.slice(0, 100)}`);
    steps.push({ action: keys[0] as Step["action"], value: obj[keys[0]], repeat: obj.repeat === true });
  }
  return steps;
}

/** `value` with "$name" strings replaced from `vars`. */
export function substitute(value: Json, vars: Record<string, Json>): Json {
  if (typeof value === "string" && value.startsWith("$") && value.slice(1) in vars) return vars[value.slice(1)];
  if (Array.isArray(value)) return value.map((v) => substitute(v, vars));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, vars)]));
  }
  return value;
}

/** golden.py `matches`: "*" is anything, objects match key by key, the rest by equality. */
export function matches(pattern: Json, actual: Json, vars: Record<string, Json>): boolean {
  const p = substitute(pattern, vars);
  if (p === "*") return true;
  if (p !== null && typeof p === "object" && !Array.isArray(p)) {
    if (actual === null || typeof actual !== "object" || Array.isArray(actual)) return false;
    return Object.entries(p).every(([k, v]) => k in actual && matches(v, actual[k], vars));
  }
  return JSON.stringify(p) === JSON.stringify(actual);
}

/** One client socket to the shim, its frames queued as they arrive. */
export class Driver {
  private readonly frames: Json[] = [];
  private closeCode: number | null = null;
  private wake: (() => void) | null = null;

  private constructor(readonly ws: WebSocket) {
    ws.addEventListener("message", (ev) => {
      this.frames.push(JSON.parse(ev.data as string) as Json);
      this.wake?.();
    });
    ws.addEventListener("close", (ev) => {
      this.closeCode = ev.code;
      this.wake?.();
    });
  }

  static async open(sessionId: string, headers: Record<string, string> = {}): Promise<Driver> {
    const answer = await SELF.fetch(`http://shim.test/v1/sessions/${sessionId}/ws`, { headers: { upgrade: "websocket", ...headers } });
    if (answer.webSocket === null) throw new Error(`upgrade answered ${answer.status}: ${await answer.text()}`);
    answer.webSocket.accept();
    return new Driver(answer.webSocket);
  }

  send(text: string): void {
    this.ws.send(text);
  }

  /** The next frame (waits at most FRAME_TIMEOUT_MS). */
  async recv(): Promise<Json> {
    await this.until(() => this.frames.length > 0, "a frame");
    return this.frames.shift()!;
  }

  pushBack(frame: Json): void {
    this.frames.unshift(frame);
  }

  /** The close code the host sent (frames before the close are dropped). */
  async closed(): Promise<number> {
    await this.until(() => this.closeCode !== null, "the close");
    return this.closeCode!;
  }

  /** Frames received so far and not taken. */
  pending(): Json[] {
    return [...this.frames];
  }

  close(): void {
    try {
      this.ws.close(1000, "done");
    } catch {
      // closed already
    }
  }

  private async until(ready: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + FRAME_TIMEOUT_MS;
    while (!ready()) {
      if (this.closeCode !== null && what === "a frame") throw new Error(`socket closed (${this.closeCode}) while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${FRAME_TIMEOUT_MS} ms`);
      let timer: ReturnType<typeof setTimeout> | null = null;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        timer = setTimeout(resolve, left);
      });
      if (timer !== null) clearTimeout(timer);
      this.wake = null;
    }
  }
}

/** Replay a transcript; throws with the step and frame on the first mismatch. */
export async function replayGolden(name: string, text: string, sessionId: string, vars: Record<string, Json>): Promise<void> {
  let driver: Driver | null = null;
  const ignored: Json[] = [];
  const isIgnored = (frame: Json) => ignored.some((p) => matches(p, frame, vars));
  try {
    for (const [i, step] of parseGolden(text).entries()) {
      const where = `${name} step ${i + 1} (${step.action} ${JSON.stringify(step.value).slice(0, 120)})`;
      if (step.action === "ignore") {
        ignored.push(step.value);
      } else if (step.action === "connect") {
        driver?.close();
        driver = await Driver.open(sessionId);
      } else if (driver === null) {
        throw new Error(`${where}: no connection`);
      } else if (step.action === "send") {
        driver.send(JSON.stringify(substitute(step.value, vars)));
      } else if (step.action === "send_raw") {
        driver.send(step.value as string);
      } else if (step.action === "expect") {
        let frame = await driver.recv();
        for (let n = 0; n < MAX_REPEAT && isIgnored(frame); n++) frame = await driver.recv();
        if (!matches(step.value, frame, vars)) throw new Error(`${where}: got ${JSON.stringify(frame).slice(0, 300)}`);
        if (step.repeat) {
          for (let n = 0; n < MAX_REPEAT; n++) {
            const next = await driver.recv();
            if (isIgnored(next)) continue;
            if (!matches(step.value, next, vars)) {
              driver.pushBack(next);
              break;
            }
          }
        }
      } else if (step.action === "expect_close") {
        const code = await driver.closed();
        if (code !== step.value) throw new Error(`${where}: closed with ${code}`);
      }
    }
  } finally {
    driver?.close();
  }
}
