// The chat page on the Worker (src/web.ts): the files of kit/web, byte for byte, under the
// headers kit/host/web.py sends; its config; and, in a rehearsal only, POST /web/session,
// deciding every case of kit/host/golden/web_session.jsonl as kit's Python host does
// (tests/host/test_web_golden.py replays the same file there).

import { SELF } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker, { type Env } from "../src/index";
import { contentSecurityPolicy, localRefusal, ownLoopbackHosts } from "../src/web";
import { API, AUTH } from "./helpers";

const page = import.meta.glob("../../kit/web/*.{html,js,css}", { query: "?raw", import: "default", eager: true }) as Record<string, string>;
const golden = import.meta.glob("../../kit/host/golden/web_session.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;
const cspGolden = import.meta.glob("../../kit/host/golden/web_csp.jsonl", { query: "?raw", import: "default", eager: true }) as Record<string, string>;

interface Case {
  case: string;
  listen: string;
  origin: string | null;
  host: string | null;
  sec_fetch_site: string | null;
  refused: string | null;
}

const CASES: Case[] = golden["../../kit/host/golden/web_session.jsonl"]
  .split("\n")
  .filter((line) => line.trim() !== "")
  .map((line) => JSON.parse(line) as Case & { note?: string })
  .filter((c) => c.note === undefined);

interface CspCase {
  case: string;
  session_url: string | null;
  connect_src: string;
}

const CSP_CASES: CspCase[] = cspGolden["../../kit/host/golden/web_csp.jsonl"]
  .split("\n")
  .filter((line) => line.trim() !== "")
  .map((line) => JSON.parse(line) as CspCase & { note?: string })
  .filter((c) => c.note === undefined);

const BASE_HEADERS = { "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache" };
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** The Worker with extra vars, called directly (as Cloudflare would with that config). */
function withVars(vars: Partial<Env>): (request: Request) => Promise<Response> {
  const configured = { ...env, ...vars } as unknown as Env;
  return (request) => worker.fetch(request, configured);
}

/** The vars `kit dev --target cloudflare` gives a Worker listening on `listen`. */
function rehearsal(listen: string): (request: Request) => Promise<Response> {
  return withVars({ KIT_WEB_LOCAL_SESSIONS: "1", KIT_CONTAINER_EMULATOR: "http://127.0.0.1:9", KIT_WORKER_URL: `http://${listen}` });
}

function headersOf(answer: Response): Record<string, string> {
  return Object.fromEntries(answer.headers);
}

describe("the page", () => {
  it("serves kit/web/index.html at / without the token, under kit/host/web.py's headers", async () => {
    const answer = await SELF.fetch(`${API}/`);
    expect(answer.status).toBe(200);
    expect(await answer.text()).toBe(page["../../kit/web/index.html"]);
    expect(headersOf(answer)).toEqual({
      ...BASE_HEADERS,
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": CSP,
      "x-frame-options": "DENY",
      "cross-origin-opener-policy": "same-origin",
    });
    const head = await SELF.fetch(`${API}/`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe("");
  });

  for (const [name, type] of [
    ["app.js", "text/javascript; charset=utf-8"],
    ["render.js", "text/javascript; charset=utf-8"],
    ["style.css", "text/css; charset=utf-8"],
  ]) {
    it(`serves /web/${name} as kit/web has it`, async () => {
      const answer = await SELF.fetch(`${API}/web/${name}`);
      expect(answer.status).toBe(200);
      expect(await answer.text()).toBe(page[`../../kit/web/${name}`]);
      expect(headersOf(answer)).toEqual({ ...BASE_HEADERS, "content-type": type });
    });
  }

  it("serves no other file of kit/web: 401 without the token, 404 naming it with the token", async () => {
    for (const name of ["README.md", "__init__.py", "index.html", "..%2Fwrangler.jsonc", "app.js.map"]) {
      const anonymous = await SELF.fetch(`${API}/web/${name}`);
      expect(anonymous.status, name).toBe(401);
      const authed = await SELF.fetch(`${API}/web/${name}`, { headers: AUTH });
      expect(authed.status, name).toBe(404);
      expect(await authed.json()).toEqual({ error: "not_found", message: `The page has no file '${decodeURIComponent(name)}'.` });
    }
    for (const path of ["/index.html", "/README.md", "/web/", "/web/app.js/x"]) {
      expect((await SELF.fetch(`${API}${path}`)).status, path).toBe(401);
    }
    // The page's paths are public for reading only.
    expect((await SELF.fetch(`${API}/`, { method: "POST" })).status).toBe(401);
  });

  it("names no session endpoint when none is configured", async () => {
    const answer = await SELF.fetch(`${API}/web/config.json`);
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({ session_url: null });
    expect(headersOf(answer)).toEqual({ ...BASE_HEADERS, "content-type": "application/json" });
  });

  it("names the operator's endpoint (KIT_WEB_SESSION_URL, from kit.toml [web] session_url) and lets the page call it", async () => {
    const deployed = withVars({ KIT_WEB_SESSION_URL: "https://App.Example.com/kit-session?x=1" });
    const config = await deployed(new Request("https://acme.example.workers.dev/web/config.json"));
    expect(await config.json()).toEqual({ session_url: "https://App.Example.com/kit-session?x=1" });
    const index = await deployed(new Request("https://acme.example.workers.dev/"));
    expect(index.headers.get("content-security-policy")).toBe(CSP.replace("connect-src 'self';", "connect-src 'self' https://app.example.com;"));
  });
});

describe("the page's connect-src (kit/host/golden/web_csp.jsonl, as kit's Python hosts)", () => {
  for (const c of CSP_CASES) {
    it(`names only a well-formed origin: ${c.case}`, async () => {
      const policy = contentSecurityPolicy(c.session_url);
      expect(policy).toContain(`; connect-src ${c.connect_src}; base-uri 'none';`);
      // Served: a var set by hand (not through kit deploy) still gives the page, under that policy.
      const deployed = withVars({ KIT_WEB_SESSION_URL: c.session_url ?? undefined });
      const index = await deployed(new Request("https://acme.example.workers.dev/"));
      expect(index.status).toBe(200);
      expect(index.headers.get("content-security-policy")).toBe(policy);
      await index.body?.cancel();
    });
  }
});

describe("POST /web/session", () => {
  it("is not served on Cloudflare: 401 like any route the Worker does not make public", async () => {
    const good = { origin: "http://127.0.0.1:8787", host: "127.0.0.1:8787", "sec-fetch-site": "same-origin" };
    const request = () => new Request("http://127.0.0.1:8787/web/session", { method: "POST", headers: good });
    // Deployed: no rehearsal var. The var alone, without the container emulator, is not a rehearsal either.
    for (const fetch of [withVars({ KIT_WORKER_URL: "http://127.0.0.1:8787" }), withVars({ KIT_WEB_LOCAL_SESSIONS: "1", KIT_CONTAINER_EMULATOR: undefined, KIT_WORKER_URL: "http://127.0.0.1:8787" })]) {
      const answer = await fetch(request());
      expect(answer.status).toBe(401);
      expect(answer.headers.get("www-authenticate")).toBe("Bearer");
    }
    const config = await withVars({ KIT_WEB_LOCAL_SESSIONS: "1" })(new Request(`${API}/web/config.json`));
    expect(await config.json()).toEqual({ session_url: null });
  });

  it("is named by a rehearsal's page config", async () => {
    const answer = await rehearsal("127.0.0.1:8787")(new Request("http://127.0.0.1:8787/web/config.json"));
    expect(await answer.json()).toEqual({ session_url: "/web/session" });
  });

  for (const c of CASES) {
    it(`decides as kit's Python host: ${c.case}`, async () => {
      expect(localRefusal(ownLoopbackHosts(`http://${c.listen}`), c.origin, c.host, c.sec_fetch_site)).toBe(c.refused);
      const headers = new Headers();
      if (c.origin !== null) headers.set("origin", c.origin);
      if (c.host !== null) headers.set("host", c.host);
      if (c.sec_fetch_site !== null) headers.set("sec-fetch-site", c.sec_fetch_site);
      // workerd under wrangler dev takes the request's URL from its Host (as a browser sent it;
      // a Host no URL can hold is only in the header).
      const named = `http://${(c.host ?? c.listen).trim()}/web/session`;
      const at = new URL(URL.canParse(named) ? named : `http://${c.listen}/web/session`);
      const answer = await rehearsal(c.listen)(new Request(at, { method: "POST", headers }));
      if (c.refused === null) {
        expect(answer.status).toBe(201);
        const made = (await answer.json()) as { session_id: string; token: string; ws_url: string };
        expect(made.token).toMatch(/^kit-session-/);
        expect(made.ws_url).toBe(`ws://${at.host}/v1/sessions/${made.session_id}/ws`);
      } else {
        expect(answer.status).toBe(403);
        expect(await answer.json()).toEqual({ error: "forbidden_origin", message: c.refused });
      }
    });
  }
});
