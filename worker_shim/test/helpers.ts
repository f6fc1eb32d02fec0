// Shared test steps: create a session through the Worker, give its DO a fake container.

import { SELF, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { FakeContainer } from "./fake_runtime";
import { Driver } from "./golden";

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

export type Frame = { type: string; seq?: number; kind?: string; turn_id?: string | null; replay?: boolean; data?: Record<string, unknown>; [k: string]: unknown };

/** A socket past hello (with no earlier events: resume `none`). */
export async function live(session: NewSession): Promise<Driver> {
  const driver = await Driver.open(session.session_id);
  driver.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
  const welcome = (await driver.recv()) as Frame;
  if (welcome.type !== "welcome" || welcome.resume !== "none") throw new Error(`expected welcome resume none, got ${JSON.stringify(welcome)}`);
  return driver;
}

/** Frames up to and including the turn's end (`result` or `error` turn_failed), bounded. */
export async function untilEnd(driver: Driver): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let n = 0; n < 10_000; n++) {
    const f = (await driver.recv()) as Frame;
    frames.push(f);
    if (f.kind === "result" || (f.kind === "error" && f.data?.code === "turn_failed")) return frames;
  }
  throw new Error("no end of turn within 10 000 frames");
}

/** A new session with `container`, a live socket, and the frames of its first turn ("one"). */
export async function sessionWithTurn(container: FakeContainer = new FakeContainer()): Promise<[NewSession, Driver, Frame[]]> {
  const session = await createSession();
  await attachContainer(session.session_id, container);
  const a = await live(session);
  a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
  return [session, a, await untilEnd(a)];
}
