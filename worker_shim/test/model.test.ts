// The runtime's config in the container's environment, and the model route: a sandbox's
// model calls reach the upstream with the real key, which no sandbox is given, within the
// bundle's spend limits (vitest.config.mts binds KIT_LIMITS: models claude-opus-5-5 and
// claude-haiku-*, 1,000 tokens a turn, 1,500 a session). The upstream stand-in there echoes
// a call, or answers it with the body's `echo_reply`, and lists what reached it (/__seen).

import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { SELF, runInDurableObject } from "cloudflare:test";
import { FakeContainer, cannedOrRecovered } from "./fake_runtime";
import { API, attachContainer, createSession, live, untilEnd, type Frame } from "./helpers";
import type { Driver } from "./golden";

interface Config {
  session_id: string;
  model_base_url: string;
  model_token: string;
  runtime_token: string;
  listen: string;
  [k: string]: unknown;
}

interface Route {
  meter: { spent(): { session: Record<string, number>; turn: Record<string, number> } };
  replies: Set<Promise<void>>;
  drainLimitMs: number;
}

const UPSTREAM = "http://upstream.test";
const OPUS = "claude-opus-5-5";

async function startedConfig(): Promise<{ sessionId: string; config: Config; raw: Record<string, string> }> {
  const session = await createSession();
  const container = new FakeContainer();
  await attachContainer(session.session_id, container);
  const a = await live(session);
  a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
  await untilEnd(a);
  a.close();
  const raw = (container.starts[0].env ?? {}) as Record<string, string>;
  return { sessionId: session.session_id, config: JSON.parse(raw.KIT_RUNTIME_CONFIG_JSON) as Config, raw };
}

