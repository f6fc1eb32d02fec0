// The runtime API seam (src/runtime.ts) as kit's Python host uses it
// (kit/host/runtime_client.py): readiness as `wait_ready` decides it, and the turn's NDJSON
// stream read line by line within MAX_LINE_BYTES.

import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { RuntimeLost, ndjsonLines } from "../src/runtime";
import { FakeContainer, cannedTurn, type HealthScript } from "./fake_runtime";
import { attachContainer, createSession, live, untilEnd, type Frame } from "./helpers";

/** Knobs of the session's turn runner (src/runner.ts), set on its instance. */
async function tune(sessionId: string, knobs: Record<string, number>): Promise<void> {
  await runInDurableObject(env.SESSION.getByName(sessionId), (instance) => {
    Object.assign((instance as unknown as { runner: object }).runner, knobs);
  });
}

/** The `sandbox` events' states, and the first `failed` one's message. */
function sandboxes(frames: Frame[]): { states: unknown[]; failed: string | undefined } {
  const events = frames.filter((f) => f.kind === "sandbox");
  return { states: events.map((f) => f.data?.state), failed: events.find((f) => f.data?.state === "failed")?.data?.message as string | undefined };
}

/** A turn whose first container never gets ready as `health` says; the second one does. */
async function firstStartFails(health: HealthScript, answersWhenStopped = false): Promise<Frame[]> {
  const session = await createSession();
  const container = new FakeContainer();
  container.health = (fake, start, probe) =>
    start === 0 ? health(fake, start, probe) : { ok: true, ready: true, state: "ready", resumed: false, session_id: session.session_id };
  container.answersWhenStopped = answersWhenStopped;
  await attachContainer(session.session_id, container);
  await tune(session.session_id, { readyTimeoutMs: 300 });
  const a = await live(session);
  a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
  const turn = await untilEnd(a);
  a.close();
  expect(turn.at(-1)).toMatchObject({ kind: "result", data: { text: cannedTurn("one").at(-1)!.data.text } });
  return turn;
}

describe("runtime readiness (kit/host/runtime_client.py wait_ready)", () => {
  it("does not take an answer without ready for readiness, and gives up at the deadline", async () => {
    const turn = await firstStartFails((fake) => ({ ok: true, session_id: fake.sessionId }));
    expect(sandboxes(turn)).toEqual({ states: ["starting", "failed", "starting", "running"], failed: expect.stringContaining("did not get ready in 0.3 s") });
  });

  it("refuses a runtime that answers for another session, or for none", async () => {
    const turn = await firstStartFails(() => ({ ok: true, ready: true, state: "ready", resumed: false, session_id: "someone-else" }));
    expect(sandboxes(turn).failed).toContain('answered for session "someone-else"');
    expect(sandboxes(await firstStartFails(() => ({}))).failed).toContain("answered for session null");
  });

  it("stops waiting when the runtime's agent says it stopped", async () => {
    const turn = await firstStartFails((fake) => ({ ok: true, ready: false, state: "stopped", session_id: fake.sessionId }));
    expect(sandboxes(turn).failed).toContain("stopped before it was ready");
  });

  it("notices a container that stopped between probes while its port answers 503", async () => {
    const turn = await firstStartFails((fake, _start, probe) => {
      if (probe === 1) fake.exit(1);
      return new Response("starting", { status: 503 });
    }, true);
    expect(sandboxes(turn).failed).toContain("The container stopped before its runtime was ready");
  });
});

/** A turn whose first runtime answers with `body`; the container stays up. */
async function firstStreamIs(body: () => Uint8Array[]): Promise<{ turn: Frame[]; container: FakeContainer }> {
  const session = await createSession();
  const container = new FakeContainer();
  let first = true;
  container.rawTurn = () => {
    const chunks = first ? body() : cannedTurn("one").map((e) => new TextEncoder().encode(JSON.stringify(e) + "\n"));
    first = false;
    return new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(next);
      },
    });
  };
  await attachContainer(session.session_id, container);
  await tune(session.session_id, { exitWaitMs: 100 });
  const a = await live(session);
  a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
  const turn = await untilEnd(a);
  a.close();
  return { turn, container };
}

