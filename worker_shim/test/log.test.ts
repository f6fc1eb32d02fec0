// The session's storage (src/log.ts): the schema every instance of an existing session
// makes sure of, the turn counter kept in `meta`.

import { evictDurableObject, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { FakeContainer } from "./fake_runtime";
import { Driver } from "./golden";
import { attachContainer, createSession, live, untilEnd } from "./helpers";

type Sql = { exec<T extends Record<string, SqlStorageValue>>(query: string, ...bindings: unknown[]): { toArray(): T[] } };

/** `meta` `turn_count` of the session's DO, or null. */
async function turnCount(sessionId: string): Promise<string | null> {
  return await runInDurableObject(env.SESSION.getByName(sessionId), (_instance, state) => {
    const rows = (state.storage.sql as Sql).exec<{ value: string }>("SELECT value FROM meta WHERE key = 'turn_count'").toArray();
    return rows[0]?.value ?? null;
  });
}

describe("session log", () => {
  it("keeps the number of turns in meta, so numbering a turn reads one row", async () => {
    const session = await createSession();
    expect(await turnCount(session.session_id)).toBe("0");
    await attachContainer(session.session_id, new FakeContainer());
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    await untilEnd(a);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    expect((await untilEnd(a))[0]).toMatchObject({ kind: "user", turn_id: "t2" });
    expect(await turnCount(session.session_id)).toBe("2");
    a.close();
  });

  it("gives a session stored by an older shim (no turns table, no turn counter) the schema on its next instance", async () => {
    const session = await createSession();
    const stub = env.SESSION.getByName(session.session_id);
    await runInDurableObject(stub, (_instance, state) => {
      state.storage.sql.exec("DROP INDEX turns_open");
      state.storage.sql.exec("DROP TABLE turns");
      state.storage.sql.exec("DELETE FROM meta WHERE key = 'turn_count'");
    });
    await evictDurableObject(stub);
    await attachContainer(session.session_id, new FakeContainer());
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    expect(turn.at(-1)).toMatchObject({ kind: "result", turn_id: "t1" });
    expect(await turnCount(session.session_id)).toBe("1");
    a.close();
  });

  it("numbers on from the turns a session already has when its counter is missing", async () => {
    const session = await createSession();
    const container = new FakeContainer();
    await attachContainer(session.session_id, container);
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const first = await untilEnd(a);
    a.close();
    const stub = env.SESSION.getByName(session.session_id);
    await runInDurableObject(stub, (_instance, state) => state.storage.sql.exec("DELETE FROM meta WHERE key = 'turn_count'"));
    await evictDurableObject(stub);
    await attachContainer(session.session_id, container);
    const b = await Driver.open(session.session_id);
    b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: first.at(-1)!.seq }));
    expect(await b.recv()).toMatchObject({ type: "welcome", resume: "none" });
    b.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    expect((await untilEnd(b))[0]).toMatchObject({ kind: "user", turn_id: "t2" });
    expect(await turnCount(session.session_id)).toBe("2");
    b.close();
  });
});

describe("a turn's end", () => {
  it("stores the result and the turn's end state in one transaction: no separate state write follows", async () => {
    const session = await createSession();
    const stub = env.SESSION.getByName(session.session_id);
    await runInDurableObject(stub, (instance) => {
      const log = (instance as unknown as { log: { setTurnState(turnId: string, state: string, attempt?: boolean): void } }).log;
      const alive = log.setTurnState.bind(log);
      // The instance dies on any end-state write made on its own (after the answer is stored).
      log.setTurnState = (turnId, state, attempt) => {
        if (state === "completed" || state === "failed") throw new Error("the instance died here");
        alive(turnId, state, attempt);
      };
    });
    await attachContainer(session.session_id, new FakeContainer());
    const a = await live(session);
    a.send(JSON.stringify({ type: "user", client_msg_id: "c-1", text: "one" }));
    const turn = await untilEnd(a);
    expect(turn.at(-1)).toMatchObject({ kind: "result", turn_id: "t1" });
    const states = await runInDurableObject(stub, (_instance, state) =>
      (state.storage.sql as Sql).exec<{ state: string }>("SELECT state FROM turns WHERE turn_id = 't1'").toArray(),
    );
    expect(states).toEqual([{ state: "completed" }]);
    a.close();
  });
});
