// Turns through the runtime seam: interrupts of a streaming turn, a DO with no container,
// a runtime whose stream ends without a result (recovery is a TODO seam: the turn fails).

import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer, cannedTurn } from "./fake_runtime";
import { Driver } from "./golden";
import { attachContainer, createSession, type NewSession } from "./helpers";

type Frame = { type: string; seq?: number; kind?: string; turn_id?: string | null; data?: Record<string, unknown>; [k: string]: unknown };

async function live(session: NewSession): Promise<Driver> {
  const driver = await Driver.open(session.session_id);
  driver.send(JSON.stringify({ type: "hello", token: session.token, last_seq: null }));
  expect(await driver.recv()).toMatchObject({ type: "welcome", resume: "none" });
  return driver;
}

/** Events up to and including the turn's end (`result` or `error` turn_failed). */
async function untilEnd(driver: Driver): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let n = 0; n < 10_000; n++) {
    const f = (await driver.recv()) as Frame;
    frames.push(f);
    if (f.kind === "result" || (f.kind === "error" && f.data?.code === "turn_failed")) return frames;
  }
  throw new Error("no end of turn within 10 000 frames");
}

describe("turns", () => {
  it("passes an interrupt to the runtime streaming the turn, and answers in order", async () => {
    const session = await createSession();
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    await attachContainer(session.session_id, new FakeContainer(cannedTurn, gate));
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    for (let n = 0; n < 3; n++) await a.recv(); // user, sandbox starting, sandbox running
    a.send(JSON.stringify({ type: "interrupt" }));
    a.send(JSON.stringify({ type: "ping" }));
    expect(await a.recv()).toEqual({ type: "interrupt_ack", turn_id: "t1", interrupted: true });
    expect(await a.recv()).toEqual({ type: "pong" });
    release();
    expect((await untilEnd(a)).at(-1)).toMatchObject({ kind: "result", turn_id: "t1" });
    a.close();
  });

  it("logs sandbox failed and turn_failed when the DO has no container, and takes the next message", async () => {
    const session = await createSession();
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    expect(turn.map((f) => [f.kind, f.data?.state ?? f.data?.code ?? null])).toEqual([
      ["user", null],
      ["sandbox", "starting"],
      ["sandbox", "failed"],
      ["error", "turn_failed"],
    ]);
    expect(turn[2].data).toMatchObject({ tier: "basic", message: expect.stringContaining("wrangler.jsonc") });
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    expect((await untilEnd(a))[0]).toMatchObject({ kind: "user", turn_id: "t2", seq: 5 });
    a.close();
  });

  it("fails the turn (recovery is not ported yet) when the runtime's stream ends with no result", async () => {
    const session = await createSession();
    const cut = (text: string) => cannedTurn(text).filter((e) => e.kind !== "result");
    await attachContainer(session.session_id, new FakeContainer(cut));
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    expect(turn.at(-1)).toMatchObject({ kind: "error", turn_id: "t1", data: { code: "turn_failed" } });
    expect(turn.filter((f) => f.kind === "assistant")).toHaveLength(1);
    a.close();
  });

  it("starts a new container for the next turn once the last one stopped", async () => {
    const session = await createSession();
    const container = new FakeContainer();
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    await untilEnd(a);
    await runInDurableObject(env.SESSION.getByName(session.session_id), () => container.exit(137));
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const turn = await untilEnd(a);
    expect(turn.map((f) => f.data?.state).filter((s) => s !== undefined)).toEqual(["starting", "running"]);
    expect(container.starts).toHaveLength(2);
    a.close();
  });
});
