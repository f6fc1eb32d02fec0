// The Worker: kit's host routes on Cloudflare (docs/protocol.md §2), in front of one
// SessionDO per session.
//
//   GET  /healthz                  public: {"ok": true}
//   GET  /, /web/app.js, /web/render.js, /web/style.css, /web/config.json
//                                  public: the chat page, its files and its config, as
//                                  kit/host/web.py serves them (web.ts)
//   POST /web/session              a rehearsal only (KIT_WEB_LOCAL_SESSIONS, with
//                                  KIT_CONTAINER_EMULATOR): 201 as POST /v1/sessions, for a
//                                  same-origin page of this Worker at a loopback name; 403
//                                  forbidden_origin otherwise (web.ts `localRefusal`)
//   POST /v1/sessions              Bearer KIT_API_TOKEN: 201 {session_id, token, ws_url}
//   GET  /v1/sessions/{id}/ws      WebSocket upgrade, forwarded to the session's DO (the
//                                  socket authenticates with hello's session token); for
//                                  an id that names no session, answered here
//   ANY  /v1/sessions/{id}/model/… only with KIT_PUBLIC_MODEL_ROUTE=1 (tests): a sandbox's
//                                  model call, forwarded to the session's DO (it checks the
//                                  sandbox's model token, adds the real key); sandboxes reach
//                                  it through outbound interception (egress.ts)
//   *    /_kit/…                   kit's control API (control.ts): sessions, logs, sandboxes
//   POST /v1/sessions/{id}/store/{method}
//                                  a transcript store call, forwarded to the session's DO
//                                  (storeapi.ts: it checks the store token)
//   ANY  /_egress/{DO id}           a rehearsal only (KIT_CONTAINER_EMULATOR set): an emulated
//                                  container's outbound request, delivered by kit's
//                                  container emulator to the DO (httpcontainer.ts)
//   POST /v1/sessions/{id}/store-token
//                                  Bearer KIT_API_TOKEN: 201 {token, store_url}, a store
//                                  token for API use (docs/protocol.md §13)
//   PUT  /v1/sessions/{id}/files/{path}
//                                  Bearer KIT_API_TOKEN: the file's bytes, kept as one of the
//                                  session's files (files.ts) → 204; 400 a bad path, 413 a
//                                  file over 10 MiB or a session past 100 files or 100 MiB,
//                                  409 a path that is a folder of a file, or under one, 404
//                                  no such session; given to the session's container before
//                                  each turn
//   GET  /v1/sessions/{id}/files   Bearer KIT_API_TOKEN: {"files": [{path, size, sha256}]}
//   GET  /_kit/mail/outbox, /_kit/mail/refused
//                                  Bearer KIT_API_TOKEN: {"address", "items": [...]}, the
//                                  replies sent and the inbound mail refused (control.ts)
//
// And `email()`: inbound mail (mail/handler.ts), routed to its thread's session.
//
// Every other request, and any request to these routes but the upgrade, the store calls,
// the emulator's deliveries, the page's files and /healthz, needs the API token: 401
// without it, also for a path that does not exist (another name under /web/ included).

import { control } from "./control";
import { email } from "./mail/handler";
import { EGRESS_ROUTE } from "./httpcontainer";
import type { Env } from "./env";
import { FILES_ROUTE, MAX_FILE_BYTES, boundedBody, refusal, routePath, tooLarge } from "./files";
import { noSessionSocket } from "./nosession";
import { json, sandboxCall, sandboxRouteOf, UUID } from "./sandboxroutes";
import { sessionIndex } from "./sessionindex";
import { storeUrl } from "./storeapi";
import { randomToken, sameText, sha256 } from "./tokens";
import { isPagePath, localSessionRefusal, localSessions, notAPageFile, servePage, SESSION_PATH } from "./web";

export { KitEgress } from "./egress";
export { SessionDO } from "./session";
export { SessionIndex } from "./sessionindex";
export { MailIndex } from "./mail/mailindex";
export type { Env } from "./env";
export type { ContainerLike } from "./runtime";

