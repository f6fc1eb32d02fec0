// The sandbox seam: `ContainerLike` (the members of workerd's `ctx.container` the shim uses)
// and `ContainerRuntime`, which starts kit's runtime in it and speaks the runtime API
// (kit/protocol/runtime_api.py, docs/protocol.md §11) through `getTcpPort(8080)`.

import { FileRefused } from "./files";

/** What the shim needs of a container. In production it is `ctx.container`; under
 * `wrangler dev --enable-containers=false` it is an HttpContainer speaking to kit's
 * container emulator; in tests a fake that serves the runtime API. */
export interface ContainerLike {
  readonly running: boolean;
  /** Learn `running` afresh where it is not tracked by the platform (HttpContainer). */
  refresh?(): Promise<void>;
  start(options?: ContainerStartupOptions): void;
  /** Resolves when the container exits cleanly; rejects (with the exit code in the error)
   * when it exits abnormally. */
  monitor(): Promise<void>;
  destroy(reason?: unknown): Promise<void>;
  signal(signo: number): void;
  getTcpPort(port: number): PortFetcher;
  /** Push the container past its memory limit now (`kit sandbox oom`): a rehearsal hook of
   * kit's container emulator, which Cloudflare's `ctx.container` does not have. Resolves
   * once the container died (exit 137, OOM). */
  oom?(): Promise<void>;
  /** Outbound interception (workerd's Container; HttpContainer has none: a rehearsal's
   * container reaches the Worker on loopback). */
  interceptAllOutboundHttp?(binding: Fetcher): Promise<void>;
  interceptOutboundHttps?(addr: string, binding: Fetcher): Promise<void>;
}

/** What the shim uses of `getTcpPort(port)`: workerd's Fetcher has it. */
export interface PortFetcher {
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
}

/** The port `kit.runtime` listens on inside the container. */
export const RUNTIME_PORT = 8080;
/** How long a started runtime has to get ready, probes and the long wait together
 * (kit/host/fly_sandbox.py START_TIMEOUT_S, the deadline of kit's other remote sandboxes). */
export const READY_TIMEOUT_MS = 120_000;
/** The wait between probes of a runtime that does not answer yet, or not ready. */
const PROBE_WAIT_MS = 100;
/** The longest `?wait_s=` of one probe (the runtime's own cap, kit/runtime/server.py). */
const READY_WAIT_S = 120;
const INTERRUPT_TIMEOUT_MS = 10_000;
/** How long the runtime has to take one file (at most 10 MiB, over the container's own
 * network): past it the sandbox is taken for lost. */
const FILE_TIMEOUT_MS = 60_000;
/** The longest line of a turn's NDJSON stream (kit/host/runtime_client.py MAX_LINE_BYTES):
 * a longer one (or one that never ends) is a lost sandbox, not memory to grow into. */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

/** Container instance types (reference: cloudflare.md §1); a kit tier names one of them. */
export type InstanceType = "lite" | "basic" | "standard-1" | "standard-2" | "standard-3" | "standard-4";
const INSTANCE_TYPES: readonly string[] = ["lite", "basic", "standard-1", "standard-2", "standard-3", "standard-4"];

export function instanceType(tier: string): InstanceType {
  if (!INSTANCE_TYPES.includes(tier)) {
    throw new RuntimeLost(
      `Tier '${tier}' is no Cloudflare instance type; set KIT_SANDBOX_TIER to one of ${INSTANCE_TYPES.join(", ")}.`,
    );
  }
  return tier as InstanceType;
}

/** One line of the runtime's NDJSON stream: no seq yet, the host assigns it. */
export interface RuntimeEvent {
  kind: string;
  data: Record<string, unknown>;
}

/** The sandbox went away or broke the runtime API: the turn was cut (a lost sandbox,
 * docs/protocol.md §11). Recovery decides what follows. */
export class RuntimeLost extends Error {}

/** What the runtime says once ready. */
export interface RuntimeReady {
  resumed: boolean;
}

/** kit's runtime in one container, reached over the runtime API. */
export class ContainerRuntime {
  constructor(
    readonly container: ContainerLike,
    private readonly token: string,
  ) {}

