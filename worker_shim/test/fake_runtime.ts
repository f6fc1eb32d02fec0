// A fake container for tests: a real implementation of ContainerLike whose port 8080
// serves kit's runtime API (docs/protocol.md §11) with canned events, the way the offline
// model answers in `kit dev`: a few text_delta, one assistant, one result.

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

/** How long the fake runtime takes to answer /v1/interrupt. */
const INTERRUPT_DELAY_MS = 50;

export class FakeContainer implements ContainerLike {
  running = false;
  /** Every start's options, in order. */
  readonly starts: ContainerStartupOptions[] = [];
  /** Every turn request the runtime received. */
  readonly turns: Array<{ turn_id: string; text: string; recover: boolean }> = [];
  private token: string | null = null;
  /** A gated turn's stream is open and has sent nothing yet. */
  private held = false;

  /** `script` answers a turn's text; with `gate`, the turn's stream stays open (no line
   * sent) until the gate resolves, so a test can look at a turn in flight. */
  constructor(
    private readonly script: (text: string) => RuntimeEventLine[] = cannedTurn,
    private readonly gate: Promise<void> | null = null,
  ) {}

  start(options?: ContainerStartupOptions): void {
    if (this.running) throw new Error("start() on a running container");
    this.starts.push(options ?? {});
    this.token = options?.env?.KIT_RUNTIME_TOKEN ?? null;
    this.running = true;
  }

  private exits: Array<(code: number) => void> = [];

  monitor(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.exits.push((code) => (code === 0 ? resolve() : reject(new Error(`Container exited with code ${code}`))));
    });
  }

  /** The container process ends with `code` (137: SIGKILL, as an OOM kill): monitor()
   * settles, the port stops answering. */
  exit(code: number): void {
    this.running = false;
    for (const settle of this.exits.splice(0)) settle(code);
  }

  async destroy(): Promise<void> {
    this.running = false;
  }

  signal(_signo: number): void {
    this.running = false;
  }

  getTcpPort(port: number): Fetcher {
    const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
      if (!this.running || port !== 8080) throw new Error("connection refused");
      return this.serve(new Request(input, init));
    };
    return { fetch } as unknown as Fetcher;
  }

  private async serve(request: Request): Promise<Response> {
    if (this.token === null || request.headers.get("authorization") !== `Bearer ${this.token}`) {
      return Response.json({ error: "unauthorized" }, { status: 401 });
    }
    const url = new URL(request.url);
    if (url.pathname === "/healthz") {
      return Response.json({ ok: true, ready: true, state: "ready", resumed: false, session_id: "x", bundle: "sha256:fake" });
    }
    if (url.pathname === "/v1/interrupt") {
      // A runtime takes a moment to stop the SDK: frames behind the interrupt must wait.
      await scheduler.wait(INTERRUPT_DELAY_MS);
      return Response.json({ interrupted: this.held }, { status: 202 });
    }
    if (url.pathname === "/v1/turns" && request.method === "POST") {
      const turn = (await request.json()) as { turn_id: string; text: string; recover: boolean };
      this.turns.push(turn);
      const body = this.script(turn.text).map((e) => JSON.stringify(e) + "\n").join("");
      const gate = this.gate;
      const fake = this;
      if (gate === null) return new Response(body, { headers: { "content-type": "application/x-ndjson" } });
      const stream = new ReadableStream<Uint8Array>({
        async start(controller) {
          fake.held = true;
          await gate;
          fake.held = false;
          controller.enqueue(new TextEncoder().encode(body));
          controller.close();
        },
      });
      return new Response(stream, { headers: { "content-type": "application/x-ndjson" } });
    }
    return Response.json({ error: "not_found" }, { status: 404 });
  }
}
