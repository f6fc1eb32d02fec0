// Turns through the runtime seam: interrupts of a streaming turn, a DO with no container,
// and the next turn after a container stopped between turns.

import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer, cannedTurn } from "./fake_runtime";
import { attachContainer, createSession, live, untilEnd } from "./helpers";

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

  it("acks an interrupt passed to the sandbox running the turn as interrupted, whatever the runtime answers (as kit's host does)", async () => {
    const session = await createSession();
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    const container = new FakeContainer(cannedTurn, gate);
    container.interruptAnswer = false; // the runtime had nothing to stop (it answers false)
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "interrupt" }));
    expect(await a.recv()).toEqual({ type: "interrupt_ack", turn_id: null, interrupted: false });
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    for (let n = 0; n < 3; n++) await a.recv(); // user, sandbox starting, sandbox running
    a.send(JSON.stringify({ type: "interrupt" }));
    expect(await a.recv()).toEqual({ type: "interrupt_ack", turn_id: "t1", interrupted: true });
    release();
    expect((await untilEnd(a)).at(-1)).toMatchObject({ kind: "result", turn_id: "t1" });
    a.close();
  });

  it("acks an interrupt of a turn whose sandbox is still starting as not interrupted", async () => {
    const session = await createSession();
    const container = new FakeContainer();
    let ready = false;
    container.health = (fake) => ({ ok: true, ready, state: ready ? "ready" : "starting", resumed: false, session_id: fake.sessionId });
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    for (let n = 0; n < 2; n++) await a.recv(); // user, sandbox starting
    a.send(JSON.stringify({ type: "interrupt" }));
    expect(await a.recv()).toEqual({ type: "interrupt_ack", turn_id: "t1", interrupted: false });
    ready = true;
    expect((await untilEnd(a)).at(-1)).toMatchObject({ kind: "result", turn_id: "t1" });
    a.close();
  });

  it("tries five sandboxes when the DO has no container, gives the turn up, and takes the next message", async () => {
    const session = await createSession();
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    const attempt = [["sandbox", "starting"], ["sandbox", "failed"]];
    expect(turn.map((f) => [f.kind, f.data?.state ?? f.data?.code ?? null])).toEqual([
      ["user", null],
      ...attempt, ...attempt, ...attempt, ...attempt, ...attempt,
      ["error", "turn_failed"],
    ]);
    expect(turn[2].data).toMatchObject({ tier: "basic", message: expect.stringContaining("wrangler.jsonc") });
    expect(turn.at(-1)?.data?.message).toContain("given up after 5 sandboxes");
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    expect((await untilEnd(a))[0]).toMatchObject({ kind: "user", turn_id: "t2", seq: turn.length + 1 });
    a.close();
  });

  it("logs the container's exit between turns and starts a new one for the next turn", async () => {
    const session = await createSession();
    const container = new FakeContainer();
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    await untilEnd(a);
    await runInDurableObject(env.SESSION.getByName(session.session_id), () => container.exit(137));
    expect(await a.recv()).toMatchObject({ kind: "sandbox", turn_id: null, data: { state: "died", reason: "killed", exit_code: 137 } });
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const turn = await untilEnd(a);
    expect(turn.map((f) => f.data?.state).filter((s) => s !== undefined)).toEqual(["starting", "running"]);
    expect(container.starts).toHaveLength(2);
    a.close();
  });
});
