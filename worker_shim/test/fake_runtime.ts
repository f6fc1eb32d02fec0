// A fake container for tests: a real implementation of ContainerLike whose port 8080
// serves kit's runtime API (docs/protocol.md §11) with canned events, the way the offline
// model answers in `kit dev`: a few text_delta, one assistant, one result. A container can
// be made to die at a chosen point (Death): before its runtime is ready, or mid-stream.

import type { ContainerLike } from "../src/runtime";

export interface RuntimeEventLine {
  kind: string;
  data: Record<string, unknown>;
}

/** The canned answer to a turn's text: what the golden transcripts expect of one turn. */
export function cannedTurn(text: string): RuntimeEventLine[] {
  const answer = `You said: ${text}. How can I help?`;
  const words = answer.match(/\S+\s*/g) ?? [answer];
  return [
    ...words.map((w) => ({ kind: "text_delta", data: { text: w } })),
    { kind: "assistant", data: { text: answer, message_id: "msg_fake_1" } },
    {
      kind: "result",
      data: {
        is_error: false, subtype: "success", text: answer, num_turns: 1, duration_ms: 1,
        stop_reason: "end_turn", total_cost_usd: 0, usage: {},
      },
    },
  ];
}

/** What a recovered turn answers (`recover: true`): the runtime carried the turn on in a
 * new sandbox. */
export function recoveredTurn(text: string): RuntimeEventLine[] {
  return cannedTurn(`${text} (recovered)`);
}

/** A turn that runs a tool before it answers: a text_delta, tool_use, tool_result, then
 * the canned answer. */
export function toolTurn(text: string): RuntimeEventLine[] {
  return [
    { kind: "text_delta", data: { text: "Let me look. " } },
    { kind: "tool_use", data: { id: "toolu_1", name: "Bash", input: { command: "ls" } } },
    { kind: "tool_result", data: { tool_use_id: "toolu_1", content: "a.txt", is_error: false } },
    ...cannedTurn(text),
  ];
}

/** The default script: the canned answer, or the recovered one for `recover: true`. */
export function cannedOrRecovered(text: string, recover: boolean): RuntimeEventLine[] {
  return recover ? recoveredTurn(text) : cannedTurn(text);
}

/** How one started container dies: before its runtime is ready (`start`), as it is sent a
 * file (`file`), or after it streamed `after` lines of a turn (`stream`), with exit code
 * `code` (and `oom`). */
export type Death =
  | { at: "start"; code: number }
  | { at: "file"; code: number }
  | { at: "stream"; after: number; code: number; oom?: boolean; /** close the stream cleanly first */ close?: boolean };

/** How long the fake runtime takes to answer /v1/interrupt. */
const INTERRUPT_DELAY_MS = 50;

/** What `/healthz` answers to probe `probe` (0-based) of the container's start `start`
 * (0-based): a body (status 200) or a Response; the container may be made to exit first. */
export type HealthScript = (fake: FakeContainer, start: number, probe: number) => Record<string, unknown> | Response;

export class FakeContainer implements ContainerLike {
  running = false;
  /** Every start's options, in order. */
  readonly starts: ContainerStartupOptions[] = [];
  /** Every turn request the runtime received. */
  readonly turns: Array<{ turn_id: string; text: string; recover: boolean }> = [];
  /** Every file the runtime took (`PUT /v1/files`): its path and bytes, the start it came
   * to (0-based), and how many turns that runtime had been posted before it. */
  readonly files: Array<{ path: string; data: Uint8Array; start: number; turnsBefore: number }> = [];
  /** Overrides the runtime's answer to a file (default: 204, kept in `files`). */
  fileAnswer: ((path: string) => Response | null) | null = null;
  /** Turns posted to the container started now. */
  private turnsHere = 0;
  /** With a gate: lines of a turn sent before the stream waits on it. */
  holdAfter = 0;
  /** Overrides what `/healthz` answers (default: ready, for the session it was started for). */
  health: HealthScript | null = null;
  /** `/healthz` still answers (through `health`) once the container stopped, as a proxy in
   * front of it might. */
  answersWhenStopped = false;
  /** Overrides the runtime's answer to `/v1/interrupt` (default: whether a turn is held). */
  interruptAnswer: boolean | null = null;
  /** Overrides a turn's answer: the raw NDJSON body (default: the script's lines). */
  rawTurn: ((turn: { turn_id: string; text: string; recover: boolean }) => ReadableStream<Uint8Array>) | null = null;
  /** Turns refused with 409 because another was still running (as kit's runtime does). */
  busyRefusals = 0;
  /** A turn runs in the runtime now: posted, and neither finished nor its container gone.
   * The runtime carries a turn on when its client goes away, as kit's runtime does. */
  private busy = false;
  private probes = 0;
  private token: string | null = null;
  /** KIT_SESSION_ID of the last start. */
  sessionId: string | null = null;
  /** A gated turn's stream is open and waits on the gate. */
  private held = false;
  /** How the container started now dies, if it does. */
  private death: Death | null = null;
  private readonly open = new Set<ReadableStreamDefaultController<Uint8Array>>();
  private exits: Array<(code: number, oom: boolean) => void> = [];

  /** `script` answers a turn (its text, its recover flag); with `gate`, the turn's stream
   * stops after `holdAfter` lines until the gate resolves, so a test can look at a turn in
   * flight; `deaths[i]` is how the (i+1)th started container dies (none: it lives). */
  constructor(
    private readonly script: (text: string, recover: boolean) => RuntimeEventLine[] = cannedOrRecovered,
    private readonly gate: Promise<void> | null = null,
    private readonly deaths: Death[] = [],
  ) {}

