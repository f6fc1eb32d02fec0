// Protocol rules the golden transcripts do not reach: the hello deadline (the DO's alarm),
// paged replay of a long backlog, seqs that are not integers, pending resume, dedupe.

import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer, cannedTurn } from "./fake_runtime";
import { Driver } from "./golden";
import { attachContainer, createSession } from "./helpers";

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
    const long = (text: string) => {
      const [, ...rest] = cannedTurn(text);
      const deltas = Array.from({ length: 2_500 }, (_, i) => ({ kind: "text_delta", data: { text: `w${i} ` } }));
      return [...deltas, ...rest];
    };
    await attachContainer(session.session_id, new FakeContainer(long));
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
