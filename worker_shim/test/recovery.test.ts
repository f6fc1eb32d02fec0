// Recovery when the container dies mid-turn, and when the DO itself is evicted mid-turn:
// the turn planner's decisions (src/turns.ts) carried out by SessionDO. Each case checks
// the answer's text, the `sandbox` events kit's host would log, and that the client sees
// every event exactly once with contiguous seqs.

import { abortAllDurableObjects, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer, cannedOrRecovered, cannedTurn, recoveredTurn, toolTurn, type Death, type RuntimeEventLine } from "./fake_runtime";
import { Driver } from "./golden";
import { attachContainer, createSession, live, untilEnd, type Frame } from "./helpers";

/** The final answer of a script's turn. */
function answer(lines: RuntimeEventLine[]): string {
  return lines.at(-1)!.data.text as string;
}

/** Seqs 1..n, each once, in order. */
function expectContiguous(frames: Frame[]): void {
  const seqs = frames.filter((f) => f.type === "event").map((f) => f.seq);
  expect(seqs).toEqual(seqs.map((_, i) => i + 1));
}

/** The `sandbox` events' [state, reason] in order. */
function sandboxStates(frames: Frame[]): Array<[unknown, unknown]> {
  return frames.filter((f) => f.kind === "sandbox").map((f) => [f.data?.state, f.data?.reason ?? null]);
}

const byRecover = (first: (text: string) => RuntimeEventLine[]) => (text: string, recover: boolean) =>
  recover ? recoveredTurn(text) : first(text);

describe("recovery from a dying container", () => {
  const cases: Array<{ name: string; death: Death; script: (text: string) => RuntimeEventLine[]; died: [string, string, number]; recovered: boolean }> = [
    { name: "before its runtime is ready", death: { at: "start", code: 1 }, script: cannedTurn, died: ["failed", "", 0], recovered: false },
    { name: "mid-stream after 2 events (SIGKILL)", death: { at: "stream", after: 2, code: 137 }, script: cannedTurn, died: ["died", "killed", 137], recovered: true },
    { name: "during the tool (OOM)", death: { at: "stream", after: 2, code: 137, oom: true }, script: toolTurn, died: ["died", "oom", 137], recovered: true },
    { name: "mid-stream, signalled (SIGTERM)", death: { at: "stream", after: 3, code: 143 }, script: cannedTurn, died: ["stopped", "stopped", 143], recovered: true },
    { name: "when the stream closes with no result (harness died)", death: { at: "stream", after: 4, code: 70, close: true }, script: cannedTurn, died: ["died", "harness", 70], recovered: true },
  ];

  for (const c of cases) {
    it(`recovers a turn whose container dies ${c.name}`, async () => {
      const session = await createSession();
      const container = new FakeContainer(byRecover(c.script), null, [c.death]);
      await attachContainer(session.session_id, container);
      const a = await live(session);
      a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
      const turn = await untilEnd(a);
      const [state, reason, code] = c.died;
      const expected = c.recovered ? recoveredTurn("one") : cannedTurn("one");
      expect(turn.at(-1)).toMatchObject({ kind: "result", turn_id: "t1", data: { text: answer(expected) } });
      expectContiguous(turn);
      expect(turn.every((f) => f.turn_id === "t1" && f.replay === false)).toBe(true);
      expect(sandboxStates(turn)).toEqual(
        c.recovered
          ? [["starting", null], ["running", null], [state, reason], ["starting", null], ["running", null]]
          : [["starting", null], ["failed", null], ["starting", null], ["running", null]],
      );
      if (c.recovered) {
        const died = turn.find((f) => f.kind === "sandbox" && f.data?.state === state)!;
        expect(died.data).toMatchObject({ reason, exit_code: code, sandbox_id: expect.stringMatching(/^sbx-/) });
        // Events of the dead container stay; nothing after its death is from it.
        const cut = turn.indexOf(died);
        expect(turn.slice(3, cut).map((f) => f.kind)).toEqual(c.script("one").slice(0, (c.death as { after: number }).after).map((e) => e.kind));
      }
      expect(container.turns.map((t) => t.recover)).toEqual(c.recovered ? [false, true] : [false]);
      expect(container.starts).toHaveLength(2);
      a.close();
    });
  }

  it("destroys a container that stays up after its stream broke (unresponsive) and recovers the turn", async () => {
    const session = await createSession();
    // The first stream closes after 3 lines with no result, and the container runs on.
    const cut = (text: string, recover: boolean) => (recover ? recoveredTurn(text) : cannedTurn(text).slice(0, 3));
    const container = new FakeContainer(cut);
    await attachContainer(session.session_id, container);
    await runInDurableObject(env.SESSION.getByName(session.session_id), (instance) => {
      (instance as unknown as { runner: { exitWaitMs: number } }).runner.exitWaitMs = 200; // EXIT_WAIT_MS is 10 s
    });
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    expect(turn.at(-1)).toMatchObject({ kind: "result", data: { text: answer(recoveredTurn("one")) } });
    expect(sandboxStates(turn)).toEqual([["starting", null], ["running", null], ["died", "unresponsive"], ["starting", null], ["running", null]]);
    expect(turn.find((f) => f.data?.reason === "unresponsive")?.data?.exit_code).toBe(137);
    expectContiguous(turn);
    a.close();
  });

  it("gives the turn up after five containers died, then takes the next message", async () => {
    const session = await createSession();
    const deaths: Death[] = Array.from({ length: 5 }, () => ({ at: "stream", after: 1, code: 137 }));
    const container = new FakeContainer(cannedOrRecovered, null, deaths);
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    expect(turn.at(-1)).toMatchObject({ kind: "error", turn_id: "t1", data: { code: "turn_failed", message: expect.stringContaining("given up after 5 sandboxes") } });
    const attempt: Array<[unknown, unknown]> = [["starting", null], ["running", null], ["died", "killed"]];
    expect(sandboxStates(turn)).toEqual([...attempt, ...attempt, ...attempt, ...attempt, ...attempt]);
    expect(container.turns.map((t) => t.recover)).toEqual([false, true, true, true, true]);
    expect(turn.filter((f) => f.kind === "result")).toHaveLength(0);
    expectContiguous(turn);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const next = await untilEnd(a);
    expect(next.at(-1)).toMatchObject({ kind: "result", turn_id: "t2", data: { text: answer(cannedTurn("two")) } });
    expectContiguous([...turn, ...next]);
    a.close();
  });
});