  start(options?: ContainerStartupOptions): void {
    if (this.running) throw new Error("start() on a running container");
    this.death = this.deaths[this.starts.length] ?? null;
    this.starts.push(options ?? {});
    const config = options?.env?.KIT_RUNTIME_CONFIG_JSON;
    const parsed = config === undefined ? {} : (JSON.parse(config) as { runtime_token?: string; session_id?: string });
    this.token = parsed.runtime_token ?? null;
    this.sessionId = parsed.session_id ?? null;
    this.probes = 0;
    this.turnsHere = 0;
    this.busy = false;
    this.running = true;
  }

  monitor(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.exits.push((code, oom) =>
        code === 0 ? resolve() : reject(Object.assign(new Error(`Container exited with code ${code}`), { exitCode: code, oom })),
      );
    });
  }

  /** The container process ends with `code` (137: SIGKILL; with `oom`, killed at its
   * memory limit): monitor() settles, open streams break, the port stops answering. */
  exit(code: number, oom = false): void {
    if (!this.running) return;
    this.running = false;
    this.busy = false;
    for (const settle of this.exits.splice(0)) {
      try {
        settle(code, oom);
      } catch {
        // a watcher of a Durable Object instance that is gone
      }
    }
    for (const controller of this.open) {
      try {
        controller.error(new Error("connection reset by peer"));
      } catch {
        // a stream of a Durable Object instance that is gone
      }
    }
    this.open.clear();
  }

  /** The Durable Object instance that watched this container is gone: its monitor()
   * promises and open streams went with it (the container itself runs on). */
  forgetInstance(): void {
    this.exits = [];
    this.open.clear();
  }

  async destroy(): Promise<void> {
    this.exit(137);
  }

  signal(signo: number): void {
    this.exit(128 + signo);
  }

  /** workerd's outbound interception: the DO binds it before every start. */
  async interceptAllOutboundHttp(_binding: Fetcher): Promise<void> {}
  async interceptOutboundHttps(_addr: string, _binding: Fetcher): Promise<void> {}

  getTcpPort(port: number): Fetcher {
    const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
      const request = new Request(input, init);
      const probe = new URL(request.url).pathname === "/healthz" && this.health !== null && this.answersWhenStopped;
      if ((!this.running && !probe) || port !== 8080) throw new Error("connection refused");
      return this.serve(request);
    };
    return { fetch } as unknown as Fetcher;
  }

  private async serve(request: Request): Promise<Response> {
    if (this.token === null || request.headers.get("authorization") !== `Bearer ${this.token}`) {
      return Response.json({ error: "unauthorized" }, { status: 401 });
    }
    const url = new URL(request.url);
    if (url.pathname === "/healthz") {
      if (this.death?.at === "start") {
        this.exit(this.death.code);
        throw new Error("connection reset by peer");
      }
      if (this.health !== null) {
        const answer = this.health(this, this.starts.length - 1, this.probes++);
        return answer instanceof Response ? answer : Response.json(answer);
      }
      return Response.json({ ok: true, ready: true, state: "ready", resumed: false, session_id: this.sessionId, bundle: "sha256:fake" });
    }
    if (url.pathname === "/v1/interrupt") {
      // A runtime takes a moment to stop the SDK: frames behind the interrupt must wait.
      await scheduler.wait(INTERRUPT_DELAY_MS);
      return Response.json({ interrupted: this.interruptAnswer ?? this.held }, { status: 202 });
    }
    if (url.pathname === "/v1/files" && request.method === "PUT") {
      if (this.death?.at === "file") {
        this.exit(this.death.code);
        throw new Error("connection reset by peer");
      }
      const path = url.searchParams.get("path") ?? "";
      const answer = this.fileAnswer?.(path) ?? null;
      if (answer !== null) return answer;
      this.files.push({ path, data: new Uint8Array(await request.arrayBuffer()), start: this.starts.length - 1, turnsBefore: this.turnsHere });
      return new Response(null, { status: 204 });
    }
    if (url.pathname === "/v1/turns" && request.method === "POST") {
      const turn = (await request.json()) as { turn_id: string; text: string; recover: boolean };
      this.turns.push(turn);
      this.turnsHere++;
      if (this.busy) {
        this.busyRefusals++;
        return Response.json({ error: "busy", message: "A turn is already running in this sandbox; wait for its result." }, { status: 409 });
      }
      if (this.rawTurn !== null) return new Response(this.rawTurn(turn), { headers: { "content-type": "application/x-ndjson" } });
      this.busy = true;
      const lines = this.script(turn.text, turn.recover).map((e) => new TextEncoder().encode(JSON.stringify(e) + "\n"));
      const death = this.death?.at === "stream" ? this.death : null;
      const gate = this.gate;
      const fake = this;
      let sent = 0;
      // One line per pull, so lines sent before a death are read before the stream breaks.
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          fake.open.add(controller);
        },
        async pull(controller) {
          if (gate !== null && sent === fake.holdAfter) {
            fake.held = true;
            await gate;
            fake.held = false;
            if (!fake.open.has(controller)) return;
          }
          if (death !== null && sent === death.after) {
            if (death.close === true) {
              fake.open.delete(controller);
              controller.close();
            }
            fake.exit(death.code, death.oom === true);
            return;
          }
          if (sent === lines.length) {
            fake.open.delete(controller);
            controller.close();
            return;
          }
          controller.enqueue(lines[sent++]);
          if (sent === lines.length) fake.busy = false; // its last line is out: the turn is over
        },
      });
      return new Response(stream, { headers: { "content-type": "application/x-ndjson" } });
    }
    return Response.json({ error: "not_found" }, { status: 404 });
  }
}
