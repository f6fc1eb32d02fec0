// The sandbox seam: `ContainerLike` (the members of workerd's `ctx.container` the shim uses)
// and `ContainerRuntime`, which starts kit's runtime in it and speaks the runtime API
// (kit/protocol/runtime_api.py, docs/protocol.md §11) through `getTcpPort(8080)`.

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
}

/** What the shim uses of `getTcpPort(port)`: workerd's Fetcher has it. */
export interface PortFetcher {
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
}

/** The port `kit.runtime` listens on inside the container. */
export const RUNTIME_PORT = 8080;
/** Probes of /healthz before the runtime answers at all (each one a short wait apart). */
const MAX_PROBES = 600;
const PROBE_WAIT_MS = 100;
/** The one long wait for readiness once the runtime answers (`?wait_s=`, at most 120). */
const READY_WAIT_S = 120;
const INTERRUPT_TIMEOUT_MS = 10_000;

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

  /** Start the container (if it is not running) with the runtime's environment. */
  start(tier: string, env: Record<string, string>): void {
    if (this.container.running) return;
    this.container.start({ env, instance: instanceType(tier), enableInternet: false });
  }

  /** Wait until the runtime is ready (probe until it answers, then one long wait). */
  async ready(): Promise<RuntimeReady> {
    for (let i = 0; i < MAX_PROBES; i++) {
      let answer: Response;
      try {
        answer = await this.call("GET", `/healthz?wait_s=${READY_WAIT_S}`);
      } catch (exc) {
        if (!this.container.running) throw new RuntimeLost(`The container stopped before its runtime answered: ${String(exc)}.`);
        await scheduler.wait(PROBE_WAIT_MS);
        continue;
      }
      if (answer.status === 503) {
        await answer.body?.cancel();
        await scheduler.wait(PROBE_WAIT_MS);
        continue;
      }
      if (answer.status !== 200) throw new RuntimeLost(`The runtime's /healthz answered ${answer.status}.`);
      const body = (await answer.json()) as { ready?: boolean; resumed?: boolean };
      if (body.ready === false) continue;
      return { resumed: body.resumed === true };
    }
    throw new RuntimeLost(`The runtime did not become ready after ${MAX_PROBES} probes.`);
  }

  /** POST the turn; yield each runtime event as its NDJSON line arrives. Throws RuntimeLost
   * for a transport error, a non-200 or non-NDJSON answer, or a malformed line. */
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
    const decoder = new TextDecoder();
    let buffered = "";
    try {
      for await (const chunk of answer.body) {
        buffered += decoder.decode(chunk, { stream: true });
        let newline: number;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          if (line.trim() !== "") yield parseLine(line);
        }
      }
    } catch (exc) {
      if (exc instanceof RuntimeLost) throw exc;
      throw new RuntimeLost(`The runtime's stream broke: ${String(exc)}.`);
    }
    if (buffered.trim() !== "") yield parseLine(buffered);
  }

  /** Ask the runtime to stop the running turn; whether it did. */
  async interrupt(): Promise<boolean> {
    try {
      const answer = await this.call("POST", "/v1/interrupt", "{}", AbortSignal.timeout(INTERRUPT_TIMEOUT_MS));
      if (answer.status !== 202) {
        await answer.body?.cancel();
        return false;
      }
      return ((await answer.json()) as { interrupted?: boolean }).interrupted === true;
    } catch {
      return false;
    }
  }

  private call(method: string, path: string, body?: string, signal?: AbortSignal): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    return this.container.getTcpPort(RUNTIME_PORT).fetch(`http://runtime${path}`, { method, headers, body, signal });
  }
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
