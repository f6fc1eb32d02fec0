// Every golden protocol transcript of kit (kit/protocol/golden/*.jsonl) replayed against
// the shim in workerd, with a fake container serving the runtime API.

import { describe, expect, it } from "vitest";
import { FakeContainer } from "./fake_runtime";
import { replayGolden } from "./golden";
import { attachContainer, createSession } from "./helpers";

const transcripts = import.meta.glob("../../kit/protocol/golden/*.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;
const names = Object.keys(transcripts).map((path) => path.split("/").pop()!.replace(/\.jsonl$/, "")).sort();

describe("golden transcripts", () => {
  it("finds kit's transcripts", () => {
    expect(names).toEqual(expect.arrayContaining(["bad_input", "chat_and_resume", "interrupt", "oversize"]));
  });

  for (const name of names) {
    it(`replays ${name}`, async () => {
      const session = await createSession();
      await attachContainer(session.session_id, new FakeContainer());
      const text = transcripts[`../../kit/protocol/golden/${name}.jsonl`];
      await replayGolden(name, text, session.session_id, { token: session.token, session_id: session.session_id });
    });
  }
});
