// The runtime's config in the container's environment, and the model route: a sandbox's
// model calls reach the upstream with the real key, which no sandbox is given.

import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { SELF } from "cloudflare:test";
import { FakeContainer } from "./fake_runtime";
import { API, attachContainer, createSession, live, untilEnd } from "./helpers";

interface Config {
  session_id: string;
  model_base_url: string;
  model_token: string;
  runtime_token: string;
  listen: string;
  [k: string]: unknown;
}

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

describe("the model route", () => {
  it("starts the container with its config in one variable, holding no real key", async () => {
    const { sessionId, config, raw } = await startedConfig();
    expect(Object.keys(raw)).toEqual(["KIT_RUNTIME_CONFIG_JSON"]);
    expect(config).toMatchObject({
      session_id: sessionId,
      listen: "tcp:0.0.0.0:8080",
      model_base_url: `http://shim.test/v1/sessions/${sessionId}/model`,
    });
    expect(config.model_token).toMatch(/^kit-model-/);
    expect(JSON.stringify(raw)).not.toContain(env.ANTHROPIC_API_KEY);
    expect(JSON.stringify(raw)).not.toContain(env.KIT_API_TOKEN);
  });

  it("forwards a call with the session's model token upstream with the real key", async () => {
    const { sessionId, config } = await startedConfig();
    const answer = await SELF.fetch(`${config.model_base_url}/v1/messages?beta=true`, {
      method: "POST",
      headers: { "x-api-key": config.model_token, "content-type": "application/json" },
      body: JSON.stringify({ model: "m", messages: [] }),
    });
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({
      url: "http://upstream.test/v1/messages?beta=true",
      method: "POST",
      x_api_key: env.ANTHROPIC_API_KEY,
      authorization: null,
      body: JSON.stringify({ model: "m", messages: [] }),
    });
    void sessionId;
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
});