describe("recovery from a Durable Object instance lost mid-turn", () => {
  // evictDurableObject waits for in-flight work to drain, and a turn in flight is exactly
  // that; so the instance is thrown away with abortAllDurableObjects (as a code update or a
  // crash of the runtime does it): its sockets close, its storage stays, the client
  // reconnects with last_seq.
  for (const wake of ["alarm", "hello"] as const) {
    it(`finishes the turn once the ${wake} wakes the DO, with no event lost or repeated`, async () => {
      const session = await createSession();
      // The first turn's stream holds after 2 lines, forever (its instance is lost there).
      const container = new FakeContainer(cannedOrRecovered, new Promise<void>(() => {}));
      container.holdAfter = 2;
      await attachContainer(session.session_id, container);
      const a = await live(session);
      a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
      const before: Frame[] = [];
      for (let n = 0; n < 5; n++) before.push((await a.recv()) as Frame); // user, starting, running, 2 text_delta
      expect(before.map((f) => f.kind)).toEqual(["user", "sandbox", "sandbox", "text_delta", "text_delta"]);
      container.holdAfter = -1; // the recovered turn streams without holding

      const stub = env.SESSION.getByName(session.session_id);
      await abortAllDurableObjects();
      container.forgetInstance();
      // The container outlived the instance: the new one is given the same (still running).
      await attachContainer(session.session_id, container);
      expect(container.running).toBe(true);
      if (wake === "alarm") {
        expect(await runDurableObjectAlarm(stub)).toBe(true); // an alarm is set while a turn is open
        // The alarm alone finishes the turn, before any client comes back.
        await runInDurableObject(stub, (instance) => (instance as unknown as { runner: { turnsRun: Promise<void> } }).runner.turnsRun);
      } else {
        // No alarm (not even the hello deadline of the first socket): only the hello wakes it.
        await runInDurableObject(stub, (_instance, state) => state.storage.deleteAlarm());
      }
      const b = await Driver.open(session.session_id);
      b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: before.at(-1)!.seq }));
      const welcome = (await b.recv()) as Frame;
      if (wake === "alarm") {
        expect(welcome).toMatchObject({ resume: "resuming", last_seq: before.at(-1)!.seq! + 2 + recoveredTurn("one").length }); // the whole turn
      } else {
        expect(["resuming", "pending"]).toContain(welcome.resume);
      }
      b.send(JSON.stringify({ type: "ack", seq: welcome.last_seq }));
      // b said hello: its deadline alarm is moot; drop it so it cannot wake the DO either.
      if (wake === "hello") await runInDurableObject(stub, (_instance, state) => state.storage.deleteAlarm());
      const after = await untilEnd(b);
      const turn = [...before, ...after];
      expect(turn.at(-1)).toMatchObject({ kind: "result", turn_id: "t1", data: { text: answer(recoveredTurn("one")) } });
      expectContiguous(turn);
      // The container the lost instance left is stopped without an event, as kit's host
      // stops its sandboxes when it restarts (docs/protocol.md §4).
      expect(sandboxStates(turn)).toEqual([["starting", null], ["running", null], ["starting", null], ["running", null]]);
      expect(container.turns.map((t) => t.recover)).toEqual([false, true]);
      a.close();
      b.close();
    });
  }
});

