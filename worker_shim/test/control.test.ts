// kit's control API on the shim (src/control.ts, src/sessioncontrol.ts) answers as
// kit/cli/control.py does: the same routes, JSON shapes, status codes and NDJSON, behind
// the API token.

import { SELF, listDurableObjectIds, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer, cannedOrRecovered, cannedTurn, recoveredTurn } from "./fake_runtime";
import { Driver } from "./golden";
import { API, attachContainer, createSession, live, sessionWithTurn, untilEnd, type Frame, type NewSession } from "./helpers";
import { LineReader, kit, kitJson, lines, onControl, type Line } from "./controlhelpers";

const UNKNOWN = "00000000-0000-4000-8000-000000000000";
const ROUTES: Array<[string, string]> = [
  ["GET", "/_kit/sessions"],
  ["GET", `/_kit/sessions/${UNKNOWN}/events`],
  ["GET", `/_kit/sessions/${UNKNOWN}/events?follow=1`],
  ["GET", "/_kit/sandboxes"],
  ["POST", `/_kit/sandboxes/${UNKNOWN}/kill`],
  ["POST", `/_kit/sandboxes/${UNKNOWN}/oom`],
  ["POST", `/_kit/do/${UNKNOWN}/evict`],
];

/** The rows of `GET /_kit/sessions` by session id. */
async function sessionRows(): Promise<Record<string, Record<string, unknown>>> {
  const { status, body } = await kitJson("GET", "/sessions");
  expect(status).toBe(200);
  return Object.fromEntries((body.sessions as Array<Record<string, unknown>>).map((r) => [r.session_id as string, r]));
}

/** The session's stored events (GET …/events), then its end line. */
async function stored(sessionId: string, after = 0): Promise<Line[]> {
  const answer = await kit("GET", `/sessions/${sessionId}/events?after=${after}`);
  expect(answer.status).toBe(200);
  expect(answer.headers.get("content-type")).toBe("application/x-ndjson");
  return (await lines(answer)).items;
}

/** The `sandbox` events' [state, reason, exit_code] in order. */
function sandboxStates(items: Array<Line | Frame>): Array<[unknown, unknown, unknown]> {
  return items.filter((f) => f.kind === "sandbox").map((f) => [f.data?.state, f.data?.reason ?? null, f.data?.exit_code ?? null]);
}

describe("the control API's guard", () => {
  for (const [method, path] of ROUTES) {
    for (const [how, headers] of [
      ["no token", {}],
      ["a wrong token", { authorization: "Bearer kit-api-wrong" }],
    ] as Array<[string, Record<string, string>]>) {
      it(`refuses ${method} ${path} with ${how}: 401`, async () => {
        const answer = await SELF.fetch(`${API}${path}`, { method, headers });
        expect(answer.status).toBe(401);
        expect(answer.headers.get("www-authenticate")).toBe("Bearer");
        expect(await answer.json()).toEqual({ error: "unauthorized", message: "Send Authorization: Bearer <the host's API token>." });
      });
    }
  }

  it("answers a known path with the wrong method 405, and an unknown one 404", async () => {
    expect((await kit("POST", "/sessions")).status).toBe(405);
    expect((await kit("GET", `/do/${UNKNOWN}/evict`)).status).toBe(405);
    expect((await kit("GET", "/nothing")).status).toBe(404);
  });
});

