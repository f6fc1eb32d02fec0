// The mail rules replay kit/mail/golden/{route,compose,strip,attachments}.jsonl, the cases
// tests/mail/test_golden.py replays against kit/mail: both hosts route, strip and compose
// alike.

import { describe, expect, it } from "vitest";
import { composeReply, toRaw } from "../src/mail/compose";
import { parse } from "../src/mail/message";
import { Agent, REFUSALS, decide, threadIds, tokens, type Thread } from "../src/mail/rules";
import { attachmentFolder } from "../src/mail/handler";
import type { Inbound } from "../src/mail/message";
import { attachmentPlan, stripQuotes, turnText } from "../src/mail/text";

const files = import.meta.glob("../../kit/mail/golden/*.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Case = Record<string, any>;

function load(name: string): Case[] {
  const text = files[`../../kit/mail/golden/${name}.jsonl`];
  if (text === undefined) throw new Error(`kit/mail/golden/${name}.jsonl is missing`);
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Case);
}

/** A case's mail as it arrives: CRLF line ends (the runners send CRLF). */
function raw(text: string): Uint8Array {
  return new TextEncoder().encode(text.replaceAll("\n", "\r\n"));
}

function route(c: Case): Record<string, unknown> {
  const agent = new Agent(c.agent);
  const env = c.envelope ?? {};
  const msg = parse(raw(c.mail), { from: env.from, to: env.to });
  const threads = c.threads as Array<Thread & { message_ids: string[] }>;
  const toks = tokens(msg, agent);
  const byToken = threads.find((t) => toks.length > 0 && t.token === toks[0]) ?? null;
  let byReference: Thread | null = null;
  for (const mid of threadIds(msg)) {
    byReference = threads.find((t) => t.message_ids.includes(mid)) ?? null;
    if (byReference !== null) break;
  }
  const d = decide(msg, agent, {
    seen: (c.seen as string[]).includes(msg.message_id),
    byToken,
    byReference,
    authenticated: c.auth === undefined ? null : c.auth === "pass",
  });
  const got: Record<string, unknown> = { action: d.action };
  if (d.thread !== undefined) got.session_id = d.thread.session_id;
  if (d.reason !== undefined) got.reason = d.reason;
  if (d.action !== "refuse") got.text = turnText(msg);
  return got;
}

describe("kit/mail/golden/route.jsonl", () => {
  for (const c of load("route")) {
    it(c.name, () => {
      expect(route(c)).toEqual(c.expect);
    });
  }

  it("reaches every refusal reason (a reason no case reaches is a rule never checked)", () => {
    const reached = new Set(load("route").map((c) => c.expect.reason));
    expect(Object.keys(REFUSALS).filter((r) => !reached.has(r))).toEqual([]);
  });
});

describe("kit/mail/golden/compose.jsonl", () => {
  for (const c of load("compose")) {
    it(c.name, async () => {
      const msg = parse(raw(c.mail));
      const reply = await composeReply(msg, new Agent(c.agent.address, c.agent.name), c.token, c.answer);
      for (const [header, value] of Object.entries(c.expect as Record<string, string>)) {
        if (header === "body") expect(reply.body).toBe(value);
        else expect(reply.headers.find(([n]) => n === header)?.[1], header).toBe(value);
      }
      // The raw form reads back as the same headers and body.
      const back = parse(new TextEncoder().encode(toRaw(reply)));
      for (const [header, value] of Object.entries(c.expect as Record<string, string>)) {
        if (header === "body") expect(back.text).toBe(value);
        else expect(back.headers[header.toLowerCase()], header).toBe(value);
      }
    });
  }
});

describe("kit/mail/golden/strip.jsonl", () => {
  for (const c of load("strip")) {
    it(c.name, () => {
      expect(stripQuotes(c.text)).toBe(c.expect);
    });
  }
});

/** A case of attachments.jsonl as a message: its fields, each attachment `count` times (no
 * bytes: the plan reads names and sizes). */
function withAttachments(c: Case): Inbound {
  const m = c.message;
  const attachments = (c.attachments as Case[]).flatMap((a) =>
    Array.from({ length: a.count ?? 1 }, () => ({ filename: a.filename, content_type: a.content_type, size: a.size, data: new Uint8Array(0) })),
  );
  return {
    message_id: m.message_id,
    sender: m.sender,
    sender_name: m.sender_name,
    recipients: ["agent@example.com"],
    return_path: null,
    subject: m.subject,
    in_reply_to: [],
    references: [],
    headers: {},
    text: m.text,
    attachments,
  };
}

describe("kit/mail/golden/attachments.jsonl", () => {
  for (const c of load("attachments")) {
    it(c.name, async () => {
      const msg = withAttachments(c);
      expect(await attachmentFolder(msg.message_id)).toBe(c.folder);
      const plan = attachmentPlan(msg, c.folder);
      expect(plan).toEqual(c.expect.plan);
      expect(turnText(msg, plan.map(([, why]) => why))).toBe(c.expect.text);
    });
  }
});

describe("the raw reply", () => {
  it("encodes a non-ASCII name, subject and body so they read back whole", async () => {
    const msg = parse(raw("From: Zoë Ünal <zoe@example.org>\nTo: agent@example.com\nSubject: =?UTF-8?B?Q29tbWFuZGUgbsKwNDI=?=\nMessage-ID: <x1@example.org>\n\nBonjour\n"));
    const reply = await composeReply(msg, new Agent("agent@example.com", "Agent Ω"), "tok", "Voilà — ça part lundi.");
    const text = toRaw(reply);
    expect(/^[\x00-\x7f]*$/.test(text)).toBe(true);
    const back = parse(new TextEncoder().encode(text));
    expect(back.headers["subject"]).toBe("Re: Commande n°42");
    expect(back.headers["to"]).toBe("Zoë Ünal <zoe@example.org>");
    expect(back.headers["from"]).toBe("Agent Ω <agent+tok@example.com>");
    expect(back.text).toBe("Voilà — ça part lundi.\n");
  });
});
