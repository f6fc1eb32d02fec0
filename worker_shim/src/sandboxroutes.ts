// The routes a session's sandbox calls on the Worker: its model calls (model.ts) and its
// transcript store calls (storeapi.ts), each forwarded to the session's DO, which checks
// the sandbox's own token. A container reaches them over outbound interception in
// production (egress.ts, as http://kit.internal) and over loopback in a rehearsal.

import type { Env } from "./env";
import { MODEL_PATH } from "./model";
import { STORE_METHODS } from "./storeapi";

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MODEL_ID = /^\/v1\/sessions\/([^/]+)\/model\//;
const STORE_PATH = /^\/v1\/sessions\/([^/]+)\/store\/([^/]+)$/;

/** The session a sandbox route of `request` names, and the call; null when `request` is no
 * sandbox route (a model path with any method, a store method by POST). */
export function sandboxRouteOf(request: Request, url: URL): { sessionId: string; store: string | null } | null {
  const model = MODEL_ID.exec(url.pathname);
  if (model !== null && MODEL_PATH.test(url.pathname)) return { sessionId: model[1], store: null };
  const store = STORE_PATH.exec(url.pathname);
  if (store !== null && request.method === "POST") return { sessionId: store[1], store: store[2] };
  return null;
}

/** Answer a sandbox route (see `sandboxRouteOf`) from the session's DO; refused here only
 * where no DO could take it, with the bodies of kit's Python host. */
export async function sandboxCall(request: Request, env: Env, route: { sessionId: string; store: string | null }): Promise<Response> {
  const { sessionId: id, store: method } = route;
  if (method === null) {
    if (!UUID.test(id)) {
      await request.body?.cancel();
      return json({ type: "error", error: { type: "not_found_error", message: "No such session." } }, 404);
    }
    return env.SESSION.getByName(id).fetch(request);
  }
  if (!STORE_METHODS.includes(method) || !UUID.test(id)) {
    await request.body?.cancel();
    return STORE_METHODS.includes(method)
      ? json({ error: "refused", message: "a live session token is required" }, 401)
      : json({ error: "refused", message: `no store method '${method}'` }, 404);
  }
  try {
    return await env.SESSION.getByName(id).fetch(request);
  } catch (exc) {
    // The DO is being reset or is overloaded: the sandbox's store retries a 503.
    console.error(`store ${method} for session ${id}: the DO did not answer`, exc);
    return json({ error: "refused", message: "The session's Durable Object did not answer; retry." }, 503);
  }
}

export function json(body: unknown, status: number, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}