describe("GET /_kit/sessions", () => {
  it("lists each session with its turns, last event, sandbox and whether it is in memory", async () => {
    const [busy, a] = await sessionWithTurn();
    const fresh = await createSession();
    // An index row whose session never came to be (its DO failed at init) is no session.
    await env.SESSION_INDEX.getByName("sessions").add(crypto.randomUUID(), Date.now() + 60_000);
    const rows = await sessionRows();
    expect(rows[busy.session_id]).toEqual({
      session_id: busy.session_id,
      created_ms: expect.any(Number),
      last_seq: 1 + 2 + cannedTurn("one").length,
      last_kind: "result",
      last_ts: expect.any(Number),
      turns: 1,
      open_turns: 0,
      sandbox: "running",
      loaded: true,
    });
    expect(rows[fresh.session_id]).toEqual({
      session_id: fresh.session_id,
      created_ms: expect.any(Number),
      last_seq: 0,
      last_kind: null,
      last_ts: null,
      turns: 0,
      open_turns: 0,
      sandbox: "none",
      loaded: false,
    });
    const { body } = await kitJson("GET", "/sessions");
    const order = (body.sessions as Array<{ session_id: string; last_ts: number | null; created_ms: number }>).map((r) => r.last_ts || r.created_ms);
    expect(order).toEqual([...order].sort((x, y) => y - x)); // the most recently active first
    expect(Object.values(rows).every((r) => "error" in r || typeof r.created_ms === "number")).toBe(true);
    // A socket alone puts a session in memory.
    const f = await live(fresh);
    expect((await sessionRows())[fresh.session_id]).toMatchObject({ loaded: true, sandbox: "none" });
    f.close();
    a.close();
  });

  it("shows an open turn, and a session's sandbox as starting while its container starts", async () => {
    const session = await createSession();
    // The runtime does not get ready while the test looks.
    const container = new FakeContainer();
    container.health = (fake) => ({ ok: true, ready: false, state: "starting", session_id: fake.sessionId });
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    expect(((await a.recv()) as Frame).kind).toBe("user");
    expect(((await a.recv()) as Frame).data?.state).toBe("starting");
    const row = (await sessionRows())[session.session_id];
    expect([row.turns, row.open_turns, row.sandbox, row.loaded]).toEqual([1, 1, "starting", true]);
    const killed = await kitJson("POST", `/sandboxes/${session.session_id}/kill`);
    expect(killed).toEqual({
      status: 409,
      body: { error: "sandbox_starting", message: `Session ${session.session_id}'s sandbox is starting; try again once \`kit sandbox list\` shows it running.` },
    });
    container.health = null; // ready now
    expect((await untilEnd(a)).at(-1)).toMatchObject({ kind: "result" });
    a.close();
  });
});

