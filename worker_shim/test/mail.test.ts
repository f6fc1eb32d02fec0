// The Worker's email() handler and the session DO's replies (src/mail/): a thread is one
// session, refused mail starts nothing, exactly one reply per inbound message (a repeated
// delivery, a container killed mid-turn, the DO lost mid-turn, a failed send), and what
// GET /_kit/mail/outbox and /_kit/mail/refused list; attachments kept as the session's files
// (src/files.ts) before the turn. Replies are read as the user reads them: the raw message
// sent, parsed back.

import { SELF, abortAllDurableObjects, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index";
import type { Env } from "../src/env";
import { acceptMail, attachmentFolder, clientMsgId, deliverMail, email } from "../src/mail/handler";
import { parse, type Inbound } from "../src/mail/message";
import { FAILED_TEXT, MAX_SEND_ATTEMPTS, type Mailer } from "../src/mail/replies";
import { FakeContainer, cannedOrRecovered, cannedTurn, recoveredTurn, type RuntimeEventLine } from "./fake_runtime";
import { API, AUTH } from "./helpers";

const AGENT = "agent@example.com";

/** A message as Email Routing hands it to the Worker, and what it was bounced with. */
function inbound(text: string, envelope: { from?: string; to?: string } = {}) {
  const bytes = new TextEncoder().encode(text.replaceAll("\n", "\r\n"));
  const rejected: string[] = [];
  const from = envelope.from ?? parse(bytes).sender;
  return {
    from,
    to: envelope.to ?? AGENT,
    raw: new Response(bytes).body!,
    rawSize: bytes.length,
    setReject: (reason: string) => void rejected.push(reason),
    rejected,
  };
}

let counter = 0;
/** A fresh Message-ID (tests share the one MailIndex). */
function mid(tag: string): string {
  return `${tag}-${++counter}-${crypto.randomUUID().slice(0, 8)}@example.org`;
}

function mail(o: { from?: string; to?: string; id: string; subject?: string; inReplyTo?: string; references?: string[]; body?: string; extra?: string }): string {
  return [
    `From: ${o.from ?? "Alice <alice@example.org>"}`,
    `To: ${o.to ?? AGENT}`,
    `Subject: ${o.subject ?? "Order 1234"}`,
    `Message-ID: <${o.id}>`,
    "Date: Mon, 07 Dec 2026 10:00:00 +0000",
    ...(o.inReplyTo ? [`In-Reply-To: <${o.inReplyTo}>`] : []),
    ...(o.references ? [`References: ${o.references.map((r) => `<${r}>`).join(" ")}`] : []),
    ...(o.extra ? [o.extra] : []),
    "",
    o.body ?? "Hello, where is my order?",
    "",
  ].join("\n");
}

/** Records what a session's DO sends, as the platform would take it. */
class Recorder implements Mailer {
  readonly sent: Array<{ from: string; to: string; raw: string; read: Inbound; messageId: string }> = [];
  failures = 0;
  async send(from: string, to: string, raw: string): Promise<{ messageId: string }> {
    if (this.failures > 0) {
      this.failures--;
      throw new Error("the platform refused the message (test)");
    }
    const messageId = `<platform-${this.sent.length + 1}-${crypto.randomUUID().slice(0, 8)}@example.com>`;
    this.sent.push({ from, to, raw, read: parse(new TextEncoder().encode(raw)), messageId });
    return { messageId };
  }
}

interface DoInternals {
  mailer: Mailer;
  runner: { turnsRun: Promise<void>; exitWaitMs: number };
  mail: { idle(): Promise<void> };
}

/** Give the session's DO instance a container and a recorder for its replies. */
async function equip(sessionId: string, container: FakeContainer, recorder: Recorder | null): Promise<void> {
  await runInDurableObject(env.SESSION.getByName(sessionId), (instance, state) => {
    (state as { container?: unknown }).container = container;
    if (recorder !== null) (instance as unknown as DoInternals).mailer = recorder;
  });
}

/** Wait until the session's turns have run and the sends their ends started are done. */
async function settle(sessionId: string): Promise<void> {
  await runInDurableObject(env.SESSION.getByName(sessionId), async (instance) => {
    const i = instance as unknown as DoInternals;
    await i.runner.turnsRun;
    await i.mail.idle();
  });
}

/** Accept `text`, equip its (new) session, deliver: the first message of a thread. */
async function firstMessage(text: string, container: FakeContainer, recorder: Recorder | null): Promise<string> {
  const accepted = await acceptMail(inbound(text), env as Env);
  expect(accepted?.action).toBe("new");
  await equip(accepted!.session_id, container, recorder);
  await deliverMail(accepted!, env as Env);
  await settle(accepted!.session_id);
  return accepted!.session_id;
}

async function userTexts(sessionId: string): Promise<string[]> {
  return runInDurableObject(env.SESSION.getByName(sessionId), (_i, state) =>
    state.storage.sql
      .exec<{ data: string }>("SELECT data FROM events WHERE kind = 'user' ORDER BY seq")
      .toArray()
      .map((r) => (JSON.parse(r.data) as { text: string }).text),
  );
}

async function listed(path: string): Promise<Array<Record<string, unknown>>> {
  // The tests share one MailIndex: read them all unless the path says how many.
  const answer = await SELF.fetch(`${API}${path}${path.includes("?") ? "" : "?limit=500"}`, { headers: AUTH });
  expect(answer.status).toBe(200);
  const body = (await answer.json()) as { address: string; items: Array<Record<string, unknown>> };
  expect(body.address).toBe(AGENT);
  return body.items;
}

const answerOf = (lines: RuntimeEventLine[]) => lines.at(-1)!.data.text as string;

describe("a thread of three messages", () => {
  it("is one session with three turns and three threaded replies, the user reading each answer", async () => {
    const recorder = new Recorder();
    const container = new FakeContainer();
    const m1 = mid("m1");
    const sid = await firstMessage(mail({ id: m1, body: "Where is order 1234?" }), container, recorder);
    expect(recorder.sent).toHaveLength(1);
    const r1 = recorder.sent[0];
    const prompt1 = "Email from Alice <alice@example.org>\nSubject: Order 1234\n\nWhere is order 1234?";
    expect(r1.read.text).toBe(answerOf(cannedTurn(prompt1)) + "\n");
    const token = /^agent\+([a-z2-7]{20})@example\.com$/.exec(r1.from)![1];
    expect(r1.to).toBe("alice@example.org");
    expect(r1.read.headers).toMatchObject({
      from: `Acme Support <agent+${token}@example.com>`,
      to: "Alice <alice@example.org>",
      subject: "Re: Order 1234",
      "in-reply-to": `<${m1}>`,
      references: `<${m1}>`,
      "auto-submitted": "auto-replied",
    });

    // The second: a reply to the agent's reply, as a mail client writes it (to the plus
    // address, In-Reply-To the reply's id as delivered, References the thread, the quote).
    const m2 = mid("m2");
    const second = inbound(
      mail({
        id: m2,
        to: `Acme Support <agent+${token}@example.com>`,
        subject: "Re: Order 1234",
        inReplyTo: r1.messageId.slice(1, -1),
        references: [m1, r1.messageId.slice(1, -1)],
        body: `And the second item?\n\nOn Mon, 7 Dec 2026 at 10:01, Acme Support <agent+${token}@example.com> wrote:\n> ${r1.read.text.trim()}`,
      }),
      { to: `agent+${token}@example.com` },
    );
    await email(second, env as Env);
    await settle(sid);
    // The third: the client dropped the plus address (to the bare address); threading
    // headers alone route it.
    const r2 = recorder.sent[1];
    const m3 = mid("m3");
    await email(
      inbound(mail({ id: m3, subject: "Re: Order 1234", inReplyTo: r2.messageId.slice(1, -1), references: [m1, r1.messageId.slice(1, -1), m2, r2.messageId.slice(1, -1)], body: "Thanks!" })),
      env as Env,
    );
    await settle(sid);

    expect(recorder.sent).toHaveLength(3);
    const texts = await userTexts(sid);
    expect(texts).toEqual([prompt1, "Email from Alice <alice@example.org>\nSubject: Re: Order 1234\n\nAnd the second item?", "Email from Alice <alice@example.org>\nSubject: Re: Order 1234\n\nThanks!"]);
    expect(recorder.sent.map((r) => r.read.text)).toEqual(texts.map((t) => answerOf(cannedTurn(t)) + "\n"));
    expect(recorder.sent[2].read.headers["references"]).toBe([m1, r1.messageId.slice(1, -1), m2, r2.messageId.slice(1, -1), m3].map((i) => `<${i}>`).join(" "));
    expect(recorder.sent.every((r) => r.from === `agent+${token}@example.com` && r.read.headers["subject"] === "Re: Order 1234")).toBe(true);
    expect(container.turns.map((t) => t.turn_id)).toEqual(["t1", "t2", "t3"]);

    const outbox = (await listed("/_kit/mail/outbox")).filter((i) => i.session_id === sid);
    expect(outbox.map((i) => i.in_reply_to)).toEqual([m3, m2, m1]); // newest first
    expect(outbox[2]).toEqual({
      in_reply_to: m1,
      session_id: sid,
      from: `agent+${token}@example.com`,
      to: "alice@example.org",
      subject: "Re: Order 1234",
      message_id: r1.messageId.slice(1, -1),
      text: answerOf(cannedTurn(prompt1)),
      created_at: expect.any(Number),
      sent_at: expect.any(Number),
      error: null,
    });
    expect(outbox[2].sent_at as number).toBeGreaterThanOrEqual(outbox[2].created_at as number);
    expect(Math.abs((outbox[2].sent_at as number) - Date.now() / 1000)).toBeLessThan(3600); // seconds, not ms
    // The client_msg_id of each turn comes from its Message-ID.
    const ids = await runInDurableObject(env.SESSION.getByName(sid), (_i, state) =>
      state.storage.sql.exec<{ client_msg_id: string }>("SELECT client_msg_id FROM turns ORDER BY user_seq").toArray().map((r) => r.client_msg_id),
    );
    expect(ids).toEqual([await clientMsgId(m1), await clientMsgId(m2), await clientMsgId(m3)]);
    expect(ids[0]).toMatch(/^mail-[0-9a-f]{40}$/); // as kit/mail/channel.py makes it
  });
});

describe("mail that starts nothing", () => {
  it("a non-participant's reply and a forged In-Reply-To: refused, no session, no reply", async () => {
    const recorder = new Recorder();
    const m1 = mid("m1");
    const sid = await firstMessage(mail({ id: m1 }), new FakeContainer(), recorder);
    const reply = recorder.sent[0].messageId.slice(1, -1);
    const token = recorder.sent[0].from.split("+")[1].split("@")[0];
    const tries = [
      inbound(mail({ from: "mallory@evil.test", id: mid("x"), inReplyTo: reply })),
      inbound(mail({ from: "mallory@evil.test", id: mid("x"), to: `agent+${token}@example.com` }), { to: `agent+${token}@example.com` }),
      inbound(mail({ from: "Mallory <mallory@evil.test>", id: mid("x"), references: [m1] })),
    ];
    for (const t of tries) expect(await acceptMail(t, env as Env)).toBeNull();
    await settle(sid);
    expect(recorder.sent).toHaveLength(1);
    expect(await userTexts(sid)).toHaveLength(1);
    expect(tries.every((t) => t.rejected.length === 0)).toBe(true); // dropped, not bounced
    const refused = await listed("/_kit/mail/refused");
    expect(refused.slice(0, 3).map((r) => [r.reason, r.sender])).toEqual([
      ["not_participant", "mallory@evil.test"],
      ["not_participant", "mallory@evil.test"],
      ["not_participant", "mallory@evil.test"],
    ]);
    expect(refused[0]).toEqual({
      message_id: expect.stringMatching(/^x-/),
      sender: "mallory@evil.test",
      subject: "Order 1234",
      reason: "not_participant",
      detail: "the sender is not a participant of the thread it points at",
      at: expect.any(Number),
    });
  });

  it("an auto-reply storm, the agent's own reply fed back included, gets no reply and no session", async () => {
    const recorder = new Recorder();
    const sid = await firstMessage(mail({ id: mid("m1") }), new FakeContainer(), recorder);
    const own = recorder.sent[0];
    const headers = [
      "Auto-Submitted: auto-replied",
      "Auto-Submitted: auto-generated",
      "Precedence: bulk",
      "Precedence: list",
      "Precedence: junk",
      "List-Id: <announce.example.org>",
      "X-Auto-Response-Suppress: All",
    ];
    const storm: ReturnType<typeof inbound>[] = [];
    const ids = Array.from({ length: 19 }, () => mid("auto"));
    for (let i = 0; i < 18; i++) storm.push(inbound(mail({ id: ids[i], extra: headers[i % headers.length] })));
    storm.push(inbound(mail({ from: "MAILER-DAEMON@mx.example.org", id: ids[18], subject: "Undelivered" }), { from: "" }));
    // The agent's reply delivered back to the agent (a forwarding loop).
    storm.push(inbound(own.raw, { from: own.from, to: AGENT }));
    for (const m of storm) expect(await acceptMail(m, env as Env)).toBeNull();
    await settle(sid);
    expect(recorder.sent).toHaveLength(1);
    expect(storm.every((m) => m.rejected.length === 0)).toBe(true); // never bounced: that feeds a loop
    const refused = (await listed("/_kit/mail/refused")).slice(0, 20);
    expect(refused.map((r) => r.message_id).reverse()).toEqual([...ids, own.read.message_id]);
    expect(new Set(refused.map((r) => r.reason))).toEqual(new Set(["auto_submitted", "precedence", "list", "auto_response_suppress", "null_sender"]));
    expect(refused[0].reason).toBe("auto_submitted"); // the reply is marked Auto-Submitted: auto-replied
  });

  it("bounces mail to another address of the domain and a plus address kit never issued", async () => {
    const other = inbound(mail({ id: mid("o"), to: "someone@example.com" }), { to: "someone@example.com" });
    const forged = inbound(mail({ id: mid("f"), to: "agent+aaaaaaaaaaaaaaaaaaaa@example.com" }), { to: "agent+aaaaaaaaaaaaaaaaaaaa@example.com" });
    await email(other, env as Env);
    await email(forged, env as Env);
    expect(other.rejected).toEqual(["No such mailbox here."]);
    expect(forged.rejected).toEqual(["No such mailbox here: this reply address is not one this agent gave out."]);
    const refused = await listed("/_kit/mail/refused");
    expect(refused.slice(0, 2).map((r) => r.reason)).toEqual(["unknown_token", "not_addressed"]);
  });

  it("a Worker with no agent address refuses all mail, saying which var to set", async () => {
    const m = inbound(mail({ id: mid("n") }));
    await email(m, { ...(env as Env), KIT_MAIL_ADDRESS: undefined });
    expect(m.rejected).toEqual(["This address takes no mail."]);
    const [row] = await listed("/_kit/mail/refused?limit=1");
    expect(row).toMatchObject({ reason: "no_address", detail: expect.stringContaining("KIT_MAIL_ADDRESS"), sender: "alice@example.org" });
  });

  it("mail with no Message-ID is bounced, naming what is missing", async () => {
    const m = inbound("From: alice@example.org\nTo: agent@example.com\nSubject: hi\n\nhello\n", { from: "alice@example.org" });
    await email(m, env as Env);
    expect(m.rejected).toEqual(["The message has no Message-ID header; kit needs one to thread replies."]);
    const [row] = await listed("/_kit/mail/refused?limit=1");
    expect(row).toMatchObject({ reason: "unreadable", message_id: null });
  });
});

describe("exactly one reply per inbound message", () => {
  it("a second delivery of the same Message-ID adds no turn and no reply", async () => {
    const recorder = new Recorder();
    const m1 = mid("m1");
    const text = mail({ id: m1 });
    const sid = await firstMessage(text, new FakeContainer(), recorder);
    const again = inbound(text);
    await email(again, env as Env);
    await settle(sid);
    expect(recorder.sent).toHaveLength(1);
    expect(await userTexts(sid)).toHaveLength(1);
    expect(again.rejected).toEqual([]);
    expect((await listed("/_kit/mail/refused?limit=1"))[0]).toMatchObject({ reason: "duplicate", message_id: m1 });
  });

  it("a delivery retried after the session was made (the handler failed before delivering) starts the turn once", async () => {
    const recorder = new Recorder();
    const text = mail({ id: mid("m1") });
    const first = await acceptMail(inbound(text), env as Env);
    await equip(first!.session_id, new FakeContainer(), recorder);
    // The platform delivers again: routed to the same session, delivered, then once more.
    const retried = await acceptMail(inbound(text), env as Env);
    expect(retried?.session_id).toBe(first!.session_id);
    await deliverMail(retried!, env as Env);
    await deliverMail(first!, env as Env);
    await settle(first!.session_id);
    expect(recorder.sent).toHaveLength(1);
    expect(await userTexts(first!.session_id)).toHaveLength(1);
  });

  it("a container killed mid-turn: the recovered turn's answer is the one reply", async () => {
    const recorder = new Recorder();
    const container = new FakeContainer(cannedOrRecovered, null, [{ at: "stream", after: 2, code: 137 }]);
    const sid = await firstMessage(mail({ id: mid("m1"), body: "Slow one" }), container, recorder);
    const prompt = "Email from Alice <alice@example.org>\nSubject: Order 1234\n\nSlow one";
    expect(container.turns.map((t) => t.recover)).toEqual([false, true]);
    expect(recorder.sent.map((r) => r.read.text)).toEqual([answerOf(recoveredTurn(prompt)) + "\n"]);
    expect((await listed("/_kit/mail/outbox")).filter((i) => i.session_id === sid)).toHaveLength(1);
  });

  it("the DO lost mid-turn: the alarm finishes the turn and sends its one reply", async () => {
    const recorder = new Recorder();
    const container = new FakeContainer(cannedOrRecovered, new Promise<void>(() => {}));
    container.holdAfter = 2;
    const m1 = mid("m1");
    const accepted = await acceptMail(inbound(mail({ id: m1, body: "Hold on" })), env as Env);
    await equip(accepted!.session_id, container, recorder);
    await deliverMail(accepted!, env as Env);
    const stub = env.SESSION.getByName(accepted!.session_id);
    // Until the held stream gave its 2 lines (bounded: 10 s).
    for (let n = 0; n < 1_000 && container.turns.length === 0; n++) await scheduler.wait(10);
    expect(container.turns).toHaveLength(1);
    container.holdAfter = -1;
    await abortAllDurableObjects();
    container.forgetInstance();
    await equip(accepted!.session_id, container, recorder);
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    await settle(accepted!.session_id);
    const prompt = "Email from Alice <alice@example.org>\nSubject: Order 1234\n\nHold on";
    expect(recorder.sent.map((r) => r.read.text)).toEqual([answerOf(recoveredTurn(prompt)) + "\n"]);
    expect(recorder.sent[0].read.headers["in-reply-to"]).toBe(`<${m1}>`);
    // Nothing more on the next alarm.
    await runDurableObjectAlarm(stub);
    await settle(accepted!.session_id);
    expect(recorder.sent).toHaveLength(1);
  });

  it("a send the platform refuses is tried again by the alarm, once it goes through", async () => {
    const recorder = new Recorder();
    recorder.failures = 1;
    const sid = await firstMessage(mail({ id: mid("m1") }), new FakeContainer(), recorder);
    expect(recorder.sent).toHaveLength(0);
    const stub = env.SESSION.getByName(sid);
    expect(await runDurableObjectAlarm(stub)).toBe(true); // set for the retry
    expect(recorder.sent).toHaveLength(1);
    await runDurableObjectAlarm(stub);
    await settle(sid);
    expect(recorder.sent).toHaveLength(1);
    expect((await listed("/_kit/mail/outbox")).filter((i) => i.session_id === sid)).toMatchObject([{ sent_at: expect.any(Number), error: null }]);
  });

  it(`gives a reply up after ${MAX_SEND_ATTEMPTS} refused sends, listed failed with the platform's error`, async () => {
    const recorder = new Recorder();
    recorder.failures = MAX_SEND_ATTEMPTS;
    const sid = await firstMessage(mail({ id: mid("m1") }), new FakeContainer(), recorder);
    const stub = env.SESSION.getByName(sid);
    for (let n = 1; n < MAX_SEND_ATTEMPTS; n++) expect(await runDurableObjectAlarm(stub)).toBe(true);
    await settle(sid);
    expect(recorder.sent).toHaveLength(0);
    expect((await listed("/_kit/mail/outbox")).filter((i) => i.session_id === sid)).toMatchObject([
      { sent_at: null, error: "the platform refused the message (test)" },
    ]);
  });

  it("a failed turn is answered with a short apology naming why", async () => {
    const recorder = new Recorder();
    const failing = () => [{ kind: "error", data: { code: "turn_failed", message: "the agent raised" } }];
    await firstMessage(mail({ id: mid("m1") }), new FakeContainer(failing), recorder);
    expect(recorder.sent.map((r) => r.read.text)).toEqual([FAILED_TEXT.replace("{why}", "the agent raised") + "\n"]);
    expect(recorder.sent[0].read.text).toBe("Sorry, I could not answer this message (the agent raised). Nothing was lost: write again to retry.\n");
  });

  it("sends through the send_email binding (wrangler's local one): the platform sets the Message-ID", async () => {
    const m1 = mid("m1");
    const sid = await firstMessage(mail({ id: m1 }), new FakeContainer(), null);
    const [item] = (await listed("/_kit/mail/outbox")).filter((i) => i.session_id === sid);
    expect(item).toMatchObject({ sent_at: expect.any(Number), in_reply_to: m1, error: null });
    expect(item.message_id).toEqual(expect.stringMatching(/@example\.com$/));
    expect(item.message_id).not.toMatch(/^kit-/);
  });
});

describe("the mail routes", () => {
  it("need the API token and a sane limit", async () => {
    for (const path of ["/_kit/mail/outbox", "/_kit/mail/refused"]) {
      expect((await SELF.fetch(`${API}${path}`)).status).toBe(401);
      for (const limit of ["0", "501", "x", "-1"]) {
        const bad = await SELF.fetch(`${API}${path}?limit=${limit}`, { headers: AUTH });
        expect(bad.status).toBe(400);
        expect(await bad.json()).toEqual({ error: "bad_request", message: "limit must be a whole number from 1 to 500." });
      }
      expect((await SELF.fetch(`${API}${path}`, { method: "POST", headers: AUTH })).status).toBe(405);
    }
  });

  it("the Worker's default export has the email handler", () => {
    expect(typeof worker.email).toBe("function");
  });
});

/** A message with attachments (base64 parts after a text/plain one), as a mail client
 * writes it. */
function mailWith(o: { id: string; to?: string; body: string; files: Array<{ name: string; type: string; data: Uint8Array }> }): string {
  const boundary = "b-" + crypto.randomUUID();
  const lines = [
    "From: Alice <alice@example.org>",
    `To: ${o.to ?? AGENT}`,
    "Subject: Order 1042",
    `Message-ID: <${o.id}>`,
    "MIME-Version: 1.0",
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    "",
    `--${boundary}`,
    "Content-Type: text/plain; charset=utf-8",
    "",
    o.body,
  ];
  for (const f of o.files) {
    let binary = "";
    for (let i = 0; i < f.data.length; i += 8192) binary += String.fromCharCode(...f.data.subarray(i, i + 8192));
    const b64 = btoa(binary);
    lines.push(`--${boundary}`, `Content-Type: ${f.type}`, "Content-Transfer-Encoding: base64", `Content-Disposition: attachment; filename="${f.name}"`, "");
    for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  }
  lines.push(`--${boundary}--`, "");
  return lines.join("\n");
}

async function filesOf(sessionId: string): Promise<Array<{ path: string; size: number; sha256: string }>> {
  const answer = await SELF.fetch(`${API}/v1/sessions/${sessionId}/files`, { headers: AUTH });
  expect(answer.status).toBe(200);
  return ((await answer.json()) as { files: Array<{ path: string; size: number; sha256: string }> }).files;
}

async function hex(data: Uint8Array): Promise<string> {
  return [...new Uint8Array(await crypto.subtle.digest("SHA-256", data))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

describe("attachments", () => {
  const notes = new TextEncoder().encode("order 1042: two lamps\n");
  const big = new Uint8Array(3 * 1024 * 1024 + 7).map((_, i) => (i * 31 + (i >> 20)) & 0xff);

  it("are saved as the session's files before the turn, named as kit/mail plans, and the agent reads where", async () => {
    const container = new FakeContainer();
    const m1 = mid("att");
    const files = [
      { name: "../../notes.txt", type: "text/plain", data: notes },
      { name: "a.txt", type: "text/plain", data: new TextEncoder().encode("first") },
      { name: "A.TXT", type: "text/plain", data: new TextEncoder().encode("second") },
      { name: "data.bin", type: "application/octet-stream", data: big },
    ];
    const sid = await firstMessage(mailWith({ id: m1, body: "Please read my attachment.", files }), container, new Recorder());
    const folder = await attachmentFolder(m1);
    expect(folder).toMatch(/^mail\/[0-9a-f]{12}$/);
    expect(await userTexts(sid)).toEqual([
      [
        "Email from Alice <alice@example.org>",
        "Subject: Order 1042",
        "",
        "Please read my attachment.",
        "",
        "Attachments:",
        `- ../../notes.txt (text/plain, 22 bytes): saved as ${folder}/notes.txt`,
        `- a.txt (text/plain, 5 bytes): saved as ${folder}/a.txt`,
        `- A.TXT (text/plain, 6 bytes): saved as ${folder}/A (2).TXT`,
        `- data.bin (application/octet-stream, ${big.length} bytes): saved as ${folder}/data.bin`,
      ].join("\n"),
    ]);
    const stored = [
      [`${folder}/A (2).TXT`, new TextEncoder().encode("second")],
      [`${folder}/a.txt`, new TextEncoder().encode("first")],
      [`${folder}/data.bin`, big],
      [`${folder}/notes.txt`, notes],
    ] as const;
    expect(await filesOf(sid)).toEqual(await Promise.all(stored.map(async ([path, data]) => ({ path, size: data.length, sha256: await hex(data) }))));
    // In the container before its turn, byte for byte.
    expect(container.turns).toHaveLength(1);
    expect(await Promise.all(container.files.map(async (f) => [f.path, f.turnsBefore, await hex(f.data)]))).toEqual(
      await Promise.all(stored.map(async ([path, data]) => [path, 0, await hex(data)])),
    );
  });

  it("a repeated delivery of the message writes nothing once its turn was taken", async () => {
    const m1 = mid("att");
    const raw = mailWith({ id: m1, body: "See attached.", files: [{ name: "notes.txt", type: "text/plain", data: notes }] });
    const first = await acceptMail(inbound(raw), env as Env);
    const sid = first!.session_id;
    await equip(sid, new FakeContainer(), new Recorder());
    // The turn is taken; the handler fails before the MailIndex hears it was delivered.
    expect(await env.SESSION.getByName(sid).mailTurn(first!.turn)).toMatchObject({ fresh: true });
    const folder = await attachmentFolder(m1);
    const changed = new TextEncoder().encode("changed since");
    expect((await SELF.fetch(`${API}/v1/sessions/${sid}/files/${folder}/notes.txt`, { method: "PUT", headers: AUTH, body: changed })).status).toBe(204);
    // The platform delivers again: routed to the session, its attachment not written again.
    const retried = await acceptMail(inbound(raw), env as Env);
    expect(retried?.session_id).toBe(sid);
    await deliverMail(retried!, env as Env);
    await settle(sid);
    expect(await filesOf(sid)).toEqual([{ path: `${folder}/notes.txt`, size: changed.length, sha256: await hex(changed) }]);
    expect(await userTexts(sid)).toHaveLength(1);
    // Once delivered, another copy is a duplicate: nothing at all.
    expect(await acceptMail(inbound(raw), env as Env)).toBeNull();
    expect(await filesOf(sid)).toHaveLength(1);
  });

  it("that would take the session past its limits are listed as not saved, saying why, each on its own", async () => {
    const recorder = new Recorder();
    const container = new FakeContainer();
    const sid = await firstMessage(mail({ id: mid("m1") }), container, recorder);
    for (let n = 0; n < 99; n++) {
      expect((await SELF.fetch(`${API}/v1/sessions/${sid}/files/f${n}.txt`, { method: "PUT", headers: AUTH, body: "x" })).status).toBe(204);
    }
    const plus = recorder.sent[0].from;
    const m2 = mid("att");
    const two = [
      { name: "notes.txt", type: "text/plain", data: notes },
      { name: "more.txt", type: "text/plain", data: notes },
    ];
    await email(inbound(mailWith({ id: m2, to: plus, body: "One more.", files: two }), { to: plus }), env as Env);
    await settle(sid);
    const texts = await userTexts(sid);
    expect(texts).toHaveLength(2);
    const folder = await attachmentFolder(m2);
    expect(texts[1].split("\n").slice(-2)).toEqual([
      `- notes.txt (text/plain, 22 bytes): saved as ${folder}/notes.txt`,
      "- more.txt (text/plain, 22 bytes): not saved (The session would have 101 files; it keeps at most 100, and a PUT to a path it has replaces that file)",
    ]);
    const listed = await filesOf(sid);
    expect(listed).toHaveLength(100);
    expect(listed.filter((f) => f.path.startsWith("mail/")).map((f) => f.path)).toEqual([`${folder}/notes.txt`]);
    expect(recorder.sent).toHaveLength(2); // answered all the same
  });
});
