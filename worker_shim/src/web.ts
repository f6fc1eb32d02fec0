// The chat page on the Worker, as kit/host/web.py serves it on kit's Python hosts: the
// same files (kit/web, bound as the Worker's static assets, ASSETS), the same headers, the
// same config, and in a rehearsal only the same POST /web/session.
//
//   GET  /                  the page (index.html) under a strict CSP             public
//   GET  /web/<file>        app.js, render.js, style.css (no other name)         public
//   GET  /web/config.json   {"session_url": …}: /web/session in a rehearsal;     public
//                           else KIT_WEB_SESSION_URL (kit.toml [web]
//                           session_url, set by kit deploy), or null
//   POST /web/session       a rehearsal only (KIT_WEB_LOCAL_SESSIONS): a new     same-origin
//                           session for a same-origin page of this Worker at a   loopback
//                           loopback name (localRefusal)                          page
//
// Any other name under /web/ needs the API token, as every other route does, and is then
// 404 (index.ts).

import type { Env } from "./env";
import { pyRepr } from "./limits";
import { json } from "./sandboxroutes";

/** kit/host/web.py PAGE_FILES: the files served under /web/ and their types. */
export const PAGE_FILES: Readonly<Record<string, string>> = {
  "app.js": "text/javascript; charset=utf-8",
  "render.js": "text/javascript; charset=utf-8",
  "style.css": "text/css; charset=utf-8",
};
export const SESSION_PATH = "/web/session";
export const CONFIG_PATH = "/web/config.json";
const ASSET_PATH = /^\/web\/([^/]+)$/;

/** kit/host/web.py PAGE_HEADERS: on the page, its files and its config. */
export const PAGE_HEADERS: Readonly<Record<string, string>> = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache",
};

/** kit/bundle/config.py `_SESSION_URL`: a session URL whose origin a CSP source can name
 * (`http(s)://`, a DNS name or IPv4 address, an optional port, then printable ASCII only). */
const SESSION_URL = /^(https?):\/\/([a-z0-9-]+(?:\.[a-z0-9-]+)*\.?(?::[0-9]{1,5})?)(?:[/?#][\x21-\x7e]*)?$/i;

/** kit/host/web.py `content_security_policy`: the page's own scripts and styles only, no
 * inline code, no frames, no plugins; it connects to this host (and the lower-cased origin
 * of `sessionUrl` when SESSION_URL matches it: never text that ends the directive, adds a
 * source or breaks the header, whatever KIT_WEB_SESSION_URL was set to). The cases are
 * kit/host/golden/web_csp.jsonl. */
export function contentSecurityPolicy(sessionUrl: string | null): string {
  let connect = "'self'";
  const parts = sessionUrl === null ? null : SESSION_URL.exec(sessionUrl);
  if (parts !== null) connect += ` ${parts[1].toLowerCase()}://${parts[2].toLowerCase()}`;
  return (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
    `connect-src ${connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`
  );
}

/** Whether this path is one of the page's public ones (GET or HEAD, no token). */
export function isPagePath(pathname: string): boolean {
  if (pathname === "/" || pathname === CONFIG_PATH) return true;
  const asset = ASSET_PATH.exec(pathname);
  return asset !== null && Object.hasOwn(PAGE_FILES, asset[1]);
}

/** The page, a file of it, or its config (a path `isPagePath` accepts). */
export async function servePage(request: Request, url: URL, env: Env): Promise<Response> {
  const sessionUrl = pageSessionUrl(env);
  if (url.pathname === CONFIG_PATH) return json({ session_url: sessionUrl }, 200, PAGE_HEADERS);
  if (url.pathname === "/") {
    return asset(request, env, "index.html", "text/html; charset=utf-8", {
      ...PAGE_HEADERS,
      "content-security-policy": contentSecurityPolicy(sessionUrl),
      "x-frame-options": "DENY",
      // A page of another site that opened this one gets no handle on it.
      "cross-origin-opener-policy": "same-origin",
    });
  }
  const name = url.pathname.slice("/web/".length);
  return asset(request, env, name, PAGE_FILES[name], PAGE_HEADERS);
}

/** A name under /web/ that is not one of the page's files (asked with the API token). */
export function notAPageFile(url: URL): Response | null {
  const asset = ASSET_PATH.exec(url.pathname);
  if (asset === null || url.pathname === SESSION_PATH) return null;
  let name: string;
  try {
    name = decodeURIComponent(asset[1]);
  } catch {
    name = asset[1];
  }
  return json({ error: "not_found", message: `The page has no file ${pyRepr([...name].slice(0, 100).join(""))}.` }, 404);
}

/** The session URL the page's config names: /web/session in a rehearsal, else the
 * operator's endpoint (KIT_WEB_SESSION_URL), else null. */
function pageSessionUrl(env: Env): string | null {
  if (localSessions(env)) return SESSION_PATH;
  return env.KIT_WEB_SESSION_URL ? env.KIT_WEB_SESSION_URL : null;
}

/** Whether this Worker serves POST /web/session: only `kit dev --target cloudflare` sets
 * KIT_WEB_LOCAL_SESSIONS, and only with the container emulator (never on Cloudflare). */
export function localSessions(env: Env): boolean {
  return env.KIT_WEB_LOCAL_SESSIONS === "1" && Boolean(env.KIT_CONTAINER_EMULATOR);
}

async function asset(request: Request, env: Env, name: string, type: string, headers: Record<string, string>): Promise<Response> {
  const found = await env.ASSETS.fetch(new Request(new URL(`/${name}`, request.url)));
  if (!found.ok) {
    await found.body?.cancel();
    return json({ error: "not_found", message: `The page's file ${name} is missing from the Worker's assets; deploy again.` }, 500);
  }
  const body = request.method === "HEAD" ? null : found.body;
  if (body === null) await found.body?.cancel();
  return new Response(body, { status: 200, headers: { ...headers, "content-type": type } });
}

/** POST /web/session (a rehearsal's): 403 forbidden_origin naming the rule broken, or null
 * when the request may have a session. */
export function localSessionRefusal(request: Request, env: Env): Response | null {
  const why = localRefusal(
    ownLoopbackHosts(env.KIT_WORKER_URL),
    request.headers.get("origin"),
    request.headers.get("host"),
    request.headers.get("sec-fetch-site"),
  );
  return why === null ? null : json({ error: "forbidden_origin", message: why }, 403);
}

/** kit/host/auth.py `loopback_hosts` of the Worker's own URL (KIT_WORKER_URL, which the
 * rehearsal sets to `http://127.0.0.1:<its port>`): the `host:port` values a browser sends
 * to it; null when that URL is not at a loopback address (no session is given then). Taken
 * from the Worker's configuration, never from the request, so a page whose own name
 * resolves to this machine (DNS rebinding) is not one of them. */
export function ownLoopbackHosts(workerUrl: string | undefined): string[] | null {
  const parts = /^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})\/?$/i.exec(workerUrl ?? "");
  if (parts === null) return null;
  const names = new Set([parts[1].toLowerCase(), "localhost", "127.0.0.1", "[::1]"]);
  return [...names].map((name) => `${name}:${parts[2]}`).sort();
}

