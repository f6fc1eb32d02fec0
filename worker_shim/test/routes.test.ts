// The Worker's HTTP surface: /healthz and the chat page (test/web.test.ts) are public, every
// other request needs the API token (401 without it, also for a path that does not exist);
// the session API answers as kit's host does; session sockets are refused to foreign
// browser origins.

import { SELF, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { originAllowed } from "../src/index";
import { noSessionSocket } from "../src/nosession";
import { Driver } from "./golden";
import { API, AUTH, createSession } from "./helpers";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const SOME_ID = "0b5a7c3e-1d2f-4a6b-8c9d-0e1f2a3b4c5d";

/** Every route, and some that do not exist, with each method a client might try. */
const REQUESTS: Array<[string, string]> = [
  ["POST", "/v1/sessions"],
  ["GET", "/v1/sessions"],
  ["GET", `/v1/sessions/${SOME_ID}/ws`],
  ["POST", `/v1/sessions/${SOME_ID}/ws`],
  ["POST", "/healthz"],
  // The page's paths are public for GET only (test/web.test.ts).
  ["POST", "/"],
  ["GET", "/web/README.md"],
  ["GET", "/no/such/route"],
  ["DELETE", `/v1/sessions/${SOME_ID}`],
];

describe("routes", () => {
  it("answers /healthz without the token", async () => {
    const answer = await SELF.fetch(`${API}/healthz`);
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({ ok: true });
  });

  for (const [method, path] of REQUESTS) {
    for (const [how, headers] of [
      ["no token", {}],
      ["a wrong token", { authorization: "Bearer kit-api-wrong" }],
      ["the right token as Basic", { authorization: AUTH.authorization.replace("Bearer", "Basic") }],
    ] as Array<[string, Record<string, string>]>) {
      it(`refuses ${method} ${path} with ${how}: 401`, async () => {
        const answer = await SELF.fetch(`${API}${path}`, { method, headers });
        expect(answer.status).toBe(401);
        expect(await answer.json()).toEqual({ error: "unauthorized", message: "Send Authorization: Bearer <the host's API token>." });
      });
    }
  }

  it("creates a session as kit's host does", async () => {
    const session = await createSession();
    expect(session.session_id).toMatch(UUID);
    expect(session.token).toMatch(/^kit-session-[A-Za-z0-9_-]{32}$/);
    expect(session.ws_url).toBe(`ws://shim.test/v1/sessions/${session.session_id}/ws`);
    const https = await SELF.fetch("https://shim.test/v1/sessions", { method: "POST", headers: AUTH });
    expect(((await https.json()) as { ws_url: string }).ws_url).toMatch(/^wss:\/\/shim\.test\/v1\/sessions\//);
  });

  it("answers a non-upgrade request to the socket route with 426, and an unknown path with 404", async () => {
    expect((await SELF.fetch(`${API}/v1/sessions/${SOME_ID}/ws`, { headers: AUTH })).status).toBe(426);
    expect((await SELF.fetch(`${API}/nope`, { headers: AUTH })).status).toBe(404);
  });

  it("answers hello on an unknown or malformed session id with unknown_session, close 4404", async () => {
    for (const id of [SOME_ID, "not-a-uuid", SOME_ID.toUpperCase()]) {
      const driver = await Driver.open(id);
      driver.send(JSON.stringify({ type: "hello", token: "kit-session-x", last_seq: null }));
      expect(await driver.recv()).toMatchObject({ type: "error", code: "unknown_session" });
      expect(await driver.closed()).toBe(4404);
    }
  });

  it("refuses a socket from a foreign browser origin with 403, and lets the host's own origin in", async () => {
    const session = await createSession();
    const refused = await SELF.fetch(`${API}/v1/sessions/${session.session_id}/ws`, {
      headers: { upgrade: "websocket", origin: "https://evil.example" },
    });
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ error: "forbidden_origin" });
    const own = await Driver.open(session.session_id, { origin: "http://shim.test", host: "shim.test" });
    own.send(JSON.stringify({ type: "ping" }));
    expect(await own.recv()).toEqual({ type: "pong" });
    own.close();
  });

  it("on loopback lets only the loopback names of the port in, as kit dev does (no DNS rebinding)", async () => {
    const session = await createSession();
    const upgrade = (origin: string, host: string, ip = "127.0.0.1") =>
      SELF.fetch(`http://${host}/v1/sessions/${session.session_id}/ws`, {
        headers: { upgrade: "websocket", origin, host, "cf-connecting-ip": ip },
      });
    // A page whose own name resolves to this machine sends its own name as Host.
    const rebound = await upgrade("http://evil.example:8787", "evil.example:8787");
    expect(rebound.status).toBe(403);
    expect(await rebound.json()).toMatchObject({ error: "forbidden_origin" });
    for (const origin of ["http://localhost:8787", "http://127.0.0.1:8787", "http://[::1]:8787"]) {
      const answer = await upgrade(origin, "127.0.0.1:8787");
      expect(answer.status, origin).toBe(101);
      answer.webSocket?.accept();
      answer.webSocket?.close(1000);
    }
    expect((await upgrade("http://localhost:9999", "localhost:8787")).status).toBe(403);
  });

  it("spells the origin rules of kit/host/auth.py OriginPolicy", () => {
    // Not on loopback: the request's own Host, or a listed origin.
    expect(originAllowed("https://app.example", "app.example", "", false)).toBe(true);
    expect(originAllowed("https://other.example", "app.example", "", false)).toBe(false);
    expect(originAllowed("https://OTHER.example/", "app.example", "https://other.example", false)).toBe(true);
    expect(originAllowed("null", "app.example", "", false)).toBe(false);
    // On loopback: the loopback names with the Host's port, whatever the Host's name.
    expect(originAllowed("http://localhost:8787", "127.0.0.1:8787", "", true)).toBe(true);
    expect(originAllowed("http://127.0.0.2:8787", "127.0.0.2:8787", "", true)).toBe(true);
    expect(originAllowed("http://evil.example:8787", "evil.example:8787", "", true)).toBe(false);
    expect(originAllowed("http://evil.example:8787", "evil.example:8787", "http://evil.example:8787", true)).toBe(true);
  });

  it("answers a socket to an unknown session id as kit's host does, and writes nothing to its Durable Object", async () => {
    const id = crypto.randomUUID();
    const driver = await Driver.open(id);
    driver.send(JSON.stringify({ type: "ping" }));
    expect(await driver.recv()).toEqual({ type: "pong" });
    driver.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "hi" }));
    expect(await driver.recv()).toMatchObject({ type: "error", code: "hello_required" });
    driver.send("[");
    expect(await driver.recv()).toMatchObject({ type: "error", code: "bad_json" });
    driver.send(JSON.stringify({ type: "hello", token: "kit-session-x", last_seq: null }));
    expect(await driver.recv()).toMatchObject({ type: "error", code: "unknown_session" });
    expect(await driver.closed()).toBe(4404);
    await runInDurableObject(env.SESSION.getByName(id), async (_instance, state) => {
      expect(await state.storage.getAlarm()).toBeNull();
      const tables = state.storage.sql.exec<{ name: string }>("SELECT name FROM sqlite_master").toArray();
      expect(tables.map((t) => t.name).filter((n) => !n.startsWith("_cf_"))).toEqual([]);
    });
  });

  it("closes a socket to an unknown session that never says hello by its deadline: hello_required, 4400", async () => {
    const socket = noSessionSocket(50).webSocket!;
    const frames: unknown[] = [];
    const closed = new Promise<number>((resolve) => socket.addEventListener("close", (ev) => resolve(ev.code)));
    socket.addEventListener("message", (ev) => frames.push(JSON.parse(ev.data as string)));
    socket.accept();
    expect(await closed).toBe(4400);
    expect(frames).toEqual([expect.objectContaining({ type: "error", code: "hello_required" })]);
  });
});