const WS_PATH = /^\/v1\/sessions\/([^/]+)\/ws$/;
const STORE_TOKEN_PATH = /^\/v1\/sessions\/([^/]+)\/store-token$/;

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === "/healthz" && request.method === "GET") return json({ ok: true }, 200);
    if ((request.method === "GET" || request.method === "HEAD") && isPagePath(url.pathname)) return servePage(request, url, env);
    if (url.pathname === SESSION_PATH && request.method === "POST" && localSessions(env)) {
      await request.body?.cancel();
      return localSessionRefusal(request, env) ?? createSession(url, env);
    }
    const ws = WS_PATH.exec(url.pathname);
    if (ws !== null && request.method === "GET" && request.headers.get("upgrade")?.toLowerCase() === "websocket") {
      return openSocket(request, env, ws[1]);
    }
    // A sandbox calls its model and store routes through outbound interception (egress.ts),
    // never through here; the store routes stay public for API store tokens, the model
    // route only in tests (a model token read by a tool must not spend from anywhere).
    const sandbox = sandboxRouteOf(request, url);
    if (sandbox !== null && (sandbox.store !== null || env.KIT_PUBLIC_MODEL_ROUTE === "1")) return sandboxCall(request, env, sandbox);
    const egress = EGRESS_ROUTE.exec(url.pathname);
    if (egress !== null && env.KIT_CONTAINER_EMULATOR) {
      // An emulated container's request, delivered by kit's container emulator to the DO
      // that intercepted it (httpcontainer.ts checks its token).
      let id: DurableObjectId;
      try {
        id = env.SESSION.idFromString(egress[1]);
      } catch {
        await request.body?.cancel();
        return json({ error: "not_found", message: "No Durable Object has this id." }, 404);
      }
      return env.SESSION.get(id).fetch(request);
    }
    if (!(await authorized(request, env))) {
      return json({ error: "unauthorized", message: "Send Authorization: Bearer <the host's API token>." }, 401, {
        "www-authenticate": "Bearer",
      });
    }
    if (url.pathname === "/v1/sessions" && request.method === "POST") return createSession(url, env);
    const files = FILES_ROUTE.exec(url.pathname);
    if (files !== null) return sessionFiles(request, env, files[1], files[2]);
    const controlled = await control(request, url, env);
    if (controlled !== null) return controlled;
    if (ws !== null) return json({ error: "upgrade_required", message: "Open this URL as a WebSocket." }, 426);
    const notPage = notAPageFile(url);
    if (notPage !== null) return notPage;
    const mint = STORE_TOKEN_PATH.exec(url.pathname);
    if (mint !== null && request.method === "POST") return mintStoreToken(request, url, env, mint[1]);
    return json({ error: "not_found", message: `No route ${request.method} ${url.pathname}.` }, 404);
  },

  /** Inbound mail (mail/handler.ts): routed to its thread's session; the reply leaves
   * from the session's DO when the turn ends. */
  async email(message: ForwardableEmailMessage, env: Env): Promise<void> {
    await email(message, env);
  },
} satisfies ExportedHandler<Env>;

/** POST /v1/sessions: a new session in its own DO; the token is shown only here. */
async function createSession(url: URL, env: Env): Promise<Response> {
  const sessionId = crypto.randomUUID();
  const token = "kit-session-" + randomToken();
  // Listed first: an id whose DO then fails to start is skipped by the listings.
  await sessionIndex(env).add(sessionId, Date.now());
  await env.SESSION.getByName(sessionId).init(sessionId, await sha256(token), env.KIT_SANDBOX_TIER || "basic");
  const scheme = url.protocol === "https:" ? "wss" : "ws";
  return json({ session_id: sessionId, token, ws_url: `${scheme}://${url.host}/v1/sessions/${sessionId}/ws` }, 201);
}

/** POST /v1/sessions/{id}/store-token (API token): a store token for API use, and the
 * store's URL. Body `{"any_key": true}` (optional) asks for a token that may use any key,
 * for the SDK's conformance suite: only where the var KIT_STORE_CONFORMANCE is "1". */
async function mintStoreToken(request: Request, url: URL, env: Env, id: string): Promise<Response> {
  const bad = () => json({ error: "bad_request", message: 'Send no body, or {"any_key": true|false}.' }, 400);
  let anyKey = false;
  const text = await request.text();
  if (text.trim() !== "") {
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return bad();
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) return bad();
    const value = (body as { any_key?: unknown }).any_key;
    if (value !== undefined && typeof value !== "boolean") return bad();
    anyKey = value === true;
  }
  if (anyKey && env.KIT_STORE_CONFORMANCE !== "1") {
    return json({ error: "forbidden", message: "Store tokens for any key are for tests: set the Worker var KIT_STORE_CONFORMANCE=1 (never in production)." }, 403);
  }
  const token = UUID.test(id) ? await env.SESSION.getByName(id).apiStoreToken(anyKey) : null;
  if (token === null) return json({ error: "not_found", message: "No session has this id; create one with POST /v1/sessions." }, 404);
  return json({ token, store_url: storeUrl(url.origin, id) }, 201);
}

/** `PUT /v1/sessions/{id}/files/{path}` and `GET /v1/sessions/{id}/files` (API token):
 * checked here as far as no Durable Object is needed (a refusal writes nothing, and an
 * unknown id's DO is only asked whether it holds a session), then answered by the session's
 * DO (files.ts), which keeps the file before it answers 204. */