/** kit/host/web.py `local_refusal`, word for word: why a POST /web/session with this
 * Origin, Host and Sec-Fetch-Site is refused (null: a same-origin request from a page of
 * this Worker at a loopback name). The cases are kit/host/golden/web_session.jsonl. */
export function localRefusal(own: string[] | null, origin: string | null, host: string | null, site: string | null): string | null {
  if (own === null) {
    return (
      "Sessions without the API token are given only to pages of a host listening on a " +
      "loopback address (kit dev --host 127.0.0.1); use POST /v1/sessions with the token."
    );
  }
  if (origin === null) {
    return (
      "The request has no Origin header: only this host's own page gets a session here; " +
      "other clients use POST /v1/sessions with the API token."
    );
  }
  const origins = normaliseOrigin(origin);
  const netloc = origins !== null && origins.scheme === "http" ? origins.netloc : null;
  if (netloc === null || !own.includes(netloc)) {
    return `Origin ${pyRepr(head(origin, 200))} is not this host's own loopback origin (${[...own].sort().join(", ")}); open the page from this host.`;
  }
  if (host === null || stripOws(host).toLowerCase() !== netloc) {
    return `Host ${pyRepr(head(host ?? "", 200))} is not the page's origin ${pyRepr(netloc)}: a session is given only to same-origin requests at a loopback name.`;
  }
  if (site !== null && site !== "same-origin") {
    return `Sec-Fetch-Site is ${pyRepr(head(site, 50))}: only a same-origin request gets a session.`;
  }
  return null;
}

/** `s` without the spaces and tabs around it (Python's `s.strip(" \t")`: not String.trim,
 * which drops a no-break space too, which is part of a header's value). */
function stripOws(s: string): string {
  return s.replace(/^[ \t]+|[ \t]+$/g, "");
}

/** The first `n` code points of `s` (Python's `s[:n]`). */
function head(s: string, n: number): string {
  return [...s].slice(0, n).join("");
}

/** kit/host/auth.py `normalise_origin`, as far as local sessions need it: the scheme and
 * the lower-cased `host[:port]` of a `scheme://host[:port]` origin (a trailing `/`, an
 * empty query or fragment allowed, as urlsplit reads them), or null for anything else ("null", a path, a query, a user, a bad port,
 * a space, control or non-ASCII character inside). */
function normaliseOrigin(origin: string): { scheme: string; netloc: string } | null {
  const text = stripOws(origin);
  if (!/^[\x21-\x7e]+$/.test(text)) return null;
  const parts = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)\/?\??#?$/.exec(text);
  if (parts === null) return null;
  const scheme = parts[1].toLowerCase();
  const netloc = parts[2];
  if (!["http", "https"].includes(scheme) || netloc.includes("@")) return null;
  const hostPort = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+)(?::(\d*))?$/.exec(netloc);
  if (hostPort === null) return null;
  if (hostPort[2] !== undefined && hostPort[2] !== "" && Number(hostPort[2]) > 65535) return null;
  return { scheme, netloc: netloc.toLowerCase() };
}
