// Hibernation mid-conversation: the DO instance is thrown away between turns (its sockets
// hibernated, as workerd does after ~10 s idle); a woken instance knows each socket's state
// from its attachment, and a resume by last_seq gets every event after it exactly once.

import { evictDurableObject, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer } from "./fake_runtime";
import { Driver } from "./golden";
import { attachContainer, createSession, type NewSession } from "./helpers";

type Frame = { type: string; seq?: number; kind?: string; replay?: boolean; data?: Record<string, unknown>; [k: string]: unknown };

/** Frames up to and including the next `result` event (bounded). */
async function untilResult(driver: Driver): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let n = 0; n < 10_000; n++) {
    const frame = (await driver.recv()) as Frame;
    frames.push(frame);
    if (frame.type === "event" && frame.kind === "result") return frames;
  }
  throw new Error("no result within 10 000 frames");
}

async function hello(session: NewSession, lastSeq: number | null): Promise<[Driver, Frame]> {
  const driver = await Driver.open(session.session_id);
  driver.send(JSON.stringify({ type: "hello", token: session.token, last_seq: lastSeq }));
  return [driver, (await driver.recv()) as Frame];
}

/** Evict the session's DO with its sockets hibernated; check a new instance took over. */
async function hibernate(session: NewSession): Promise<void> {
  const stub = env.SESSION.getByName(session.session_id);
  await runInDurableObject(stub, (instance) => {
    (instance as unknown as { marker?: string }).marker = "old instance";
  });
  await evictDurableObject(stub, { webSockets: "hibernate" });
  await runInDurableObject(stub, (instance) => {
    expect((instance as unknown as { marker?: string }).marker).toBeUndefined();
  });
}

describe("hibernation", () => {
  it("a live socket keeps its place across hibernation, and a resume by last_seq loses and repeats nothing", async () => {
    const session = await createSession();
    const container = new FakeContainer();
    await attachContainer(session.session_id, container);
    const [a, welcome] = await hello(session, null);
    expect(welcome).toMatchObject({ type: "welcome", resume: "none", last_seq: 0 });
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "first" }));
    const turn1 = await untilResult(a);
    const end1 = turn1.at(-1)!.seq!;

    await hibernate(session);
    await attachContainer(session.session_id, container); // the container outlived the DO

    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "second" }));
    const turn2 = await untilResult(a);
    const seen = [...turn1, ...turn2].map((f) => f.seq);
    expect(seen).toEqual(Array.from({ length: seen.length }, (_, i) => i + 1));
    expect(turn2[0]).toMatchObject({ kind: "user", seq: end1 + 1, replay: false, turn_id: "t2" });
    expect(container.starts).toHaveLength(1);
    expect(container.turns.map((t) => t.turn_id)).toEqual(["t1", "t2"]);

    await hibernate(session);
    const [b, resumed] = await hello(session, end1);
    expect(resumed).toMatchObject({ type: "welcome", resume: "resuming", last_seq: turn2.at(-1)!.seq });
    b.send(JSON.stringify({ type: "ack", seq: end1 }));
    const replayed = await untilResult(b);
    expect(replayed.map((f) => f.seq)).toEqual(turn2.map((f) => f.seq));
    expect(replayed.every((f) => f.replay === true)).toBe(true);
    b.send(JSON.stringify({ type: "ping" }));
    expect(await b.recv()).toEqual({ type: "pong" }); // nothing repeated after the replay
    a.close();
    b.close();
  });

  it("a socket hibernated between welcome and ack replays from its hello's last_seq", async () => {
    const session = await createSession();
    await attachContainer(session.session_id, new FakeContainer());
    const [a] = await hello(session, null);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "first" }));
    const turn = await untilResult(a);
    const [b, welcome] = await hello(session, 2);
    expect(welcome).toMatchObject({ resume: "resuming" });

    await hibernate(session);
    b.send(JSON.stringify({ type: "ack", seq: 2 }));
    const replayed = await untilResult(b);
    expect(replayed.map((f) => f.seq)).toEqual(turn.slice(2).map((f) => f.seq));
    expect(replayed.every((f) => f.replay === true)).toBe(true);
    a.close();
    b.close();
  });
});
