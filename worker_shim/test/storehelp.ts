// Shared steps of the transcript store tests: tokens, calls, exact JSON.

import { SELF } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { API, AUTH } from "./helpers";

/** A Response's or golden line's JSON with every number kept as its source text
 * (`{$n: "…"}`), so a number that lost digits on the way cannot compare equal. */
export function exact(text: string): unknown {
  return JSON.parse(text, (_key, value: unknown, context?: { source?: string }) =>
    typeof value === "number" ? { $n: context?.source ?? String(value) } : value,
  );
}

/** JSON text with numbers exactly as in `text` (for sending a golden line's body). */
export function rawNumbers(text: string): unknown {
  const raw = JSON as unknown as { rawJSON(text: string): object };
  return JSON.parse(text, (_key, value: unknown, context?: { source?: string }) =>
    typeof value === "number" && context?.source !== undefined ? raw.rawJSON(context.source) : value,
  );
}

/** The sandbox's store token, as the DO hands it to a new container. */
export async function sandboxToken(sessionId: string): Promise<string> {
  return env.SESSION.getByName(sessionId).storeToken();
}

/** POST /v1/sessions/{id}/store-token with the API token. */
export async function apiToken(sessionId: string, body?: unknown): Promise<Response> {
  return SELF.fetch(`${API}/v1/sessions/${sessionId}/store-token`, {
    method: "POST",
    headers: AUTH,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

/** One store call through the Worker. */
export async function storeCall(
  sessionId: string,
  method: string,
  token: string | null,
  body: BodyInit,
  headers: Record<string, string> = {},
): Promise<Response> {
  const auth: Record<string, string> = token === null ? {} : { authorization: `Bearer ${token}` };
  return SELF.fetch(`${API}/v1/sessions/${sessionId}/store/${method}`, { method: "POST", headers: { ...auth, ...headers }, body });
}

/** A store call's result (it must answer 200). */
export async function result(sessionId: string, method: string, token: string, body: unknown): Promise<unknown> {
  const answer = await storeCall(sessionId, method, token, JSON.stringify(body));
  const text = await answer.text();
  if (answer.status !== 200) throw new Error(`${method} answered ${answer.status}: ${text.slice(0, 300)}`);
  return (JSON.parse(text) as { result: unknown }).result;
}