describe("GET /_kit/sessions/{id}/events", () => {
  it("gives the stored events as kit dev's NDJSON: Python's separators, then the end line", async () => {
    const [session, a, turn] = await sessionWithTurn();
    const answer = await kit("GET", `/sessions/${session.session_id}/events`);
    const { items, text } = await lines(answer);
    const first = turn[0];
    expect(text.split("\n")[0]).toBe(
      `{"seq": 1, "kind": "user", "turn_id": "t1", "data": {"client_msg_id": "c-1", "text": "one"}, "ts": ${first.ts}}`,
    );
    expect(items.slice(0, -1).map((l) => [l.seq, l.kind, l.data])).toEqual(turn.map((f) => [f.seq, f.kind, f.data]));
    expect(items.at(-1)).toEqual({ end: "done", message: `${turn.length} event(s).` });
    expect(text.endsWith(`{"end": "done", "message": "${turn.length} event(s)."}\n`)).toBe(true);
    const later = await stored(session.session_id, 3);
    expect(later.slice(0, -1).map((l) => l.seq)).toEqual(turn.slice(3).map((f) => f.seq));
    expect(later.at(-1)).toEqual({ end: "done", message: `${turn.length - 3} event(s).` });
    a.close();
  });

  it("refuses a malformed id 400, a bad ?after= 400, an unknown session 404", async () => {
    const session = await createSession();
    expect(await kitJson("GET", "/sessions/nope/events")).toEqual({
      status: 400,
      body: { error: "bad_session_id", message: "'nope' is not a session id (a lowercase UUID); `kit sessions` lists them." },
    });
    expect((await kitJson("GET", `/sessions/${session.session_id.toUpperCase()}/events`)).status).toBe(400);
    for (const after of ["-1", "x", "1.5", ""]) {
      expect(await kitJson("GET", `/sessions/${session.session_id}/events?after=${after}`)).toEqual({
        status: 400,
        body: { error: "bad_after", message: "Give ?after= a seq: a whole number, 0 or more." },
      });
    }
    for (const follow of ["0", "1"]) {
      expect(await kitJson("GET", `/sessions/${UNKNOWN}/events?follow=${follow}`)).toEqual({
        status: 404,
        body: { error: "unknown_session", message: `No session ${UNKNOWN} in this host's log store; \`kit sessions\` lists them.` },
      });
    }
    // Asking wrote nothing into the unknown id's object.
    await runInDurableObject(env.SESSION.getByName(UNKNOWN), (_instance, state) => {
      const tables = state.storage.sql.exec<{ name: string }>("SELECT name FROM sqlite_master").toArray();
      expect(tables.map((t) => t.name).filter((n) => !n.startsWith("_cf_"))).toEqual([]);
    });
  });

  it("follows: the stored events, then live ones as they are committed, each once", async () => {
    const [session, a, turn] = await sessionWithTurn();
    const sid = session.session_id;
    const follow = new LineReader(await kit("GET", `/sessions/${sid}/events?follow=1`));
    const backlog = await follow.until(turn.at(-1)!.seq!);
    expect(backlog.map((l) => l.seq)).toEqual(turn.map((f) => f.seq));
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const second = await untilEnd(a);
    const followed = await follow.until(second.at(-1)!.seq!);
    expect(followed.map((l) => [l.seq, l.kind, l.data])).toEqual(second.map((f) => [f.seq, f.kind, f.data]));
    expect(followed.at(-1)?.data?.text).toBe(cannedTurn("two").at(-1)!.data.text);
    expect(follow.raw).not.toContain(""); // live, within the first segment (60 s)
    await follow.cancel();
    a.close();
  });

  it("follows across segments: the Worker asks again from its cursor, nothing lost or repeated", async () => {
    const [session, a, turn] = await sessionWithTurn();
    const sid = session.session_id;
    await onControl(sid, (i) => void (i.control.segmentMs = 200)); // FOLLOW_SEGMENT_MS is 60 s
    const follow = new LineReader(await kit("GET", `/sessions/${sid}/events?follow=1`, undefined));
    await follow.until(turn.at(-1)!.seq!);
    for (let n = 0; n < 1_000 && (await follow.nextRaw()) !== ""; n++); // a segment ended
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const second = await untilEnd(a);
    for (let n = 0; n < 1_000 && (await follow.nextRaw()) !== ""; n++); // and another
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-3", text: "three" }));
    const third = await untilEnd(a);
    await follow.until(third.at(-1)!.seq!);
    expect(follow.raw.filter((l) => l !== "").map((l) => (JSON.parse(l) as Line).seq)).toEqual(
      [...turn, ...second, ...third].map((f) => f.seq),
    );
    expect(follow.raw.filter((l) => l === "").length).toBeGreaterThanOrEqual(2);
    await follow.cancel();
    a.close();
  });

  it("a follower is detached once its client goes away", async () => {
    const [session, a, turn] = await sessionWithTurn();
    const sid = session.session_id;
    const follow = new LineReader(await kit("GET", `/sessions/${sid}/events?follow=1`));
    await follow.until(turn.at(-1)!.seq!);
    await onControl(sid, (i) => expect(i.control.followers.size).toBe(1));
    expect((await sessionRows())[sid].loaded).toBe(true);
    await follow.cancel();
    await onControl(sid, (i) => expect(i.control.followers.size).toBe(0));
    a.close();
  });
});