async function sessionFiles(request: Request, env: Env, id: string, rest: string | undefined): Promise<Response> {
  const method = rest === undefined ? "GET" : "PUT";
  const refuse = async (answer: Response): Promise<Response> => {
    await request.body?.cancel();
    return answer;
  };
  if (request.method !== method) {
    return refuse(json({ error: "method_not_allowed", message: `Use ${method} on ${rest === undefined ? "a session's files" : "a session file"}.` }, 405, { allow: method }));
  }
  if (!UUID.test(id) || !(await env.SESSION.getByName(id).exists())) {
    return refuse(json({ error: "unknown_session", message: "No session has this id; create one with POST /v1/sessions." }, 404));
  }
  if (rest === undefined) return env.SESSION.getByName(id).fetch(request);
  const path = routePath(rest);
  if (typeof path !== "string") return refuse(refusal(path));
  // Read here, within the limit: a body the DO stopped reading would still be piped to it.
  const data = await boundedBody(request, MAX_FILE_BYTES);
  if (data === null) return refusal(tooLarge(null));
  return env.SESSION.getByName(id).fetch(request.url, { method: "PUT", headers: { "content-type": "application/octet-stream" }, body: data });
}

/** Forward a session socket to its DO, after the browser-origin check. */
async function openSocket(request: Request, env: Env, id: string): Promise<Response> {
  const origin = request.headers.get("origin");
  if (origin !== null && !originAllowed(origin, request.headers.get("host"), env.KIT_ALLOWED_ORIGINS ?? "", onLoopback(request))) {
    return json(
      {
        error: "forbidden_origin",
        message: `Origin '${origin.slice(0, 200)}' may not open session sockets on this host; list it in KIT_ALLOWED_ORIGINS (a Worker var).`,
      },
      403,
    );
  }
  // An id that is no canonical UUID, or names no session, is answered here: hello gets
  // unknown_session, and no Durable Object is written (the DO of a well-formed id is only
  // asked, read-only, whether it holds a session).
  if (!UUID.test(id)) return noSessionSocket();
  const stub = env.SESSION.getByName(id);
  if (!(await stub.exists())) return noSessionSocket();
  return stub.fetch(request);
}

/** docs/protocol.md §2, as kit/host/auth.py `OriginPolicy` decides: an origin listed in
 * KIT_ALLOWED_ORIGINS; else, on `loopback` (kit/host/gateway.py `_origin_policy`), one of
 * the loopback names with the Host's port, so a page whose own name resolves to this
 * machine (DNS rebinding) is refused; else an origin whose `host[:port]` is the Host. */
export function originAllowed(origin: string, host: string | null, allowed: string, loopback: boolean): boolean {
  let netloc: string;
  try {
    const parsed = new URL(origin);
    if (parsed.origin === "null" || !["http:", "https:"].includes(parsed.protocol)) return false;
    netloc = parsed.host.toLowerCase();
    const listed = allowed
      .split(",")
      .map((s) => s.trim().toLowerCase().replace(/\/$/, ""))
      .filter((s) => s !== "");
    if (listed.includes(parsed.origin.toLowerCase())) return true;
  } catch {
    return false;
  }
  if (loopback) return host !== null && loopbackHosts(host).includes(netloc);
  return host !== null && netloc === host.trim().toLowerCase();
}

/** Whether the request reached this Worker over loopback, where kit's Python host applies
 * its loopback origin rule: from a loopback address (`CF-Connecting-IP`, which workerd
 * under `wrangler dev` sets from the socket and Cloudflare's edge from the client, never a
 * loopback one), or to a loopback address (the Host). */
export function onLoopback(request: Request): boolean {
  const ip = request.headers.get("cf-connecting-ip");
  return (ip !== null && isLoopbackAddress(ip)) || isLoopbackAddress(hostnameOf(request.headers.get("host") ?? ""));
}

/** kit/host/auth.py `loopback_hosts`: the Host values a browser sends to a host on
 * loopback: `localhost`, 127.0.0.1, [::1] and the Host's own address if it is a loopback
 * one, each with the Host's port. */
function loopbackHosts(host: string): string[] {
  let parsed: URL;
  try {
    parsed = new URL(`http://${host.trim()}`);
  } catch {
    return [];
  }
  const names = new Set(["localhost", "127.0.0.1", "[::1]"]);
  if (isLoopbackAddress(parsed.hostname)) names.add(parsed.hostname.toLowerCase());
  return [...names].map((name) => (parsed.port === "" ? name : `${name}:${parsed.port}`));
}

function hostnameOf(host: string): string {
  try {
    return new URL(`http://${host.trim()}`).hostname;
  } catch {
    return "";
  }
}

/** 127.0.0.0/8, ::1, or an IPv4-mapped 127.x (brackets allowed). */
function isLoopbackAddress(address: string): boolean {
  const a = address.trim().toLowerCase().replace(/^\[(.*)\]$/, "$1");
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a)) return true;
  if (/^::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a)) return true;
  return /^(0{0,4}:){2,7}0{0,3}1$/.test(a) || a === "::1";
}

async function authorized(request: Request, env: Env): Promise<boolean> {
  const header = request.headers.get("authorization") ?? "";
  const space = header.indexOf(" ");
  if (!env.KIT_API_TOKEN || space < 0 || header.slice(0, space).toLowerCase() !== "bearer") return false;
  return sameText(header.slice(space + 1).trim(), env.KIT_API_TOKEN);
}
