// Protocol rules the golden transcripts do not reach: the hello deadline (the DO's alarm),
// paged replay of a long backlog, seqs that are not integers, pending resume, dedupe.

import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer, cannedTurn } from "./fake_runtime";
import { Driver } from "./golden";
import { attachContainer, createSession, live as liveSocket, untilEnd } from "./helpers";

type Frame = { type: string; seq?: number; kind?: string; replay?: boolean; [k: string]: unknown };

async function untilResult(driver: Driver): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let n = 0; n < 20_000; n++) {
    const frame = (await driver.recv()) as Frame;
    frames.push(frame);
    if (frame.type === "event" && frame.kind === "result") return frames;
  }
  throw new Error("no result within 20 000 frames");
}

/** A turn of 2 500 text_delta before its answer: a backlog of three pages. */
function longTurn(text: string) {
  const [, ...rest] = cannedTurn(text);
  const deltas = Array.from({ length: 2_500 }, (_, i) => ({ kind: "text_delta", data: { text: `w${i} ` } }));
  return [...deltas, ...rest];
}

describe("protocol", () => {
  it("closes a socket with no hello by its deadline: hello_required, 4400", async () => {
    const session = await createSession();
    const quiet = await Driver.open(session.session_id);
    const stub = env.SESSION.getByName(session.session_id);
    // The clock is data here: the socket is made to have opened 11 s ago.
    await runInDurableObject(stub, (_instance, state) => {
      for (const ws of state.getWebSockets()) ws.serializeAttachment({ ...(ws.deserializeAttachment() as object), opened: Date.now() - 11_000 });
    });
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    expect(await quiet.recv()).toMatchObject({ type: "error", code: "hello_required" });
    expect(await quiet.closed()).toBe(4400);
  });

  it("keeps a socket whose hello deadline has not come", async () => {
    const session = await createSession();
    const driver = await Driver.open(session.session_id);
    expect(await runDurableObjectAlarm(env.SESSION.getByName(session.session_id))).toBe(true);
    driver.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
    expect(await driver.recv()).toMatchObject({ type: "welcome", resume: "none" });
    driver.close();
  });

  it("replays a backlog longer than one page in order, each event once", async () => {
    const session = await createSession();
    await attachContainer(session.session_id, new FakeContainer(longTurn));
    const a = await Driver.open(session.session_id);
    a.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
    await a.recv();
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "long" }));
    const live = await untilResult(a);
    const b = await Driver.open(session.session_id);
    b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: 0 }));
    expect(await b.recv()).toMatchObject({ type: "welcome", resume: "resuming" });
    b.send(JSON.stringify({ type: "ack", seq: 0 }));
    const replayed = await untilResult(b);
    expect(replayed.length).toBeGreaterThan(2_500);
    expect(replayed.map((f) => f.seq)).toEqual(live.map((f) => f.seq));
    expect(replayed.map((f) => f.seq)).toEqual(Array.from({ length: replayed.length }, (_, i) => i + 1));
    a.close();
    b.close();
  });

  it("replays a long backlog a page at a time, each page once the socket has taken the last", async () => {
    const session = await createSession();
    await attachContainer(session.session_id, new FakeContainer(longTurn));
    const a = await Driver.open(session.session_id);
    a.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
    await a.recv();
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "long" }));
    const turn = await untilResult(a);
    const b = await Driver.open(session.session_id);
    const stub = env.SESSION.getByName(session.session_id);
    // The socket says it holds bytes unsent until the test lets them go (workerd under test
    // has no bufferedAmount of its own: cloudflare/workerd#988).
    let holding = true;
    await runInDurableObject(stub, (_instance, state) => {
      const ws = state.getWebSockets().find((w) => (w.deserializeAttachment() as { phase: string }).phase === "hello")!;
      Object.defineProperty(ws, "bufferedAmount", { get: () => (holding ? 1 : 0), configurable: true });
    });
    b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: 0 }));
    expect(await b.recv()).toMatchObject({ type: "welcome", resume: "resuming" });
    b.send(JSON.stringify({ type: "ack", seq: 0 }));
    const first: Frame[] = [];
    for (let n = 0; n < 1000; n++) first.push((await b.recv()) as Frame);
    expect(first.map((f) => f.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    // The replay waits on the socket: it has not read the next page, the socket is not live.
    const waiting = await runInDurableObject(stub, (_instance, state) =>
      state.getWebSockets().map((w) => w.deserializeAttachment() as { phase: string; after: number }).find((s) => s.phase === "handshake"),
    );
    expect(waiting).toMatchObject({ phase: "handshake", after: 1000 });
    expect(b.pending()).toEqual([]);
    holding = false;
    const rest = await untilResult(b);
    expect([...first, ...rest].map((f) => f.seq)).toEqual(turn.map((f) => f.seq));
    expect([...first, ...rest].every((f) => f.replay === true)).toBe(true);
    a.close();
    b.close();
  });

  it("closes a client that falls more than MAX_QUEUED_FRAMES behind with slow_consumer, 4408, and keeps the others", async () => {
    const session = await createSession();
    await attachContainer(session.session_id, new FakeContainer());
    const stub = env.SESSION.getByName(session.session_id);
    const slow = await liveSocket(session);
    // This socket takes nothing: every frame sent to it stays queued.
    await runInDurableObject(stub, (instance, state) => {
      (instance as unknown as { maxQueuedFrames: number }).maxQueuedFrames = 5;
      for (const ws of state.getWebSockets()) Object.defineProperty(ws, "bufferedAmount", { get: () => 1e12, configurable: true });
    });
    const fast = await Driver.open(session.session_id);
    fast.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
    expect(await fast.recv()).toMatchObject({ resume: "none" });
    slow.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(fast);
    expect(turn.at(-1)).toMatchObject({ kind: "result" });
    const got: Frame[] = [];
    for (let n = 0; n < 7; n++) got.push((await slow.recv()) as Frame);
    expect(got.slice(0, 6).map((f) => f.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(got[6]).toMatchObject({ type: "error", code: "slow_consumer" });
    expect(await slow.closed()).toBe(4408);
    fast.close();
  });

  it("refuses seqs that are not integers or are past 2^63 - 1, and accepts 2^63 - 1 as seq_ahead", async () => {
    const session = await createSession();
    const driver = await Driver.open(session.session_id);
    for (const raw of ["true", "3.0", "1e2", "-1", '"3"', "9223372036854775808", "1".repeat(30)]) {
      driver.send(`{"type":"hello","token":"${session.token}","last_seq":${raw}}`);
      expect(await driver.recv(), raw).toMatchObject({ type: "error", code: "bad_frame" });
    }
    driver.send(`{"type":"hello","token":"${session.token}","last_seq":9223372036854775807}`);
    expect(await driver.recv()).toMatchObject({ type: "error", code: "seq_ahead" });
    expect(await driver.closed()).toBe(4400);
  });

  it("a repeated client_msg_id adds nothing; a caught-up client with no open turn is welcomed with none", async () => {
    const session = await createSession();
    const a = await Driver.open(session.session_id);
    a.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
    await a.recv();
    const container = new FakeContainer();
    await attachContainer(session.session_id, container);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilResult(a);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "changed" }));
    a.send(JSON.stringify({ type: "ping" }));
    expect(await a.recv()).toEqual({ type: "pong" });
    expect(container.turns).toHaveLength(1);
    const b = await Driver.open(session.session_id);
    b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: turn.at(-1)!.seq }));
    expect(await b.recv()).toMatchObject({ type: "welcome", resume: "none" });
    a.close();
    b.close();
  });

  it("welcomes with pending while a turn is open and the client has every event", async () => {
    const session = await createSession();
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    await attachContainer(session.session_id, new FakeContainer(cannedTurn, gate));
    const a = await Driver.open(session.session_id);
    a.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
    await a.recv();
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const early: Frame[] = [];
    for (let n = 0; n < 3; n++) early.push((await a.recv()) as Frame); // user, starting, running
    expect(early.map((f) => f.kind)).toEqual(["user", "sandbox", "sandbox"]);
    const b = await Driver.open(session.session_id);
    b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: 3 }));
    expect(await b.recv()).toMatchObject({ type: "welcome", resume: "pending", last_seq: 3 });
    b.send(JSON.stringify({ type: "ack", seq: 3 }));
    release();
    const rest = await untilResult(b);
    expect(rest[0]).toMatchObject({ seq: 4, kind: "text_delta" });
    expect(rest.map((f) => f.seq)).toEqual(Array.from({ length: rest.length }, (_, i) => i + 4));
    a.close();
    b.close();
  });
});