describe("the turn's NDJSON stream (kit/host/runtime_client.py)", () => {
  it("takes a line longer than MAX_LINE_BYTES (16 MiB) for a lost sandbox", async () => {
    const line = new TextEncoder().encode(JSON.stringify({ kind: "text_delta", data: { text: "x".repeat(16 * 1024 * 1024) } }) + "\n");
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < line.length; at += 64 * 1024) chunks.push(line.subarray(at, at + 64 * 1024));
    const { turn, container } = await firstStreamIs(() => chunks);
    expect(turn.filter((f) => f.kind === "sandbox").map((f) => [f.data?.state, f.data?.reason ?? null])).toEqual([
      ["starting", null], ["running", null], ["died", "unresponsive"], ["starting", null], ["running", null],
    ]);
    expect(turn.filter((f) => f.kind === "text_delta").every((f) => (f.data?.text as string).length < 100)).toBe(true);
    expect(container.turns.map((t) => t.recover)).toEqual([false, true]);
  });

  it("takes a line that is not UTF-8 for a lost sandbox, as Python's strict decode does", async () => {
    const bad = new TextEncoder().encode('{"kind":"text_delta","data":{"text":"ab\u00e9"}}\n');
    const cut = bad.slice(); // "é" is 0xc3 0xa9: make it 0xc3 0x28, which no UTF-8 decoder takes
    cut[cut.indexOf(0xa9)] = 0x28;
    const { turn } = await firstStreamIs(() => [cut]);
    expect(turn.filter((f) => f.kind === "text_delta").map((f) => f.data?.text)).not.toContain("ab\ufffd(");
    expect(turn.filter((f) => f.kind === "sandbox").map((f) => f.data?.state)).toEqual(["starting", "running", "died", "starting", "running"]);
  });

  it("reads lines split across chunks, characters split across chunks, and many lines in one chunk", async () => {
    const events = [
      ...Array.from({ length: 3_000 }, (_, i) => ({ kind: "text_delta", data: { text: `é${i} ` } })),
      ...cannedTurn("one").slice(-2),
    ];
    const bytes = new TextEncoder().encode(events.map((e) => JSON.stringify(e)).join("\n\n") + "\n");
    const half = bytes.indexOf(0xa9, 1000); // inside the second byte of an "é"
    const chunks = [bytes.subarray(0, 7), bytes.subarray(7, half), bytes.subarray(half, half + 1), bytes.subarray(half + 1)];
    const { turn } = await firstStreamIs(() => chunks);
    const deltas = turn.filter((f) => f.kind === "text_delta").map((f) => f.data?.text);
    expect(deltas).toEqual(events.slice(0, 3_000).map((e) => e.data.text));
    expect(turn.filter((f) => f.kind === "sandbox").map((f) => f.data?.state)).toEqual(["starting", "running"]);
  });

  it("cuts a line at the cap without reading on, however long the line goes", async () => {
    const collect = async (chunks: string[], cap: number) => {
      let pulled = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (pulled === chunks.length) return controller.close();
          controller.enqueue(new TextEncoder().encode(chunks[pulled++]));
        },
      }, { highWaterMark: 0 });
      const lines: string[] = [];
      try {
        for await (const line of ndjsonLines(body, cap)) lines.push(line);
      } catch (exc) {
        return { lines, pulled, lost: exc instanceof RuntimeLost };
      }
      return { lines, pulled, lost: false };
    };
    expect(await collect(["abcd\n", "ab", "cd", "\nabcd"], 4)).toEqual({ lines: ["abcd", "abcd", "abcd"], pulled: 4, lost: false });
    expect(await collect(["ab\nab", "cde", "ignored", "ignored"], 4)).toEqual({ lines: ["ab"], pulled: 2, lost: true });
    expect(await collect([" \t\n", "\r\n", "x"], 4)).toEqual({ lines: ["x"], pulled: 3, lost: false });
  });
});