  /** Start the container with the runtime's environment. RuntimeLost if it still runs: a
   * container that would not stop is never taken for a fresh one (its runtime holds
   * another token, and maybe a turn). */
  start(tier: string, env: Record<string, string>): void {
    if (this.container.running) {
      throw new RuntimeLost("The container of the last sandbox is still running after it was destroyed; a new one cannot start until it stops.");
    }
    this.container.start({ env, instance: instanceType(tier), enableInternet: false });
  }

  /** Wait until the runtime is ready, as kit/host/runtime_client.py `wait_ready` does: probe
   * `/healthz` until it answers, each answer a long wait (`?wait_s=`) for readiness, all
   * within `timeoutMs`. Ready is an answer for `sessionId` with a true `ready`. RuntimeLost
   * when the container stops (checked before every probe), the runtime answers for another
   * session, its agent stopped, or the time is up. */
  async ready(sessionId: string, timeoutMs: number = READY_TIMEOUT_MS): Promise<RuntimeReady> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.container.running) throw new RuntimeLost("The container stopped before its runtime was ready.");
      const left = deadline - Date.now();
      if (left <= 0) throw new RuntimeLost(`The runtime did not get ready in ${timeoutMs / 1000} s.`);
      const health = await this.health(Math.min(left / 1000, READY_WAIT_S), left + 1000);
      if (health !== null) {
        if (health.session_id !== sessionId) {
          throw new RuntimeLost(`The runtime's port answered for session ${JSON.stringify(health.session_id ?? null)}, not ${sessionId}.`);
        }
        if (truthy(health.ready)) return { resumed: truthy(health.resumed) };
        if (health.state === "stopped") throw new RuntimeLost("The runtime's agent stopped before it was ready; the container exits and says why.");
      }
      await scheduler.wait(Math.max(0, Math.min(PROBE_WAIT_MS, deadline - Date.now())));
    }
  }

  /** One probe: the runtime's health object, or null when nothing (usable) answered yet (no
   * connection, a status other than 200, a body that is no JSON object). */
  private async health(waitS: number, timeoutMs: number): Promise<Record<string, unknown> | null> {
    return await withTimeout(timeoutMs, async (signal) => {
      let answer: Response;
      try {
        answer = await this.call("GET", `/healthz?wait_s=${waitS.toFixed(3)}`, undefined, signal);
      } catch {
        return null;
      }
      if (answer.status !== 200) {
        await answer.body?.cancel();
        return null;
      }
      try {
        const body: unknown = await answer.json();
        return typeof body === "object" && body !== null && !Array.isArray(body) ? (body as Record<string, unknown>) : null;
      } catch {
        return null;
      }
    });
  }

  /** POST the turn; yield each runtime event as its NDJSON line arrives. Throws RuntimeLost
   * for a transport error, a non-200 or non-NDJSON answer, or a malformed line (not UTF-8,
   * not JSON, not an event, or longer than MAX_LINE_BYTES). */
  async *turn(turnId: string, text: string, recover: boolean): AsyncGenerator<RuntimeEvent> {
    let answer: Response;
    try {
      answer = await this.call("POST", "/v1/turns", JSON.stringify({ turn_id: turnId, text, recover }));
    } catch (exc) {
      throw new RuntimeLost(`The runtime could not be reached: ${String(exc)}.`);
    }
    const type = answer.headers.get("content-type") ?? "";
    if (answer.status !== 200 || !type.startsWith("application/x-ndjson") || answer.body === null) {
      await answer.body?.cancel();
      throw new RuntimeLost(`The runtime answered ${answer.status} ${type} to a turn.`);
    }
    try {
      for await (const line of ndjsonLines(answer.body)) yield parseLine(line);
    } catch (exc) {
      if (exc instanceof RuntimeLost) throw exc;
      throw new RuntimeLost(`The runtime's stream broke: ${String(exc).replace(/\.$/, "")}.`);
    }
  }

  /** Write `data` at `path` in the sandbox's workspace (`PUT /v1/files?path=`, the
   * runtime's rules: docs/protocol.md §11). RuntimeLost when the runtime cannot be reached
   * or does not answer within FILE_TIMEOUT_MS (a lost sandbox); FileRefused when it answers
   * other than 204 (a bad path, or a folder on it that is a link: the sandbox lives on). */
  async putFile(path: string, data: Uint8Array): Promise<void> {
    const answer = await withTimeout(FILE_TIMEOUT_MS, async (signal) => {
      try {
        const headers = { authorization: `Bearer ${this.token}`, "content-type": "application/octet-stream" };
        const url = `http://runtime/v1/files?path=${encodeURIComponent(path)}`;
        const got = await this.container.getTcpPort(RUNTIME_PORT).fetch(url, { method: "PUT", headers, body: data, signal });
        return { status: got.status, text: got.status === 204 ? "" : (await got.text()).slice(0, 300) };
      } catch (exc) {
        throw new RuntimeLost(`The runtime could not be reached to put the file ${path}: ${String(exc)}.`);
      }
    });
    if (answer.status !== 204) throw new FileRefused(`the runtime answered ${answer.status}: ${answer.text}`);
  }

  /** Ask the runtime to stop the running turn; whether it did. */
  async interrupt(): Promise<boolean> {
    return await withTimeout(INTERRUPT_TIMEOUT_MS, async (signal) => {
      try {
        const answer = await this.call("POST", "/v1/interrupt", "{}", signal);
        if (answer.status !== 202) {
          await answer.body?.cancel();
          return false;
        }
        return ((await answer.json()) as { interrupted?: boolean }).interrupted === true;
      } catch {
        return false;
      }
    });
  }

  private call(method: string, path: string, body?: string, signal?: AbortSignal): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    return this.container.getTcpPort(RUNTIME_PORT).fetch(`http://runtime${path}`, { method, headers, body, signal });
  }
}

