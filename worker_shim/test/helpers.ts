// Shared test steps: create a session through the Worker, give its DO a fake container.

import { SELF, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { FakeContainer } from "./fake_runtime";

export const API = "http://shim.test";
export const AUTH = { authorization: `Bearer ${env.KIT_API_TOKEN}` };

export interface NewSession {
  session_id: string;
  token: string;
  ws_url: string;
}

/** POST /v1/sessions with the API token. */
export async function createSession(): Promise<NewSession> {
  const answer = await SELF.fetch(`${API}/v1/sessions`, { method: "POST", headers: AUTH });
  if (answer.status !== 201) throw new Error(`POST /v1/sessions answered ${answer.status}: ${await answer.text()}`);
  return (await answer.json()) as NewSession;
}

/** Give the session's DO (this instance of it) `container` as its ctx.container. */
export async function attachContainer(sessionId: string, container: FakeContainer): Promise<void> {
  await runInDurableObject(env.SESSION.getByName(sessionId), (_instance, state) => {
    (state as { container?: unknown }).container = container;
  });
}