/** A turn whose text_delta after the first word is `size` characters long (once). */
function oversized(size: number): (text: string, recover: boolean) => RuntimeEventLine[] {
  let sent = false;
  return (text, recover) => {
    const lines = cannedOrRecovered(text, recover);
    if (sent) return lines;
    sent = true;
    return [lines[0], { kind: "text_delta", data: { text: "x".repeat(size) } }, ...lines.slice(1)];
  };
}

describe("a turn the host fails on mid-stream", () => {
  it("refuses an event over the 2 MB row limit of DO SQLite: turn_failed, nothing of it stored", async () => {
    const session = await createSession();
    await attachContainer(session.session_id, new FakeContainer(oversized(2_100_000)));
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    expect(turn.at(-1)).toMatchObject({
      kind: "error",
      turn_id: "t1",
      data: { code: "turn_failed", message: expect.stringMatching(/^The host failed on this turn: a text_delta event of 21000\d\d bytes is over the 2000000 bytes/) },
    });
    expect(turn.filter((f) => f.kind !== "sandbox").map((f) => f.kind)).toEqual(["user", "text_delta", "error"]);
    expect(turn.every((f) => JSON.stringify(f).length < 10_000)).toBe(true);
    expectContiguous(turn);
    a.close();
  });

  it("stops the sandbox it left mid-turn, so the next turn starts a fresh one instead of meeting a busy runtime", async () => {
    const session = await createSession();
    const container = new FakeContainer(oversized(2_100_000));
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const first = await untilEnd(a);
    expect(first.at(-1)).toMatchObject({ kind: "error", data: { code: "turn_failed" } });
    const stopped = first.filter((f) => f.kind === "sandbox").at(-1)!;
    expect(stopped).toMatchObject({ turn_id: "t1", data: { state: "stopped", reason: "stopped", exit_code: 137 } });
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const second = await untilEnd(a);
    expect(second.at(-1)).toMatchObject({ kind: "result", turn_id: "t2", data: { text: answer(cannedTurn("two")) } });
    expect(sandboxStates(second)).toEqual([["starting", null], ["running", null]]);
    expect(container.busyRefusals).toBe(0);
    expect(container.turns.map((t) => [t.turn_id, t.recover])).toEqual([["t1", false], ["t2", false]]);
    expect(container.starts).toHaveLength(2);
    expectContiguous([...first, ...second]);
    a.close();
  });
});