/** A model call of the sandbox with `config`, its body `body` (JSON unless a string). */
function call(config: Config, body: unknown, path = "v1/messages", init: RequestInit = {}): Promise<Response> {
  return SELF.fetch(`${config.model_base_url}/${path}`, {
    method: "POST",
    headers: { "x-api-key": config.model_token, "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
    ...init,
  });
}

/** An SSE reply with `input` tokens at its start and `output` at its end. */
function sse(input: number, output: number, more: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    status: 200,
    sse: [
      { type: "message_start", message: { id: "msg_1", type: "message", role: "assistant", content: [], usage: { input_tokens: input, output_tokens: 1 } } },
      { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Hi" } },
      { type: "message_delta", delta: { stop_reason: "end_turn" }, usage: { output_tokens: output } },
      { type: "message_stop" },
    ],
    ...more,
  };
}

/** Run `fn` on the session's model route, once the replies under way are read to their end. */
async function onRoute<T>(sessionId: string, fn: (route: Route) => T | Promise<T>): Promise<T> {
  return runInDurableObject(env.SESSION.getByName(sessionId), async (instance) => {
    const route = (instance as unknown as { modelRoute: Route }).modelRoute;
    await Promise.all(route.replies);
    return fn(route);
  });
}

async function seenUpstream(): Promise<string[]> {
  return (await (await fetch(`${UPSTREAM}/__seen`)).json()) as string[];
}

/** kit's Python proxy's refusal, byte for byte (json.dumps of its error). */
function refusalBody(type: string, message: string): string {
  return `{"type": "error", "error": {"type": "${type}", "message": ${JSON.stringify(message)}}}`;
}

async function frames(driver: Driver, n: number): Promise<Frame[]> {
  const out: Frame[] = [];
  for (let i = 0; i < n; i++) out.push((await driver.recv()) as Frame);
  return out;
}

function spendLimits(fs: Frame[]): Frame[] {
  return fs.filter((f) => f.kind === "error" && f.data?.code === "spend_limit");
}

describe("the model route", () => {
  it("starts the container with its config in one variable, holding no real key", async () => {
    const { sessionId, config, raw } = await startedConfig();
    expect(Object.keys(raw)).toEqual(["KIT_RUNTIME_CONFIG_JSON"]);
    expect(config).toMatchObject({
      session_id: sessionId,
      listen: "tcp:0.0.0.0:8080",
      model_base_url: `http://kit.internal/v1/sessions/${sessionId}/model`,
    });
    expect(config.model_token).toMatch(/^kit-model-/);
    expect(JSON.stringify(raw)).not.toContain(env.ANTHROPIC_API_KEY);
    expect(JSON.stringify(raw)).not.toContain(env.KIT_API_TOKEN);
  });

  it("forwards an allowed model's call with the session's model token upstream with the real key", async () => {
    const { config } = await startedConfig();
    const body = JSON.stringify({ model: OPUS, max_tokens: 5, messages: [] });
    const answer = await call(config, body, "v1/messages?beta=true", { headers: { "x-api-key": config.model_token, "accept-encoding": "gzip" } });
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({
      url: "http://upstream.test/v1/messages?beta=true",
      method: "POST",
      x_api_key: env.ANTHROPIC_API_KEY,
      authorization: null,
      accept_encoding: "identity",
      body,
    });
  });

  it("refuses a wrong, missing or other session's token with the Messages API's 401", async () => {
    const first = await startedConfig();
    const second = await startedConfig();
    const tries: Record<string, string>[] = [{}, { "x-api-key": "kit-model-wrong" }, { "x-api-key": second.config.model_token }, { authorization: `Bearer ${env.KIT_API_TOKEN}` }];
    for (const headers of tries) {
      const answer = await SELF.fetch(`${first.config.model_base_url}/v1/messages`, { method: "POST", headers, body: "{}" });
      expect(answer.status).toBe(401);
      expect(await answer.json()).toMatchObject({ type: "error", error: { type: "authentication_error" } });
    }
    const bogus = await SELF.fetch(`${API}/v1/sessions/not-a-uuid/model/v1/messages`, { method: "POST", headers: { "x-api-key": first.config.model_token }, body: "{}" });
    expect(bogus.status).toBe(404);
  });

  it("refuses a model outside limits.models with Python's 402 before any upstream call", async () => {
    const { config, sessionId } = await startedConfig();
    const marker = `refused-${sessionId}`;
    for (const path of ["v1/messages", "v1/messages/count_tokens"]) {
      const answer = await call(config, { model: "claude-sonnet-5", max_tokens: 5, metadata: { user_id: marker } }, path);
      expect(answer.status).toBe(402);
      expect(answer.headers.get("x-should-retry")).toBe("false");
      expect(await answer.text()).toBe(
        refusalBody(
          "billing_error",
          `kit's model proxy refused a call to model 'claude-sonnet-5': it is not in limits.models = ["claude-opus-5-5", "claude-haiku-*"] in kit.toml. Set agent.model to an allowed model, or add this one to limits.models.`,
        ),
      );
    }
    const allowed = `allowed-${sessionId}`;
    expect((await call(config, { model: "claude-haiku-4-5", metadata: { user_id: allowed } }, "v1/messages/count_tokens")).status).toBe(200);
    const seen = await seenUpstream();
    expect(seen.some((body) => body.includes(allowed))).toBe(true); // the stand-in lists calls
    expect(seen.some((body) => body.includes(marker))).toBe(false);
  });

  it("refuses other paths (403) and bodies kit cannot read a model from (400), as kit's proxy does", async () => {
    const { config, sessionId } = await startedConfig();
    const marker = `bad-${sessionId}`;
    for (const path of ["v1/messages/batches", "v1/models", "v1/messages/"]) {
      const answer = await call(config, { model: OPUS, marker }, path);
      expect([path, answer.status, await answer.json()]).toEqual([path, 403, { type: "error", error: { type: "permission_error", message: "kit's model proxy forwards only POST /v1/messages." } }]);
    }
    const bodies = [`{"model": "claude-sonnet-5", "model": "${OPUS}", "m": "${marker}"}`, `{"a": {"b": 1, "b": 2}, "model": "${OPUS}", "m": "${marker}"}`, `["${marker}"]`, `{"model": "", "m": "${marker}"}`, `{"m": "${marker}"`];
    for (const body of bodies) {
      const answer = await call(config, body);
      expect([body, answer.status, ((await answer.json()) as { error: { type: string } }).error.type]).toEqual([body, 400, "invalid_request_error"]);
    }
    // The same key in two objects is no repeat.
    const twice = await call(config, `{"model": "${OPUS}", "a": {"model": 1}, "b": [{"model": 2}, {"model": 3}]}`);
    expect(twice.status).toBe(200);
    await twice.text();
    expect((await seenUpstream()).some((body) => body.includes(marker))).toBe(false);
  });

  it("refuses the calls after a limit is reached mid-turn, tells a live socket once, and counts turns and the session apart", async () => {
    const session = await createSession();
    let release!: () => void;
    const container = new FakeContainer(cannedOrRecovered, new Promise<void>((resolve) => (release = resolve)));
    container.holdAfter = 1;
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const before = await frames(a, 4); // user, starting, running, one text_delta: the turn is held
    expect(before.map((f) => f.kind)).toEqual(["user", "sandbox", "sandbox", "text_delta"]);
    const config = JSON.parse((container.starts[0].env as Record<string, string>).KIT_RUNTIME_CONFIG_JSON) as Config;

    const first = await call(config, { model: OPUS, max_tokens: 300, stream: true, echo_reply: sse(800, 200) });
    expect(first.status).toBe(200);
    expect(await first.text()).toContain("message_delta");
    expect(await onRoute(session.session_id, (route) => route.meter.spent().turn)).toEqual({ input: 800, output: 200, cache_write: 0, cache_write_1h: 0, cache_read: 0 });
    const message =
      "kit's model proxy refused a model call: this turn has used 1,000 model tokens, reaching limits.turn_tokens = 1000 in kit.toml. Send another message to start a new turn, or raise the limit.";
    const marker = `over-${session.session_id}`;
    for (let i = 0; i < 3; i++) {
      const refused = await call(config, { model: OPUS, max_tokens: 5, metadata: { user_id: marker } });
      expect(refused.status).toBe(402);
      expect(await refused.text()).toBe(refusalBody("billing_error", message));
    }
    expect((await seenUpstream()).some((body) => body.includes(marker))).toBe(false);
    release();
    const turn1 = [...before, ...(await untilEnd(a))];
    expect(spendLimits(turn1)).toEqual([expect.objectContaining({ turn_id: "t1", data: { code: "spend_limit", setting: "limits.turn_tokens", message } })]);
    expect(turn1[4]).toMatchObject({ kind: "error", data: { setting: "limits.turn_tokens" } }); // told as it happened
    expect(turn1.at(-1)).toMatchObject({ kind: "result", turn_id: "t1" });

    // The next turn counts afresh; the session's count (1,500) goes on and refuses in turn.
    container.holdAfter = -1;
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    await untilEnd(a); // the runner began t2 before its stream
    const second = await call(config, { model: OPUS, max_tokens: 5, stream: true, echo_reply: sse(400, 100) });
    expect(second.status).toBe(200);
    await second.text();
    expect(await onRoute(session.session_id, (route) => [route.meter.spent().turn.input, route.meter.spent().session.input])).toEqual([400, 1200]);
    const over = await call(config, { model: OPUS, max_tokens: 5 });
    expect(over.status).toBe(402);
    expect(((await over.json()) as { error: { message: string } }).error.message).toContain("this session has used 1,500 model tokens, reaching limits.session_tokens = 1500");
    a.close();
  });

  it("keeps the counts in the DO's storage: a new instance refuses as the old one would", async () => {
    const { sessionId, config } = await startedConfig();
    const answer = await call(config, { model: OPUS, max_tokens: 5, echo_reply: { status: 200, json: { type: "message", usage: { input_tokens: 1500, output_tokens: 3 } } } });
    expect(answer.status).toBe(200);
    await answer.text();
    await onRoute(sessionId, () => undefined);
    const stub = env.SESSION.getByName(sessionId);
    await runInDurableObject(stub, (instance) => {
      (instance as unknown as { marker?: string }).marker = "old instance";
    });
    const { evictDurableObject } = await import("cloudflare:test");
    await evictDurableObject(stub);
    await runInDurableObject(stub, (instance) => expect((instance as unknown as { marker?: string }).marker).toBeUndefined());
    const refused = await call(config, { model: OPUS, max_tokens: 5 });
    expect(refused.status).toBe(402);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toContain("this session has used 1,503 model tokens");
  });

  it("counts a reply its sandbox hung up on to its end, and one never ending as its max_tokens", async () => {
    const { sessionId, config } = await startedConfig();
    const gate = `hangup-${sessionId}`;
    const answer = await call(config, { model: "claude-haiku-4-5", max_tokens: 700, stream: true, echo_reply: sse(10, 90, { gate, held_after: 1 }) });
    const reader = answer.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toContain("message_start");
    await reader.cancel(); // the sandbox hangs up before the reply's end
    await fetch(`${UPSTREAM}/__release/${gate}`, { method: "POST" });
    expect(await onRoute(sessionId, (route) => route.meter.spent().session)).toMatchObject({ input: 10, output: 90 });

    await onRoute(sessionId, (route) => {
      route.drainLimitMs = 1; // the next reply is given up on at once after the hang-up
    });
    const never = `never-${sessionId}`;
    const stuck = await call(config, { model: "claude-haiku-4-5", max_tokens: 700, stream: true, echo_reply: sse(10, 90, { gate: never, held_after: 1 }) });
    const stuckReader = stuck.body!.getReader();
    await stuckReader.read();
    await stuckReader.cancel();
    expect(await onRoute(sessionId, (route) => route.meter.spent().session)).toMatchObject({ input: 20, output: 90 + 700 });
    await fetch(`${UPSTREAM}/__release/${never}`, { method: "POST" });
  });

  it("lets a session have 16 calls under way at once; one more gets a retryable 429", async () => {
    const { sessionId, config } = await startedConfig();
    const gate = `inflight-${sessionId}`;
    const held = [];
    for (let i = 0; i < 16; i++) held.push(await call(config, { model: "claude-haiku-4-5", max_tokens: 5, stream: true, echo_reply: sse(1, 1, { gate, held_after: 1 }) }));
    expect(held.map((r) => r.status)).toEqual(Array(16).fill(200));
    const more = await call(config, { model: "claude-haiku-4-5", max_tokens: 5 });
    expect([more.status, more.headers.get("x-should-retry"), more.headers.get("retry-after")]).toEqual([429, "true", "1"]);
    expect(((await more.json()) as { error: { type: string } }).error.type).toBe("rate_limit_error");
    await fetch(`${UPSTREAM}/__release/${gate}`, { method: "POST" });
    for (const answer of held) expect(await answer.text()).toContain("message_stop");
    await onRoute(sessionId, () => undefined);
    const after = await call(config, { model: "claude-haiku-4-5", max_tokens: 5 });
    expect(after.status).toBe(200);
    await after.text();
  });
});

describe("a sandbox's tokens", () => {
  it("stop working when the sandbox exits: the model route and the store refuse them", async () => {
    const session = await createSession();
    const container = new FakeContainer();
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    await untilEnd(a);
    const config = JSON.parse((container.starts[0].env as Record<string, string>).KIT_RUNTIME_CONFIG_JSON) as Config & {
      store_url: string;
      store_token: string;
    };
    const call = (token: string) =>
      SELF.fetch(`${config.model_base_url}/v1/messages`, {
        method: "POST",
        headers: { "x-api-key": token, "content-type": "application/json" },
        body: JSON.stringify({ model: OPUS, max_tokens: 10, messages: [] }),
      });
    const storeCall = (token: string) =>
      SELF.fetch(`${API}/v1/sessions/${session.session_id}/store/list_subkeys`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ key: { project_key: "kit", session_id: session.session_id } }),
      });
    const before = await call(config.model_token);
    expect(before.status).not.toBe(401);
    await before.body?.cancel();
    const stored = await storeCall(config.store_token);
    expect(stored.status).toBe(200);
    await stored.body?.cancel();
    await runInDurableObject(env.SESSION.getByName(session.session_id), () => container.exit(137));
    expect(await a.recv()).toMatchObject({ kind: "sandbox", data: { state: "died", reason: "killed" } });
    const after = await call(config.model_token);
    expect(after.status).toBe(401);
    await after.body?.cancel();
    const refused = await storeCall(config.store_token);
    expect(refused.status).toBe(401);
    await refused.body?.cancel();
    a.close();
  });
});
