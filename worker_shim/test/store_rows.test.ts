// The transcript store's rows (src/store.ts) and body limits (src/storeapi.ts): transcripts
// past DO SQLite's 2 MB per row come back exactly, in order, from rows under the limit (local
// workerd does not enforce it, so the rows are measured); the store survives its DO
// instance; bodies over 16 MiB or slower than the timeout are refused.

import { evictDurableObject, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { MAX_ROW_BYTES, PART_CHARS } from "../src/store";
import { MAX_BODY_BYTES, type StoreApi } from "../src/storeapi";
import { createSession } from "./helpers";
import { result, sandboxToken, storeCall } from "./storehelp";

const KEY = (sessionId: string) => ({ project_key: "kit", session_id: sessionId });

/** The largest row of the store's entries table, in bytes as SQLite stores them. */
async function largestRow(sessionId: string): Promise<{ bytes: number; rows: number }> {
  return runInDurableObject(env.SESSION.getByName(sessionId), (_instance, state) =>
    state.storage.sql
      .exec<{ bytes: number; rows: number }>(
        `SELECT MAX(length(CAST(project_key AS BLOB)) + length(CAST(session_id AS BLOB)) + length(CAST(subpath AS BLOB))
                  + COALESCE(length(CAST(uuid AS BLOB)), 0) + length(CAST(body AS BLOB)) + 16) AS bytes,
                COUNT(*) AS rows FROM store_entries`,
      )
      .one(),
  );
}

describe("transcript store rows", () => {
  it("round-trips a transcript of many MB: one entry over 2 MB and thousands in one append, in order", async () => {
    const s = await createSession();
    const token = await sandboxToken(s.session_id);
    // An odd prefix puts part boundaries inside surrogate pairs; a cut there would not
    // round-trip. 3 MB of text, 6 MB of UTF-16 and of UTF-8 on the wire and in rows.
    const big = { type: "assistant", uuid: "big", text: "\u{1F44B}".repeat(768 * 1024) + "é".repeat(PART_CHARS) };
    expect(JSON.stringify(big).indexOf("\u{1F44B}") % 2).toBe(1); // pairs straddle even offsets
    const many = Array.from({ length: 3000 }, (_, n) => ({ type: "user", uuid: `m${n}`, n, text: "y".repeat(1000) }));
    await result(s.session_id, "append", token, { key: KEY(s.session_id), entries: [many[0], big, ...many.slice(1, 1500)] });
    await result(s.session_id, "append", token, { key: KEY(s.session_id), entries: many.slice(1500) });
    const loaded = (await result(s.session_id, "load", token, { key: KEY(s.session_id) })) as unknown[];
    expect(loaded.length).toBe(3001);
    expect(loaded[1]).toEqual(big);
    expect(loaded).toEqual([many[0], big, ...many.slice(1)]);
    const { bytes, rows } = await largestRow(s.session_id);
    expect(bytes).toBeLessThanOrEqual(MAX_ROW_BYTES);
    expect(rows).toBeGreaterThan(3001); // the big entry took several rows

    // An append repeating the big entry's uuid adds nothing, its parts included.
    await result(s.session_id, "append", token, { key: KEY(s.session_id), entries: [big, { type: "x", uuid: "last" }] });
    const again = (await result(s.session_id, "load", token, { key: KEY(s.session_id) })) as unknown[];
    expect(again.length).toBe(3002);
    expect(again.at(-1)).toEqual({ type: "x", uuid: "last" });
    expect((await largestRow(s.session_id)).rows).toBe(rows + 1);
  });

  it("survives the DO instance: the transcript and the token after evictDurableObject", async () => {
    const s = await createSession();
    const token = await sandboxToken(s.session_id);
    const entries = [{ type: "user", uuid: "u1", text: "z".repeat(3 * 1024 * 1024) }, { type: "x", n: 12345678901234567890 }];
    await result(s.session_id, "append", token, { key: KEY(s.session_id), entries });
    await result(s.session_id, "append", token, { key: { ...KEY(s.session_id), subpath: "subagents/a" }, entries: [{ type: "x" }] });
    const stub = env.SESSION.getByName(s.session_id);
    await runInDurableObject(stub, (instance) => {
      (instance as unknown as { marker?: string }).marker = "old instance";
    });
    await evictDurableObject(stub);
    await runInDurableObject(stub, (instance) => {
      expect((instance as unknown as { marker?: string }).marker).toBeUndefined();
    });
    expect(await result(s.session_id, "load", token, { key: KEY(s.session_id) })).toEqual(entries);
    expect(await result(s.session_id, "list_subkeys", token, { key: KEY(s.session_id) })).toEqual(["subagents/a"]);
    const [listed] = (await result(s.session_id, "list_session_summaries", token, { project_key: "kit" })) as Array<{ data: unknown }>;
    expect(listed.data).toEqual({ is_sidechain: false });
  });

  it("refuses a body over 16 MiB with 413, by its Content-Length and as it streams", async () => {
    const s = await createSession();
    const token = await sandboxToken(s.session_id);
    const declared = await storeCall(s.session_id, "append", token, new Uint8Array(MAX_BODY_BYTES + 1));
    expect(declared.status).toBe(413);
    expect(await declared.json()).toEqual({ error: "refused", message: `a store call is at most ${MAX_BODY_BYTES} bytes` });
    let sent = 0;
    const chunk = new Uint8Array(1 << 20).fill(0x20);
    const streamed = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent > MAX_BODY_BYTES + 8 * chunk.byteLength) return controller.close();
        sent += chunk.byteLength;
        controller.enqueue(chunk);
      },
    });
    const answer = await storeCall(s.session_id, "append", token, streamed);
    expect(answer.status).toBe(413);
    expect(sent).toBeLessThan(MAX_BODY_BYTES + 8 * chunk.byteLength); // refused before the end
    // Exactly the limit is taken (it is JSON: spaces around an empty append).
    const padded = new TextEncoder().encode(JSON.stringify({ key: KEY(s.session_id), entries: [] }).padEnd(MAX_BODY_BYTES, " "));
    expect((await storeCall(s.session_id, "append", token, padded)).status).toBe(200);
  });

  it("refuses a body that does not arrive in time with 408", async () => {
    const s = await createSession();
    const token = await sandboxToken(s.session_id);
    await runInDurableObject(env.SESSION.getByName(s.session_id), (instance) => {
      (instance as unknown as { storeApi: StoreApi }).storeApi.bodyTimeoutMs = 100;
    });
    const stalled = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"key": '));
      },
    });
    const answer = await storeCall(s.session_id, "load", token, stalled);
    expect(answer.status).toBe(408);
    expect(await answer.json()).toEqual({ error: "refused", message: "the body did not arrive within 0.1 s" });
  });
});
