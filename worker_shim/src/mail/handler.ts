// The Worker's `email()` handler: inbound mail from Cloudflare Email Routing (or wrangler
// dev's `POST /cdn-cgi/local/email`) reduced to kit's Inbound, routed by the MailIndex
// (mailindex.ts, kit's rules), and handed to its thread's session as a `user` message. The
// reply is not sent here: the session's DO sends it when the turn ends (replies.ts), through
// the send_email binding, so a turn may outlast the email event.
//
// Refused mail is recorded (GET /_kit/mail/refused) and starts nothing. It is bounced
// (`setReject`, a permanent SMTP error to the sending server) only where that tells a person
// something true and cannot feed a loop: mail the Worker cannot read, mail to an address of
// the agent's domain that is not the agent's, a plus address kit never issued, and mail to
// a Worker with no agent address. Loops, duplicates, non-participants and the rest are
// dropped silently: a bounce to an auto-reply is mail to a machine that answers mail.

import type { Env } from "../env";
import { sessionIndex } from "../sessionindex";
import { sha256 } from "../tokens";
import { mailIndex } from "./mailindex";
import { MAX_INBOUND_BYTES, MailError, parse, type Inbound } from "./message";
import type { MailTurn } from "./replies";
import { checkAddress } from "./rules";
import { attachmentPlan, turnText } from "./text";

/** Refusals answered with a bounce, and what it says. */
const BOUNCES: Record<string, string> = {
  not_addressed: "No such mailbox here.",
  unknown_token: "No such mailbox here: this reply address is not one this agent gave out.",
};

/** A message routed to a session, with the turn it starts there. */
export interface Accepted {
  action: "new" | "continue";
  session_id: string;
  turn: MailTurn;
}

/** What the handler reads of the platform's message (ForwardableEmailMessage). */
export type InboundMail = Pick<ForwardableEmailMessage, "from" | "to" | "raw" | "rawSize" | "setReject">;

/** The `client_msg_id` of an inbound message's turn: a repeated delivery is not applied
 * again (docs/protocol.md §4, invariant 3). */
export async function clientMsgId(messageId: string): Promise<string> {
  return "mail-" + (await sha256(messageId)).slice(0, 40); // kit/mail/channel.py's
}

/** The email handler: accept, then deliver (both idempotent per Message-ID). */
export async function email(message: InboundMail, env: Env): Promise<void> {
  const accepted = await acceptMail(message, env);
  if (accepted !== null) await deliverMail(accepted, env);
}

/** Read and route `message`; the session (made for a new thread) and the turn to give it,
 * or null when it is refused (recorded, and bounced where BOUNCES says). */
export async function acceptMail(message: InboundMail, env: Env): Promise<Accepted | null> {
  const index = mailIndex(env);
  const refuse = async (reason: string, detail: string | undefined, msg: Inbound | null, bounce: string | null): Promise<null> => {
    await index.refuse({
      reason,
      detail,
      message_id: msg?.message_id ?? null,
      from: msg?.sender || message.from,
      to: message.to,
      subject: msg?.subject ?? "",
    });
    if (bounce !== null) message.setReject(bounce);
    return null;
  };
  let agentAddress: string;
  try {
    agentAddress = checkAddress(env.KIT_MAIL_ADDRESS ?? "");
  } catch {
    return refuse("no_address", undefined, null, "This address takes no mail.");
  }
  if (message.rawSize > MAX_INBOUND_BYTES) {
    const why = `The message is ${message.rawSize} bytes; this agent takes at most ${MAX_INBOUND_BYTES} (send large files as links).`;
    await message.raw.cancel();
    return refuse("unreadable", why, null, why);
  }
  const raw = new Uint8Array(await new Response(message.raw).arrayBuffer());
  let msg: Inbound;
  try {
    msg = parse(raw, { from: message.from, to: [message.to] });
  } catch (exc) {
    if (!(exc instanceof MailError)) throw exc;
    return refuse("unreadable", exc.message, null, exc.message);
  }
  const routed = await index.route(msg, agentAddress, env.KIT_MAIL_NAME ?? "");
  if (routed.action === "refuse") {
    // Recorded by the index; bounced only where that is right (see the top of this file).
    const bounce = BOUNCES[routed.reason];
    if (bounce !== undefined) message.setReject(bounce);
    return null;
  }
  // Made once (again is a no-op): listed first, as POST /v1/sessions does.
  await sessionIndex(env).add(routed.session_id, Date.now());
  await env.SESSION.getByName(routed.session_id).initMail(routed.session_id, env.KIT_SANDBOX_TIER || "basic");
  const turn: MailTurn = {
    inbound_id: msg.message_id,
    client_msg_id: await clientMsgId(msg.message_id),
    text: turnText(msg, await saveAttachments(msg, routed.session_id, env)),
    reply_to: {
      message_id: msg.message_id,
      sender: msg.sender,
      sender_name: msg.sender_name,
      subject: msg.subject,
      references: msg.references,
      in_reply_to: msg.in_reply_to,
    },
    agent: { address: agentAddress, name: env.KIT_MAIL_NAME ?? "" },
    token: routed.token,
  };
  return { action: routed.action, session_id: routed.session_id, turn };
}

/** The folder of the attachments of the message `messageId` (kit/mail/channel.py's):
 * `mail/` and the first 12 hex digits of the SHA-256 of the Message-ID. */
export async function attachmentFolder(messageId: string): Promise<string> {
  return "mail/" + (await sha256(messageId)).slice(0, 12);
}

/** Keep `msg`'s attachments as files of its session, in `attachmentFolder`, named as
 * `attachmentPlan` says, one at a time, before its turn is taken (kit/mail/channel.py
 * `_save_attachments`); for each, what the agent reads: where it was saved or why not (null:
 * it has none). The session's DO writes nothing once the message's turn was taken (a
 * repeated delivery); the container of each turn gets the files (files.ts). */
export async function saveAttachments(msg: Inbound, sessionId: string, env: Env): Promise<string[] | null> {
  if (msg.attachments.length === 0) return null;
  const folder = await attachmentFolder(msg.message_id);
  const stub = env.SESSION.getByName(sessionId);
  const told: string[] = [];
  for (const [i, [name, why]] of attachmentPlan(msg, folder).entries()) {
    let said = why;
    if (name !== null) {
      const refused = await stub.saveMailFile(msg.message_id, `${folder}/${name}`, msg.attachments[i].data);
      if (refused !== null) {
        console.log(`mail ${msg.message_id}: ${name} not saved: ${refused}`);
        said = `not saved (${refused})`;
      }
    }
    told.push(said);
  }
  return told;
}

/** Hand the turn to its session (once per inbound id), then mark the message delivered:
 * another delivery of it is a `duplicate` from then on. */
export async function deliverMail(accepted: Accepted, env: Env): Promise<void> {
  await env.SESSION.getByName(accepted.session_id).mailTurn(accepted.turn);
  await mailIndex(env).delivered(accepted.turn.inbound_id);
}
