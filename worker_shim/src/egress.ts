// A session's container on Cloudflare reaches nothing by itself (`enableInternet: false`):
// every HTTP request it makes, and every HTTPS one (Cloudflare's proxy terminates TLS with a
// CA it installs in the container), is handed to `KitEgress` with the session's id as props
// (reference/cloudflare.md §6; `SessionDO.intercept`). It answers, in order:
//
//   http://kit.internal/v1/sessions/<this session>/model/…   the model route (model.ts)
//   http://kit.internal/v1/sessions/<this session>/store/…   the transcript store (storeapi.ts)
//   a host:port on the egress allowlist                      fetched from the Worker
//   anything else                                            403, naming the fix
//
// The allowlist is kit.toml's `[sandbox] egress` as kit deploy writes it into the Worker
// var KIT_EGRESS (kit/deploy/cloudflare/target.py `egress_var`): rules already parsed by
// kit/bundle/allowlist.py, matched here as kit/host/egress.py matches them. The tokens
// still guard the kit.internal routes: the session id in the props only keeps a sandbox to
// its own session's routes.

import { WorkerEntrypoint } from "cloudflare:workers";
import type { Env } from "./env";
import { json, sandboxCall, sandboxRouteOf } from "./sandboxroutes";

/** The host a container calls the Worker by (runtimeConfig's default URL). */
export const WORKER_HOST = "kit.internal";

/** What a container's interceptor is bound with. */
export interface EgressProps {
  sessionId: string;
}

/** One allowlist rule, as kit/bundle/allowlist.py EgressRule (its JSON in KIT_EGRESS). */
export interface EgressRule {
  host: string;
  wildcard: boolean;
  /** null: ports 443 and 80. */
  port: number | null;
}

const DEFAULT_PORTS = [443, 80];

export class KitEgress extends WorkerEntrypoint<Env, EgressProps> {
  override async fetch(request: Request): Promise<Response> {
    return egress(request, this.env, this.ctx.props);
  }
}

/** Answer one request of the session's container (see the module doc). */
export async function egress(request: Request, env: Env, props: EgressProps): Promise<Response> {
  const url = new URL(request.url);
  const host = normalHost(url.hostname);
  if (host === WORKER_HOST) {
    const route = sandboxRouteOf(request, url);
    if (route === null || route.sessionId !== props.sessionId) {
      await request.body?.cancel();
      return json(
        { error: "forbidden", message: `A sandbox may call only its own session's model and store routes on ${WORKER_HOST}.` },
        403,
      );
    }
    return sandboxCall(request, env, route);
  }
  const port = url.port !== "" ? Number(url.port) : url.protocol === "https:" ? 443 : 80;
  let rules: EgressRule[];
  try {
    rules = egressRules(env.KIT_EGRESS);
  } catch (exc) {
    await request.body?.cancel();
    console.error("KIT_EGRESS is not a list of egress rules; every request out is refused", exc);
    return refusal(502, "kit's egress proxy has no usable allowlist (the Worker var KIT_EGRESS is malformed): run kit deploy again.");
  }
  if (host === null || !rules.some((rule) => matches(rule, host, port))) {
    await request.body?.cancel();
    const where = `${url.hostname}:${port}`;
    console.log(`egress: ${request.method} ${where} for session ${props.sessionId} is not on the allowlist`);
    return refusal(
      403,
      `kit's egress proxy refused ${where}: it is not on this agent's egress allowlist. Add it to [sandbox] egress ` +
        `in kit.toml (egress = ["${where}"], or "${url.hostname}" for ports 443 and 80) and run kit deploy again.`,
    );
  }
  // A redirect goes back to the container, which asks again (through here): never followed
  // to a host the allowlist did not admit.
  return fetch(request, { redirect: "manual" });
}

/** The rules of KIT_EGRESS (absent or empty: none). Throws on a value that is not a list
 * of rules. */
export function egressRules(text: string | undefined): EgressRule[] {
  if (text === undefined || text.trim() === "") return [];
  const value: unknown = JSON.parse(text);
  if (!Array.isArray(value)) throw new TypeError("KIT_EGRESS is not a JSON list");
  return value.map((item: unknown) => {
    const rule = item as Partial<EgressRule> | null;
    const port = rule?.port;
    if (typeof rule?.host !== "string" || typeof rule.wildcard !== "boolean" || !(port === null || Number.isInteger(port))) {
      throw new TypeError(`KIT_EGRESS holds a rule that is not {host, wildcard, port}: ${JSON.stringify(item)}`);
    }
    return { host: rule.host, wildcard: rule.wildcard, port: port ?? null };
  });
}

/** kit/bundle/allowlist.py `EgressRule.matches`. */
export function matches(rule: EgressRule, host: string, port: number): boolean {
  if (!(rule.port !== null ? [rule.port] : DEFAULT_PORTS).includes(port)) return false;
  return rule.wildcard ? host.endsWith("." + rule.host) : host === rule.host;
}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** A URL's hostname as kit/bundle/allowlist.py `normalize_host` has it: lowercase, without
 * a trailing dot, a valid name or a dotted-quad IPv4 address; null otherwise (IPv6, empty or
 * bad labels, a numeric last label). The URL parser already wrote any IPv4 form as a dotted
 * quad (`127.1` arrives as 127.0.0.1, which Python would refuse as written: both reach the
 * same address). */
export function normalHost(hostname: string): string | null {
  let host = hostname.toLowerCase();
  if (host.endsWith(".") && !host.endsWith("..")) host = host.slice(0, -1);
  if (IPV4.test(host)) return host;
  if (host === "" || host.length > 253) return null;
  const labels = host.split(".");
  const last = labels[labels.length - 1];
  if (!labels.every((label) => LABEL.test(label)) || /^\d+$/.test(last)) return null;
  if (last.startsWith("0x") && /^[0-9a-fx]+$/.test(last)) return null;
  return host;
}

function refusal(status: number, message: string): Response {
  return new Response(message + "\n", { status, headers: { "content-type": "text/plain; charset=utf-8" } });
}
