// HttpContainer: the `ctx.container` surface over HTTP, served by kit's container emulator
// (emulator/containers) while the shim runs in `wrangler dev --enable-containers=false`,
// where `ctx.container` is undefined. The Worker vars KIT_CONTAINER_EMULATOR (its URL, on
// loopback) and KIT_CONTAINER_EMULATOR_TOKEN (a secret, in .dev.vars) turn it on.
//
// workerd's `running`, `start()` and `signal()` are synchronous; over HTTP they are not. So
// `running` is this instance's last word on the container (`refresh()` asks the emulator, as
// a new instance does before it adopts a container an earlier one started), `start()` sends
// the start and every later call waits for it, and `signal()` is sent in the background.
//
// Outbound interception: `interceptAllOutboundHttp` asks the emulator to send the
// container's HTTP to the Worker's `/_egress/<DO id>` with a new token (EGRESS_TOKEN and
// EGRESS_URL headers); the DO (session.ts `emulatedEgress`) checks the token and passes the
// container's own request to a KitEgress binding, as Cloudflare's proxy does. The emulator
// makes `kit.internal` resolve inside the container; other hosts are not rehearsed (they do
// not resolve), nor HTTPS.

import type { ContainerLike, PortFetcher } from "./runtime";
import { randomToken } from "./tokens";

/** The headers the emulator puts on an intercepted request: this instance's token, and
 * the URL the container asked for. */
export const EGRESS_TOKEN = "x-kit-egress-token";
export const EGRESS_URL = "x-kit-egress-url";
/** The Worker's route the emulator delivers to: the DO's id in hex. */
export const EGRESS_ROUTE = /^\/_egress\/([0-9a-f]{64})$/;

/** One `monitor` long-poll waits at most this long (the emulator's MONITOR_LIMIT_S). */
const MONITOR_POLL_S = 60;
/** Long-polls before monitor() gives up (a day): every loop is bounded. */
const MAX_MONITOR_POLLS = 1440;
const EMULATOR_AUTH = "x-kit-emulator-authorization";
/** Polls in a row that may fail (transport error, 5xx) before monitor() gives up watching. */
const MAX_MONITOR_FAILURES = 5;
const MONITOR_RETRY_MS = 1_000;

/** How a container ended, as monitor() rejects with it (workerd names the code in its
 * message; the shim reads `exitCode` and `oom` first). */
export class ContainerExit extends Error {
  constructor(
    readonly exitCode: number | null,
    readonly oom: boolean,
  ) {
    super(`container exited with code ${exitCode ?? "unknown"}${oom ? " (out of memory)" : ""}`);
  }
}

/** Where the emulator is, for one Durable Object's container. */
export interface EmulatorAddress {
  url: string;
  token: string;
  /** The container's id at the emulator: the Durable Object's id. */
  id: string;
  /** The image a start uses (the emulator's default when absent). */
  image?: string;
  /** The image's entrypoint replaced (a rehearsal without Docker runs host programs). */
  entrypoint?: string[];
  /** This Worker's URL as the emulator reaches it (KIT_WORKER_URL): where it delivers the
   * container's intercepted requests. */
  worker?: string;
  /** Keep the token the emulator will deliver with (its hash, in the DO's storage). */
  egressToken?: (token: string) => Promise<void>;
}

export class HttpContainer implements ContainerLike {
  private isRunning = false;
  /** The start request in flight (or settled); later calls wait for it. */
  private started: Promise<void> = Promise.resolve();

  constructor(private readonly at: EmulatorAddress) {}

  /** Have the emulator deliver the container's outbound HTTP, from its next start on, to
   * the Worker's EGRESS_ROUTE with a new token, which `at.egressToken` keeps (in the DO's
   * storage: a later instance of the DO takes the deliveries, as the binding, plain data,
   * would reach it on Cloudflare). */
  async interceptAllOutboundHttp(_binding: Fetcher): Promise<void> {
    if (this.at.worker === undefined || this.at.egressToken === undefined) {
      throw new Error("Outbound interception needs KIT_WORKER_URL: where the emulator delivers requests.");
    }
    const token = "kit-egress-" + randomToken();
    const url = `${this.at.worker.replace(/\/$/, "")}/_egress/${encodeURIComponent(this.at.id)}`;
    await this.at.egressToken(token);
    const answer = await this.call("POST", "/intercept", JSON.stringify({ url, token }));
    if (answer.status !== 204) {
      const text = await answer.text();
      throw new Error(`The container emulator cannot intercept this container's HTTP (${answer.status}): ${text.slice(0, 500)}`);
    }
  }

  /** HTTPS is not rehearsed (no TLS is terminated): nothing to do. */
  async interceptOutboundHttps(_addr: string, _binding: Fetcher): Promise<void> {}

  get running(): boolean {
    return this.isRunning;
  }