/** The lines of an NDJSON body as they arrive, blank ones skipped, the last one with or
 * without its newline. Linear in the bytes read: each byte is looked at once, and a line's
 * pieces are joined once it is complete. RuntimeLost for a line longer than `maxLineBytes`
 * (before more of it is kept); a TypeError for one that is not UTF-8 (Python decodes
 * strictly too). */
export async function* ndjsonLines(body: ReadableStream<Uint8Array>, maxLineBytes: number = MAX_LINE_BYTES): AsyncGenerator<string> {
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  let pieces: Uint8Array[] = [];
  let size = 0;
  const keep = (piece: Uint8Array): void => {
    size += piece.length;
    if (size > maxLineBytes) {
      throw new RuntimeLost(`The runtime sent a line longer than ${maxLineBytes} bytes.`);
    }
    if (piece.length > 0) pieces.push(piece);
  };
  const line = (): string => {
    let bytes = pieces.length === 1 ? pieces[0] : new Uint8Array(size);
    if (pieces.length > 1) {
      let at = 0;
      for (const piece of pieces) {
        bytes.set(piece, at);
        at += piece.length;
      }
    } else if (pieces.length === 0) {
      bytes = new Uint8Array(0);
    }
    pieces = [];
    size = 0;
    return decoder.decode(bytes);
  };
  for await (const chunk of body) {
    let start = 0;
    for (let newline = chunk.indexOf(0x0a); newline >= 0; newline = chunk.indexOf(0x0a, start)) {
      keep(chunk.subarray(start, newline));
      start = newline + 1;
      const text = line();
      if (!ASCII_BLANK.test(text)) yield text;
    }
    keep(chunk.subarray(start));
  }
  const last = line();
  if (!ASCII_BLANK.test(last)) yield last;
}

/** `work` with a signal that aborts after `ms`; the timer is cleared as soon as the work
 * ends (AbortSignal.timeout's would stay pending, and hold the Durable Object in memory). */
async function withTimeout<T>(ms: number, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`timed out after ${ms} ms`)), ms);
  try {
    return await work(controller.signal);
  } finally {
    clearTimeout(timer);
  }
}

/** Empty or only what Python's `bytes.strip()` strips. */
const ASCII_BLANK = /^[ \t\n\r\v\f]*$/;

/** Python's truthiness of a decoded JSON value. */
function truthy(value: unknown): boolean {
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === "object" && value !== null) return Object.keys(value).length > 0;
  return Boolean(value);
}

function parseLine(line: string): RuntimeEvent {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch {
    throw new RuntimeLost(`The runtime sent a line that is not JSON: ${line.slice(0, 200)}`);
  }
  if (typeof obj !== "object" || obj === null || typeof (obj as { kind?: unknown }).kind !== "string") {
    throw new RuntimeLost("The runtime sent an event that is not an object with a string kind.");
  }
  const { kind, data } = obj as { kind: string; data?: unknown };
  const isObj = typeof data === "object" && data !== null && !Array.isArray(data);
  return { kind, data: isObj ? (data as Record<string, unknown>) : {} };
}
