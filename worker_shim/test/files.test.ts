// A session's files (src/files.ts): `PUT /v1/sessions/{id}/files/{path}` and
// `GET /v1/sessions/{id}/files` (the API token, the path rules, the limits, nothing stored
// on a refusal), kept through the DO's eviction, and put into the container before each
// turn: again into the new container of a recovered turn, again after a re-PUT, not twice.

import { SELF, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { CHUNK_BYTES, MAX_FILE_BYTES, MAX_SESSION_FILES } from "../src/files";
import { FakeContainer, cannedTurn, recoveredTurn, type Death } from "./fake_runtime";
import { kitJson } from "./controlhelpers";
import { Driver } from "./golden";
import { API, AUTH, attachContainer, createSession, live, untilEnd, type Frame } from "./helpers";

const UNKNOWN = "00000000-0000-4000-8000-000000000000";

function put(sessionId: string, path: string, body: BodyInit, headers: Record<string, string> = AUTH): Promise<Response> {
  return SELF.fetch(`${API}/v1/sessions/${sessionId}/files/${path}`, { method: "PUT", headers, body });
}

async function listing(sessionId: string): Promise<Array<{ path: string; size: number; sha256: string }>> {
  const answer = await SELF.fetch(`${API}/v1/sessions/${sessionId}/files`, { headers: AUTH });
  expect(answer.status).toBe(200);
  return ((await answer.json()) as { files: Array<{ path: string; size: number; sha256: string }> }).files;
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  return [...new Uint8Array(await crypto.subtle.digest("SHA-256", data))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const text = (s: string) => new TextEncoder().encode(s);
const read = (data: Uint8Array) => new TextDecoder().decode(data);

/** Bytes that differ from chunk to chunk (a chunk put in the wrong place shows). */
function pattern(size: number): Uint8Array {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = (i * 7 + Math.floor(i / CHUNK_BYTES)) & 0xff;
  return data;
}

/** A turn over the socket: its frames up to the result. */
async function turn(a: Driver, text: string, n: number): Promise<Frame[]> {
  a.send(JSON.stringify({ type: "user", client_msg_id: `c-${n}`, text }));
  return untilEnd(a);
}

describe("PUT and GET /v1/sessions/{id}/files", () => {
  it("need the API token: 401 without it or with another, nothing stored", async () => {
    const { session_id: sid } = await createSession();
    const tries: Array<Record<string, string>> = [{}, { authorization: "Bearer wrong" }, { authorization: `Basic ${env.KIT_API_TOKEN}` }];
    for (const headers of tries) {
      const answer = await put(sid, "a.txt", "hi", headers);
      expect(answer.status).toBe(401);
      expect(answer.headers.get("www-authenticate")).toBe("Bearer");
      expect((await SELF.fetch(`${API}/v1/sessions/${sid}/files`, { headers })).status).toBe(401);
    }
    expect(await listing(sid)).toEqual([]);
  });

  it("stores a file (204) and lists every file by path with its size and SHA-256; a re-PUT replaces it", async () => {
    const { session_id: sid } = await createSession();
    expect((await put(sid, "b.txt", "bee")).status).toBe(204);
    expect((await put(sid, "mail/ab12/a%20(2).txt", "ay")).status).toBe(204);
    expect((await put(sid, "A.txt", "")).status).toBe(204);
    expect(await listing(sid)).toEqual([
      { path: "A.txt", size: 0, sha256: await sha256Hex(new Uint8Array(0)) },
      { path: "b.txt", size: 3, sha256: await sha256Hex(text("bee")) },
      { path: "mail/ab12/a (2).txt", size: 2, sha256: await sha256Hex(text("ay")) },
    ]);
    expect((await put(sid, "b.txt", "bumblebee")).status).toBe(204);
    expect((await listing(sid)).find((f) => f.path === "b.txt")).toEqual({ path: "b.txt", size: 9, sha256: await sha256Hex(text("bumblebee")) });
    expect(await listing(sid)).toHaveLength(3);
  });

  it("refuses an unknown session 404 and writes nothing to its Durable Object", async () => {
    for (const id of [UNKNOWN, "not-a-uuid"]) {
      const answer = await put(id, "a.txt", "hi");
      expect(answer.status).toBe(404);
      expect(await answer.json()).toEqual({ error: "unknown_session", message: "No session has this id; create one with POST /v1/sessions." });
      expect((await SELF.fetch(`${API}/v1/sessions/${id}/files`, { headers: AUTH })).status).toBe(404);
    }
    const tables = await runInDurableObject(env.SESSION.getByName(UNKNOWN), (_i, state) =>
      state.storage.sql.exec<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\'").toArray(),
    );
    expect(tables).toEqual([]);
  });

  it("refuses a bad path 400, naming the rule, and stores nothing", async () => {
    const { session_id: sid } = await createSession();
    const cases: Array<[string, RegExp]> = [
      [".env", /"\.env" starts with a dot/],
      ["mail/.ssh/key", /"\.ssh" starts with a dot/],
      ["a//b.txt", /an empty part/],
      ["a/", /an empty part/],
      ["%2Fetc%2Fpasswd", /an empty part/],
      ["a%5Cb.txt", /has a backslash/],
      ["a%01b.txt", /has a control character/],
      ["a%7Fb.txt", /has a control character/],
      ["a%C2%85b.txt", /has a control character/], // U+0085, a C1 control
      [`${"x".repeat(256)}.txt`, /a part is over 255 bytes/],
      [`${"é".repeat(128)}`, /a part is over 255 bytes/],
      ["1/2/3/4/5/6/7/8/9.txt", /needs 1 to 8 parts separated by "\/", got 9/],
      ["", /needs 1 to 8 parts separated by "\/", got none/],
      ["a%E0.txt", /not percent-encoded UTF-8/],
    ];
    for (const [path, why] of cases) {
      const answer = await put(sid, path, "data");
      expect(answer.status, path).toBe(400);
      const body = (await answer.json()) as { error: string; message: string };
      expect(body.error, path).toBe("refused");
      expect(body.message, path).toMatch(why);
    }
    expect((await put(sid, "1/2/3/4/5/6/7/8.txt", "eight parts")).status).toBe(204);
    expect((await put(sid, `${"é".repeat(127)}`, "254 bytes")).status).toBe(204);
    expect((await listing(sid)).map((f) => f.path)).toEqual(["1/2/3/4/5/6/7/8.txt", "é".repeat(127)]);
  });

  it("refuses a path that is a folder of a file the session has, or under one, 409", async () => {
    const { session_id: sid } = await createSession();
    expect((await put(sid, "a/b.txt", "b")).status).toBe(204);
    expect((await put(sid, "c", "c")).status).toBe(204);
    for (const [path, other] of [
      ["a", "a/b.txt"],
      ["a/b.txt/d", "a/b.txt"],
      ["c/d.txt", "c"],
    ]) {
      const answer = await put(sid, path, "x");
      expect(answer.status, path).toBe(409);
      const body = (await answer.json()) as { error: string; message: string };
      expect(body.error).toBe("refused");
      expect(body.message).toContain(`the session has "${other}"`);
    }
    expect((await put(sid, "ab", "not a folder of a/")).status).toBe(204);
    expect((await listing(sid)).map((f) => f.path)).toEqual(["a/b.txt", "ab", "c"]);
  });

  it("answers another method 405, naming the one to use", async () => {
    const { session_id: sid } = await createSession();
    const post = await SELF.fetch(`${API}/v1/sessions/${sid}/files/a.txt`, { method: "POST", headers: AUTH, body: "x" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("PUT");
    const putList = await SELF.fetch(`${API}/v1/sessions/${sid}/files`, { method: "PUT", headers: AUTH, body: "x" });
    expect(putList.status).toBe(405);
    expect(putList.headers.get("allow")).toBe("GET");
    expect(await listing(sid)).toEqual([]);
  });

  it("refuses a file over 10 MiB 413 and keeps one of 10 MiB whole, in chunks under DO SQLite's row limit", async () => {
    const { session_id: sid } = await createSession();
    const over = await put(sid, "big.bin", new Uint8Array(MAX_FILE_BYTES + 1));
    expect(over.status).toBe(413);
    expect(await over.json()).toEqual({ error: "too_large", message: `The file is over ${MAX_FILE_BYTES} bytes; a session file holds at most ${MAX_FILE_BYTES} (10 MiB).` });
    // The same without a length the Worker could read first (a stream).
    const streamed = new ReadableStream<Uint8Array>({
      start(c) {
        for (let n = 0; n < 11; n++) c.enqueue(new Uint8Array(1024 * 1024));
        c.close();
      },
    });
    expect((await put(sid, "big.bin", streamed)).status).toBe(413);
    expect(await listing(sid)).toEqual([]);
    const small = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(text("in "));
        c.enqueue(text("pieces"));
        c.close();
      },
    });
    expect((await put(sid, "streamed.txt", small)).status).toBe(204);
    expect(await listing(sid)).toEqual([{ path: "streamed.txt", size: 9, sha256: await sha256Hex(text("in pieces")) }]);
    expect((await put(sid, "streamed.txt", new Uint8Array(0))).status).toBe(204);
    const data = pattern(MAX_FILE_BYTES);
    expect((await put(sid, "big.bin", data)).status).toBe(204);
    expect(await listing(sid)).toEqual([
      { path: "big.bin", size: MAX_FILE_BYTES, sha256: await sha256Hex(data) },
      { path: "streamed.txt", size: 0, sha256: await sha256Hex(new Uint8Array(0)) },
    ]);
    const rows = await runInDurableObject(env.SESSION.getByName(sid), (_i, state) =>
      state.storage.sql.exec<{ size: number }>("SELECT length(data) AS size FROM file_chunks WHERE path = 'big.bin' ORDER BY n").toArray(),
    );
    expect(rows.map((r) => r.size)).toEqual(Array.from({ length: MAX_FILE_BYTES / CHUNK_BYTES }, () => CHUNK_BYTES));
  });

  it(`refuses a file past the session's ${MAX_SESSION_FILES}th 413 (a re-PUT of a path it has is taken)`, async () => {
    const { session_id: sid } = await createSession();
    for (let n = 0; n < MAX_SESSION_FILES; n++) expect((await put(sid, `f${n}.txt`, `${n}`)).status).toBe(204);
    const answer = await put(sid, "one-more.txt", "x");
    expect(answer.status).toBe(413);
    expect(await answer.json()).toEqual({
      error: "refused",
      message: `The session would have ${MAX_SESSION_FILES + 1} files; it keeps at most ${MAX_SESSION_FILES}, and a PUT to a path it has replaces that file.`,
    });
    expect((await put(sid, "f0.txt", "replaced")).status).toBe(204);
    const files = await listing(sid);
    expect(files).toHaveLength(MAX_SESSION_FILES);
    expect(files.some((f) => f.path === "one-more.txt")).toBe(false);
  });

  it("refuses a file that takes the session past 100 MiB in all 413, and takes a replacement that does not", async () => {
    const { session_id: sid } = await createSession();
    const ten = new Uint8Array(MAX_FILE_BYTES);
    for (let n = 0; n < 9; n++) expect((await put(sid, `f${n}.bin`, ten)).status).toBe(204);
    expect((await put(sid, "f9.bin", new Uint8Array(MAX_FILE_BYTES - 1))).status).toBe(204); // 1 byte under
    const answer = await put(sid, "g.bin", new Uint8Array(2));
    expect(answer.status).toBe(413);
    expect(await answer.json()).toEqual({
      error: "refused",
      message: `The session's files would hold ${100 * 1024 * 1024 + 1} bytes in all; it keeps at most ${100 * 1024 * 1024} (100 MiB).`,
    });
    expect((await put(sid, "f9.bin", ten)).status).toBe(204); // exactly 100 MiB
    expect((await put(sid, "f9.bin", new Uint8Array(MAX_FILE_BYTES + 1))).status).toBe(413);
    const files = await listing(sid);
    expect(files.map((f) => f.path)).toEqual(Array.from({ length: 10 }, (_, n) => `f${n}.bin`));
    expect(files.reduce((a, f) => a + f.size, 0)).toBe(100 * 1024 * 1024);
  });

  it("keeps the files through the Durable Object's eviction (kit do evict)", async () => {
    const { session_id: sid } = await createSession();
    expect((await put(sid, "notes/a.txt", "kept")).status).toBe(204);
    await runInDurableObject(env.SESSION.getByName(sid), (i) => void ((i as unknown as { marker: string }).marker = "old"));
    expect((await kitJson("POST", `/do/${sid}/evict`)).status).toBe(200);
    await runInDurableObject(env.SESSION.getByName(sid), (i) => expect((i as unknown as { marker?: string }).marker).toBeUndefined());
    expect(await listing(sid)).toEqual([{ path: "notes/a.txt", size: 4, sha256: await sha256Hex(text("kept")) }]);
  });
});

describe("the session's files in its container", () => {
  it("reach the container before its first turn, once; a re-PUT reaches it again before the next turn", async () => {
    const session = await createSession();
    const sid = session.session_id;
    const big = pattern(2 * CHUNK_BYTES + 12345);
    expect((await put(sid, "mail/x/notes.txt", "order 1042: two lamps\n")).status).toBe(204);
    expect((await put(sid, "big.bin", big)).status).toBe(204);
    const container = new FakeContainer();
    await attachContainer(sid, container);
    const a = await live(session);
    const first = await turn(a, "one", 1);
    expect(first.at(-1)).toMatchObject({ kind: "result", data: { text: cannedTurn("one").at(-1)!.data.text } });
    expect(container.files.map((f) => [f.path, f.start, f.turnsBefore])).toEqual([
      ["big.bin", 0, 0],
      ["mail/x/notes.txt", 0, 0],
    ]);
    expect(await sha256Hex(container.files[0].data)).toBe(await sha256Hex(big)); // (toEqual takes seconds on 2 MiB)
    expect(read(container.files[1].data)).toBe("order 1042: two lamps\n");
    await turn(a, "two", 2);
    expect(container.files).toHaveLength(2); // the container has them
    expect((await put(sid, "mail/x/notes.txt", "order 1042: three lamps\n")).status).toBe(204);
    await turn(a, "three", 3);
    expect(container.files.slice(2).map((f) => [f.path, read(f.data), f.start, f.turnsBefore])).toEqual([["mail/x/notes.txt", "order 1042: three lamps\n", 0, 2]]);
    // Put back as it was: the sandbox has the other version, so it is given again.
    expect((await put(sid, "mail/x/notes.txt", "order 1042: two lamps\n")).status).toBe(204);
    await turn(a, "four", 4);
    expect(container.files.slice(3).map((f) => [f.path, read(f.data), f.turnsBefore])).toEqual([["mail/x/notes.txt", "order 1042: two lamps\n", 3]]);
    expect(container.starts).toHaveLength(1);
  });

  it("survive eviction and reach the next instance's new container", async () => {
    const session = await createSession();
    const sid = session.session_id;
    expect((await put(sid, "a.txt", "after eviction")).status).toBe(204);
    await kitJson("POST", `/do/${sid}/evict`);
    const container = new FakeContainer();
    await attachContainer(sid, container);
    await turn(await live(session), "one", 1);
    expect(container.files.map((f) => [f.path, read(f.data), f.turnsBefore])).toEqual([["a.txt", "after eviction", 0]]);
  });

  const deaths: Array<{ name: string; death: Death }> = [
    { name: "mid-turn", death: { at: "stream", after: 2, code: 137 } },
    { name: "as it is sent the file", death: { at: "file", code: 137 } },
  ];
  for (const { name, death } of deaths) {
    it(`reach the new container of a turn recovered after the container died ${name}`, async () => {
      const session = await createSession();
      const sid = session.session_id;
      expect((await put(sid, "mail/x/notes.txt", "order 1042: two lamps\n")).status).toBe(204);
      const container = new FakeContainer(undefined, null, [death]);
      await attachContainer(sid, container);
      const frames = await turn(await live(session), "one", 1);
      expect(frames.at(-1)).toMatchObject({ kind: "result", data: { text: recoveredTurn("one").at(-1)!.data.text } });
      expect(frames.filter((f) => f.kind === "sandbox").map((f) => [f.data?.state, f.data?.reason ?? null])).toEqual([
        ["starting", null],
        ["running", null],
        ["died", "killed"],
        ["starting", null],
        ["running", null],
      ]);
      expect(container.starts).toHaveLength(2);
      const got = container.files.map((f) => [f.path, read(f.data), f.start, f.turnsBefore]);
      const second = ["mail/x/notes.txt", "order 1042: two lamps\n", 1, 0];
      expect(got).toEqual(death.at === "file" ? [second] : [["mail/x/notes.txt", "order 1042: two lamps\n", 0, 0], second]);
      expect(container.turns.map((t) => t.recover)).toEqual(death.at === "file" ? [true] : [false, true]);
    });
  }

  it("a file the runtime refuses (a folder on its path is a link) is left out of that container, and the turn runs", async () => {
    const session = await createSession();
    const sid = session.session_id;
    expect((await put(sid, "mail/x/a.txt", "a")).status).toBe(204);
    expect((await put(sid, "b.txt", "b")).status).toBe(204);
    const container = new FakeContainer();
    container.fileAnswer = (path) => (path.startsWith("mail/") ? Response.json({ error: "not_a_folder", message: "'mail' is not a plain folder" }, { status: 409 }) : null);
    await attachContainer(sid, container);
    const a = await live(session);
    expect((await turn(a, "one", 1)).at(-1)).toMatchObject({ kind: "result" });
    expect(container.files.map((f) => f.path)).toEqual(["b.txt"]);
    container.fileAnswer = null;
    expect((await turn(a, "two", 2)).at(-1)).toMatchObject({ kind: "result" });
    expect(container.files.map((f) => f.path)).toEqual(["b.txt"]); // not tried again in it
    // Replaced, it is tried again.
    expect((await put(sid, "mail/x/a.txt", "a2")).status).toBe(204);
    expect((await turn(a, "three", 3)).at(-1)).toMatchObject({ kind: "result" });
    expect(container.files.map((f) => [f.path, f.turnsBefore])).toEqual([
      ["b.txt", 0],
      ["mail/x/a.txt", 2],
    ]);
  });
});
