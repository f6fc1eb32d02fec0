// The transcript store's wire in the SessionDO (src/storeapi.ts): the same calls, refusals
// and bodies as kit's Python host (both replay tests/storage/golden/store_wire.jsonl), a
// store token per session and holder, and the Worker's store routes.

import { SELF } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { createSession } from "./helpers";
import { apiToken, exact, rawNumbers, result, sandboxToken, storeCall } from "./storehelp";

const wire = import.meta.glob("../../tests/storage/golden/store_wire.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;
const WIRE = Object.values(wire)[0];
const SOME_ID = "0b5a7c3e-1d2f-4a6b-8c9d-0e1f2a3b4c5d";
const KEY = (sessionId: string) => ({ project_key: "kit", session_id: sessionId });
const ENTRY = { type: "user", uuid: "u1", message: { content: "hi" } };

/** `expected` (from `exact`) matches `actual`, with "$mtime" matching any epoch-ms number. */
function matches(expected: unknown, actual: unknown): boolean {
  if (expected === "$mtime") return typeof actual === "object" && actual !== null && Number((actual as { $n?: string }).$n) > 1e12;
  if (Array.isArray(expected)) return Array.isArray(actual) && expected.length === actual.length && expected.every((e, i) => matches(e, actual[i]));
  if (typeof expected === "object" && expected !== null) {
    if (typeof actual !== "object" || actual === null || Array.isArray(actual)) return false;
    const [ek, ak] = [Object.keys(expected).sort(), Object.keys(actual).sort()];
    return JSON.stringify(ek) === JSON.stringify(ak) && ek.every((k) => matches((expected as Record<string, unknown>)[k], (actual as Record<string, unknown>)[k]));
  }
  return expected === actual;
}

function hexBytes(hex: string): Uint8Array {
  return new Uint8Array(hex.match(/../g)!.map((b) => parseInt(b, 16)));
}

describe("transcript store", () => {
  it("answers every golden call as kit's Python host does", async () => {
    const session = await createSession();
    const other = await createSession();
    const token = await sandboxToken(session.session_id);
    const text = WIRE.replaceAll("$session", session.session_id).replaceAll("$other", other.session_id);
    const auth: Record<string, [string | null, Record<string, string>]> = {
      own: [token, {}],
      wrong: ["kit-store-wrong", {}],
      basic: [null, { authorization: `Basic ${token}` }],
      none: [null, {}],
    };
    let replayed = 0;
    for (const line of text.split("\n")) {
      if (line.trim() === "" || "note" in (JSON.parse(line) as object)) continue;
      const c = JSON.parse(line) as { case: string; call: string; auth: string; raw?: string; raw_hex?: string; status: number };
      const body: BodyInit =
        c.raw !== undefined ? c.raw : c.raw_hex !== undefined ? hexBytes(c.raw_hex) : JSON.stringify((rawNumbers(line) as { body: unknown }).body);
      const [bearer, headers] = auth[c.auth];
      const answer = await storeCall(session.session_id, c.call, bearer, body, headers);
      const got = await answer.text();
      const expected = (exact(line) as { answer: unknown }).answer;
      expect({ case: c.case, status: answer.status, matches: matches(expected, exact(got)), got }).toMatchObject({ case: c.case, status: c.status, matches: true });
      replayed++;
    }
    expect(replayed).toBeGreaterThan(40);
  });

  it("refuses a session's token at another session's store (401), and its key with the right token (403)", async () => {
    const a = await createSession();
    const b = await createSession();
    const [ta, tb] = [await sandboxToken(a.session_id), await sandboxToken(b.session_id)];
    await result(b.session_id, "append", tb, { key: KEY(b.session_id), entries: [ENTRY] });
    const stolen = await storeCall(b.session_id, "load", ta, JSON.stringify({ key: KEY(b.session_id) }));
    expect(stolen.status).toBe(401);
    expect(await stolen.json()).toEqual({ error: "refused", message: "a live session token is required" });
    const foreign = await storeCall(a.session_id, "load", ta, JSON.stringify({ key: KEY(b.session_id) }));
    expect(foreign.status).toBe(403);
    expect(await foreign.json()).toEqual({ error: "refused", message: "a sandbox may touch only its own session's transcript" });
    expect(await result(a.session_id, "load", ta, { key: KEY(a.session_id) })).toBeNull();
    expect(await result(b.session_id, "load", tb, { key: KEY(b.session_id) })).toEqual([ENTRY]);
  });

  it("keeps one token per holder: a new sandbox token ends the old one, the API's stays", async () => {
    const s = await createSession();
    const first = await sandboxToken(s.session_id);
    const minted = await apiToken(s.session_id);
    expect(minted.status).toBe(201);
    const api = (await minted.json()) as { token: string; store_url: string };
    expect(api.token).toMatch(/^kit-store-[A-Za-z0-9_-]{32}$/);
    expect(api.store_url).toBe(`do+http://shim.test/v1/sessions/${s.session_id}/store`);
    const second = await sandboxToken(s.session_id);
    const body = JSON.stringify({ key: KEY(s.session_id) });
    expect((await storeCall(s.session_id, "load", first, body)).status).toBe(401);
    expect((await storeCall(s.session_id, "load", second, body)).status).toBe(200);
    expect((await storeCall(s.session_id, "load", api.token, body)).status).toBe(200);
  });

  it("answers for ids with no session or no store without writing to their DO", async () => {
    const body = JSON.stringify({ key: KEY(SOME_ID) });
    for (const id of [SOME_ID, "not-a-uuid"]) {
      const answer = await storeCall(id, "load", "kit-store-x", body);
      expect(answer.status).toBe(401);
    }
    expect((await storeCall(SOME_ID, "nope", null, body)).status).toBe(404);
    // A session whose DO never minted a store token has no store tables: 401, nothing made.
    const s = await createSession();
    expect((await storeCall(s.session_id, "load", "kit-store-x", JSON.stringify({ key: KEY(s.session_id) }))).status).toBe(401);
  });

  it("mints API store tokens only with the API token, for a session that exists", async () => {
    const s = await createSession();
    const noAuth = await storeCall(s.session_id, "load", null, "{}"); // the store route itself needs no API token
    expect(noAuth.status).toBe(401);
    const bare = await SELF.fetch(`http://shim.test/v1/sessions/${s.session_id}/store-token`, { method: "POST" });
    expect(bare.status).toBe(401);
    const get = await SELF.fetch(`http://shim.test/v1/sessions/${s.session_id}/store/load`); // only POST is a store call
    expect(get.status).toBe(401);
    expect(await get.json()).toMatchObject({ error: "unauthorized" });
    expect((await apiToken(SOME_ID)).status).toBe(404);
    expect((await apiToken("not-a-uuid")).status).toBe(404);
    expect((await apiToken(s.session_id, [1])).status).toBe(400);
    expect((await apiToken(s.session_id, { any_key: "yes" })).status).toBe(400);
    const any = await apiToken(s.session_id, { any_key: true });
    expect(any.status).toBe(403); // KIT_STORE_CONFORMANCE is not set in the tests' Worker
    expect(await any.json()).toMatchObject({ error: "forbidden", message: expect.stringContaining("KIT_STORE_CONFORMANCE=1") });
  });
});
