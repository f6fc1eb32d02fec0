// The model route: a sandbox's model calls (`/v1/sessions/{id}/model/...`, the runtime's
// ANTHROPIC_BASE_URL) checked against the session's model token and forwarded upstream with
// the real key, which no sandbox is ever given (kit/host/proxy.py's job on the other hosts).

import type { Env } from "./env";
import { sameText, sha256 } from "./tokens";

/** `/v1/sessions/{id}/model/{rest}`: a sandbox's model call (the rest goes upstream). */
export const MODEL_PATH = /^\/v1\/sessions\/[^/]+\/model\/(.*)$/;
const MODEL_DRAIN_BYTES = 1 << 20;
/** Request headers a model call does not pass upstream: credentials, hop-by-hop. */
const MODEL_DROPPED = new Set(["x-api-key", "authorization", "host", "cookie", "connection", "content-length", "transfer-encoding", "cf-connecting-ip", "x-forwarded-for"]);

function bearerOf(header: string | null): string | null {
  if (header === null) return null;
  const space = header.indexOf(" ");
  return space > 0 && header.slice(0, space).toLowerCase() === "bearer" ? header.slice(space + 1).trim() : null;
}

/** An error as the Messages API shapes it, so the CLI reports it as such. */
function modelError(status: number, type: string, message: string): Response {
  return new Response(JSON.stringify({ type: "error", error: { type, message } }), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/** Read a refused request's body (up to MODEL_DRAIN_BYTES, then cancel): a body left
 * unread makes workerd report the forwarding Worker's stream as an uncaught error. */
async function drain(request: Request): Promise<void> {
  if (request.body === null) return;
  const reader = request.body.getReader();
  let read = 0;
  try {
    for (let i = 0; i < 100_000 && read < MODEL_DRAIN_BYTES; i++) {
      const { done, value } = await reader.read();
      if (done) return;
      read += value.byteLength;
    }
    await reader.cancel();
  } catch {
    // the sender went away
  }
}

/** A model call: its token (`x-api-key` or Bearer, as the CLI sends it) against `want`,
 * the SHA-256 of the token minted at the sandbox's start (null: none, refused); then the
 * call forwarded to KIT_MODEL_UPSTREAM with ANTHROPIC_API_KEY, the answer streamed back. */
export async function modelRoute(request: Request, rest: string, want: string | null, env: Env): Promise<Response> {
    const sent = request.headers.get("x-api-key") ?? bearerOf(request.headers.get("authorization"));
    if (!sent || !want || !(await sameText(await sha256(sent), want))) {
      await drain(request);
      return modelError(401, "authentication_error", "kit's model route: unknown or expired session token.");
    }
    const key = env.ANTHROPIC_API_KEY;
    if (!key) {
      await drain(request);
      return modelError(503, "api_error", "kit's model route has no ANTHROPIC_API_KEY (a Worker secret).");
    }
    const headers = new Headers();
    for (const [name, value] of request.headers) {
      if (!MODEL_DROPPED.has(name.toLowerCase())) headers.set(name, value);
    }
    headers.set("x-api-key", key);
    const upstream = (env.KIT_MODEL_UPSTREAM || "https://api.anthropic.com").replace(/\/$/, "");
    const search = new URL(request.url).search;
    try {
      return await fetch(`${upstream}/${rest}${search}`, {
        method: request.method,
        headers,
        body: request.method === "GET" || request.method === "HEAD" ? null : request.body,
      });
    } catch (exc) {
      return modelError(502, "api_error", `kit's model route could not reach the model upstream: ${String(exc)}.`);
    }
  }