describe("GET /_kit/sandboxes and kill, oom", () => {
  it("lists the running sandbox; kill (KILL, the default) logs it died killed 137 and the next turn starts a new one", async () => {
    const [session, a, turn] = await sessionWithTurn();
    const sid = session.session_id;
    const sandboxId = turn.find((f) => f.kind === "sandbox" && f.data?.state === "running")!.data!.sandbox_id;
    const { body } = await kitJson("GET", "/sandboxes");
    const mine = (body.sandboxes as Array<Record<string, unknown>>).filter((r) => r.session_id === sid);
    expect(mine).toEqual([{ session_id: sid, sandbox_id: sandboxId, tier: "basic", state: "running", pid: null, pooled: false }]);

    expect(await kitJson("POST", `/sandboxes/${sid}/kill`)).toEqual({ status: 202, body: { sandbox_id: sandboxId, signal: 9 } });
    const died = (await a.recv()) as Frame;
    expect(died).toMatchObject({ kind: "sandbox", turn_id: null, data: { state: "died", sandbox_id: sandboxId, reason: "killed", exit_code: 137 } });
    const listed = await kitJson("GET", "/sandboxes");
    expect((listed.body.sandboxes as Array<Record<string, unknown>>).filter((r) => r.session_id === sid)).toEqual([]);
    expect((await sessionRows())[sid].sandbox).toBe("none");
    expect(await kitJson("POST", `/sandboxes/${sid}/kill`, '{"signal": "TERM"}')).toEqual({
      status: 404,
      body: { error: "no_sandbox", message: `Session ${sid} has no running sandbox here; \`kit sandbox list\` shows the running ones.` },
    });
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const next = await untilEnd(a);
    expect(sandboxStates(next)).toEqual([["starting", null, null], ["running", null, null]]);
    expect(next.at(-1)).toMatchObject({ kind: "result", data: { text: cannedTurn("two").at(-1)!.data.text } });
    a.close();
  });

  it("sends the signal asked for: TERM is logged stopped 143", async () => {
    const [session, a] = await sessionWithTurn();
    const sent = await kitJson("POST", `/sandboxes/${session.session_id}/kill`, '{"signal": "sigterm"}');
    expect(sent).toMatchObject({ status: 202, body: { signal: 15 } });
    expect(await a.recv()).toMatchObject({ kind: "sandbox", data: { state: "stopped", reason: "stopped", exit_code: 143 } });
    a.close();
  });

  it("refuses a bad body or signal 400, a malformed or unknown id 404, as kit dev does", async () => {
    const message = (name: string) => `Unknown signal ${name}; use a name like KILL, TERM, INT or SEGV, or a number.`;
    const cases: Array<[string, string | undefined, number, Record<string, unknown>]> = [
      [UNKNOWN, "[", 400, { error: "bad_body", message: 'Send a JSON object, e.g. {"signal": "TERM"}.' }],
      [UNKNOWN, "[1]", 400, { error: "bad_body", message: 'Send a JSON object, e.g. {"signal": "TERM"}.' }],
      [UNKNOWN, '{"signal": "NOPE"}', 400, { error: "bad_signal", message: message("'NOPE'") }],
      [UNKNOWN, '{"signal": "SIGSIGKILL"}', 400, { error: "bad_signal", message: message("'SIGSIGKILL'") }],
      [UNKNOWN, '{"signal": 33}', 400, { error: "bad_signal", message: message("'33'") }],
      [UNKNOWN, '{"signal": null}', 400, { error: "bad_signal", message: message("'None'") }],
      [UNKNOWN, '{"signal": "it\'s"}', 400, { error: "bad_signal", message: message(`"it's"`) }],
      ["nope", undefined, 404, { error: "no_sandbox", message: "Session nope has no running sandbox here; `kit sandbox list` shows the running ones." }],
      [UNKNOWN, '{"signal": " 9 "}', 404, { error: "no_sandbox", message: `Session ${UNKNOWN} has no running sandbox here; \`kit sandbox list\` shows the running ones.` }],
    ];
    for (const [id, body, status, answer] of cases) {
      expect(await kitJson("POST", `/sandboxes/${id}/kill`, body), `${id} ${body}`).toEqual({ status, body: answer });
    }
    expect(await kitJson("POST", `/sandboxes/${UNKNOWN}/oom`)).toMatchObject({ status: 404, body: { error: "no_sandbox" } });
    expect(await kitJson("POST", "/sandboxes/nope/oom")).toMatchObject({ status: 404, body: { error: "no_sandbox" } });
    // A malformed id is answered without making a Durable Object of it.
    const made = (await listDurableObjectIds(env.SESSION)).map((id) => id.toString());
    expect(made).not.toContain(env.SESSION.idFromName("nope").toString());
    expect(made).toContain(env.SESSION.idFromName(UNKNOWN).toString()); // asked (reads only)
  });

  it("OOM: 409 where the container has no hook (Cloudflare's); with one, the sandbox dies oom 137", async () => {
    const [session, a, turn] = await sessionWithTurn();
    const sandboxId = turn.find((f) => f.data?.state === "running")!.data!.sandbox_id;
    expect(await kitJson("POST", `/sandboxes/${session.session_id}/oom`)).toEqual({
      status: 409,
      body: { error: "cannot_oom", message: `Sandbox ${sandboxId} cannot rehearse an OOM kill (its provider has no such hook).` },
    });
    a.close();

    const oomable = Object.assign(new FakeContainer(), {
      async oom(this: FakeContainer): Promise<void> {
        this.exit(137, true);
      },
    });
    const [other, b, first] = await sessionWithTurn(oomable);
    const id = first.find((f) => f.data?.state === "running")!.data!.sandbox_id;
    expect(await kitJson("POST", `/sandboxes/${other.session_id}/oom`)).toEqual({ status: 202, body: { sandbox_id: id } });
    expect(await b.recv()).toMatchObject({ kind: "sandbox", data: { state: "died", sandbox_id: id, reason: "oom", exit_code: 137 } });
    b.close();
  });
});