  /** Ask the emulator whether the container runs (a new instance learns it so). */
  async refresh(): Promise<void> {
    await this.settledStart();
    const answer = await this.call("GET", "");
    if (answer.status !== 200) {
      await answer.body?.cancel();
      throw new Error(`The container emulator answered ${answer.status} to a status request.`);
    }
    this.isRunning = ((await answer.json()) as { running?: unknown }).running === true;
  }

  start(options?: ContainerStartupOptions): void {
    this.isRunning = true;
    const body: Record<string, unknown> = { env: options?.env ?? {}, instance: (options as { instance?: string } | undefined)?.instance };
    if (this.at.image !== undefined) body.image = this.at.image;
    if (this.at.entrypoint !== undefined) body.entrypoint = this.at.entrypoint;
    this.started = this.call("POST", "/start", JSON.stringify(body)).then(async (answer) => {
      if (answer.status === 201) {
        await answer.body?.cancel();
        return;
      }
      const text = await answer.text();
      this.isRunning = false;
      throw new Error(`The container did not start (${answer.status}): ${text.slice(0, 500)}`);
    });
    this.started.catch(() => {
      this.isRunning = false; // seen again by monitor() and every port fetch
    });
  }

  async monitor(): Promise<void> {
    await this.started;
    let failures = 0;
    for (let i = 0; i < MAX_MONITOR_POLLS; i++) {
      let answer: Response;
      try {
        answer = await this.call("GET", `/monitor?timeout_s=${MONITOR_POLL_S}`);
      } catch (exc) {
        // A failed poll is no exit: ask again (a moment later), a few times in a row at most.
        if (++failures > MAX_MONITOR_FAILURES) throw new Error(`Watching the container failed: ${String(exc)}`);
        await scheduler.wait(MONITOR_RETRY_MS);
        continue;
      }
      if (answer.status === 204) {
        failures = 0;
        continue;
      }
      if (answer.status >= 500 && ++failures <= MAX_MONITOR_FAILURES) {
        await answer.body?.cancel();
        await scheduler.wait(MONITOR_RETRY_MS);
        continue;
      }
      if (answer.status !== 200) {
        const text = await answer.text();
        throw new Error(`The container emulator answered ${answer.status} to a monitor: ${text.slice(0, 500)}`);
      }
      const exit = (await answer.json()) as { exit_code?: number | null; oom?: boolean };
      this.isRunning = false;
      if (exit.exit_code === 0) return;
      throw new ContainerExit(typeof exit.exit_code === "number" ? exit.exit_code : null, exit.oom === true);
    }
    throw new Error(`The container was still running after ${MAX_MONITOR_POLLS} monitor polls.`);
  }

  async destroy(_reason?: unknown): Promise<void> {
    await this.settledStart();
    const answer = await this.call("POST", "/destroy");
    await answer.body?.cancel();
    if (answer.status !== 204) throw new Error(`The container emulator answered ${answer.status} to a destroy.`);
    this.isRunning = false;
  }

  /** kit's rehearsal hook (`kit sandbox oom`): the emulator kills the container as at its
   * memory limit and answers once it died (exit 137, OOM), which monitor() then reports. */
  async oom(): Promise<void> {
    await this.settledStart();
    const answer = await this.call("POST", "/oom");
    if (answer.status === 200) {
      await answer.body?.cancel();
      return;
    }
    const text = await answer.text();
    let message = text.slice(0, 500);
    try {
      message = String((JSON.parse(text) as { message?: unknown }).message ?? message);
    } catch {
      // not JSON: the text says it
    }
    throw new Error(`The container emulator could not OOM-kill the container (${answer.status}): ${message}`);
  }

  signal(signo: number): void {
    void this.settledStart()
      .then(() => this.call("POST", "/signal", JSON.stringify({ signo })))
      .then((answer) => answer.body?.cancel())
      .catch((exc: unknown) => console.log(`signalling the container failed: ${String(exc)}`));
  }

  getTcpPort(port: number): PortFetcher {
    return {
      fetch: async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
        await this.started;
        const request = new Request(input, init);
        const path = new URL(request.url);
        const headers = new Headers(request.headers);
        headers.set(EMULATOR_AUTH, `Bearer ${this.at.token}`);
        return fetch(`${this.base()}/ports/${port}${path.pathname}${path.search}`, {
          method: request.method,
          headers,
          body: request.body,
          signal: init?.signal ?? null,
        });
      },
    };
  }

  private async settledStart(): Promise<void> {
    await this.started.catch(() => undefined);
  }

  private base(): string {
    return `${this.at.url.replace(/\/$/, "")}/containers/${encodeURIComponent(this.at.id)}`;
  }

  private call(method: string, path: string, body?: string): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.at.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    return fetch(`${this.base()}${path}`, { method, headers, body });
  }
}