describe("POST /_kit/do/{id}/evict", () => {
  it("refuses a malformed id 400 and an unknown one 404", async () => {
    expect(await kitJson("POST", "/do/nope/evict")).toEqual({
      status: 400,
      body: { error: "bad_session_id", message: "'nope' is not a session id (a lowercase UUID); `kit sessions` lists them." },
    });
    expect(await kitJson("POST", `/do/${UNKNOWN}/evict`)).toEqual({
      status: 404,
      body: { error: "unknown_session", message: `No session ${UNKNOWN} in this host's log store; \`kit sessions\` lists them.` },
    });
  });

  it("throws the instance away: its socket is told and closed 1001, it resumes on the next instance; again: nothing was in memory", async () => {
    const [session, a, turn] = await sessionWithTurn();
    const sid = session.session_id;
    await onControl(sid, (i) => void ((i as unknown as { marker: string }).marker = "old"));
    expect(await kitJson("POST", `/do/${sid}/evict`)).toEqual({ status: 200, body: { session_id: sid, evicted: true } });
    expect(await a.recv()).toEqual({ type: "error", code: "shutting_down", message: "The session's Durable Object was evicted; reconnect and resume." });
    expect(await a.closed()).toBe(1001);
    await onControl(sid, (i) => expect((i as unknown as { marker?: string }).marker).toBeUndefined());
    // Nothing of it in the new instance (no socket, no turn, no sandbox watched).
    expect((await sessionRows())[sid]).toMatchObject({ loaded: false, turns: 1, last_kind: "result" });
    expect(await kitJson("POST", `/do/${sid}/evict`)).toEqual({ status: 200, body: { session_id: sid, evicted: false } });
    const b = await Driver.open(sid);
    b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: turn.at(-1)!.seq }));
    expect(await b.recv()).toMatchObject({ type: "welcome", resume: "none", last_seq: turn.at(-1)!.seq });
    b.close();
  });

  it("a container an evicted instance left running is listed, and a kill of it is logged by the next instance", async () => {
    const container = new FakeContainer();
    const [session, a, turn] = await sessionWithTurn(container);
    const sid = session.session_id;
    const sandboxId = turn.find((f) => f.data?.state === "running")!.data!.sandbox_id;
    await kitJson("POST", `/do/${sid}/evict`);
    expect(await a.closed()).toBe(1001);
    container.forgetInstance();
    await attachContainer(sid, container); // the container outlived the instance
    const { body } = await kitJson("GET", "/sandboxes");
    expect((body.sandboxes as Array<Record<string, unknown>>).filter((r) => r.session_id === sid)).toEqual([
      { session_id: sid, sandbox_id: sandboxId, tier: "basic", state: "running", pid: null, pooled: false },
    ]);
    expect((await sessionRows())[sid]).toMatchObject({ sandbox: "running", loaded: false });
    expect(await kitJson("POST", `/sandboxes/${sid}/kill`)).toEqual({ status: 202, body: { sandbox_id: sandboxId, signal: 9 } });
    const after = await stored(sid, turn.at(-1)!.seq!);
    expect(after.slice(0, -1)).toEqual([
      expect.objectContaining({ kind: "sandbox", turn_id: null, data: { state: "died", sandbox_id: sandboxId, reason: "killed", exit_code: 137 } }),
    ]);
  });

  it("evicted mid-turn, the turn is resumed by the alarm with the right answer, no event lost or repeated; a follower carries on", async () => {
    const session = await createSession();
    const sid = session.session_id;
    const container = new FakeContainer(cannedOrRecovered, new Promise<void>(() => {})); // the first stream holds for ever
    container.holdAfter = 2;
    await attachContainer(sid, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const before: Frame[] = [];
    for (let n = 0; n < 5; n++) before.push((await a.recv()) as Frame); // user, starting, running, 2 text_delta
    expect(before.map((f) => f.kind)).toEqual(["user", "sandbox", "sandbox", "text_delta", "text_delta"]);
    const follow = new LineReader(await kit("GET", `/sessions/${sid}/events?follow=1`));
    expect((await follow.until(5)).map((l) => l.seq)).toEqual([1, 2, 3, 4, 5]);
    container.holdAfter = -1; // the recovered turn streams without holding

    expect(await kitJson("POST", `/do/${sid}/evict`)).toEqual({ status: 200, body: { session_id: sid, evicted: true } });
    expect(await a.closed()).toBe(1001);
    container.forgetInstance();
    await attachContainer(sid, container);
    expect(container.running).toBe(true);
    // The turn watch alarm (set while a turn is open) wakes it and finishes the turn alone.
    const stub = env.SESSION.getByName(sid);
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    await runInDurableObject(stub, (instance) => (instance as unknown as { runner: { turnsRun: Promise<void> } }).runner.turnsRun);

    const events = (await stored(sid)).slice(0, -1);
    expect(events.map((l) => l.seq)).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1)).toMatchObject({ kind: "result", turn_id: "t1", data: { text: recoveredTurn("one").at(-1)!.data.text } });
    expect(sandboxStates(events)).toEqual([
      ["starting", null, null],
      ["running", null, null],
      ["starting", null, null],
      ["running", null, null],
    ]);
    expect(container.turns.map((t) => t.recover)).toEqual([false, true]);
    // The follower lost its instance and asked the next one: every event, once.
    const rest = await follow.until(events.at(-1)!.seq!);
    expect([1, 2, 3, 4, 5, ...rest.map((l) => l.seq)]).toEqual(events.map((l) => l.seq));
    await follow.cancel();
  });
});

describe("the session index", () => {
  it("a session made before the index existed adds itself when its DO wakes", async () => {
    const id = crypto.randomUUID();
    const stub = env.SESSION.getByName(id);
    await stub.init(id, "0".repeat(64), "basic"); // as the Worker does, minus the index row
    await runInDurableObject(stub, (_instance, state) => {
      state.storage.sql.exec("DELETE FROM meta WHERE key IN ('indexed', 'created_ms')"); // as an older shim left it
    });
    expect(await env.SESSION_INDEX.getByName("sessions").has(id)).toBe(false);
    expect((await kitJson("POST", `/do/${id}/evict`)).status).toBe(200); // found by asking its DO
    await onControl(id, (i) => i.control.registered); // the next instance registers it
    expect(await env.SESSION_INDEX.getByName("sessions").has(id)).toBe(true);
    expect((await sessionRows())[id]).toMatchObject({ session_id: id, created_ms: null, turns: 0 });
  });
});
