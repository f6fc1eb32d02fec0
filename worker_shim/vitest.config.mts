// Tests run inside workerd with the Worker of wrangler.jsonc (docs: worker_shim/README.md).
import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

/** Every request the upstream stand-in received (bodies), for `GET /__seen`. */
const seen: string[] = [];
/** Replies held at their gate until `POST /__release/<gate>`. */
const gates = new Map<string, () => void>();
const gateOpened = new Map<string, Promise<void>>();

function gate(name: string): Promise<void> {
  let opened = gateOpened.get(name);
  if (opened === undefined) {
    opened = new Promise<void>((resolve) => gates.set(name, resolve));
    gateOpened.set(name, opened);
  }
  return opened;
}

/** The model upstream stand-in (the model route's outbound fetches). By default it echoes
 * what left the Worker (the URL, the key, the body). A body with `echo_reply` is answered
 * with it instead: `{status, json}` or `{status, sse: [events], gate?, held_after?}` (an SSE
 * reply that, with a gate, stops after `held_after` events until the gate is released). */
async function upstream(request: Request): Promise<Response> {
  const url = new URL(request.url);
  if (url.pathname === "/__seen") return Response.json(seen);
  if (url.pathname === "/__redirect") return new Response(null, { status: 302, headers: { location: url.searchParams.get("to") ?? "/" } });
  if (url.pathname.startsWith("/__release/")) {
    void gate(url.pathname.slice("/__release/".length));
    gates.get(url.pathname.slice("/__release/".length))?.();
    return Response.json({ released: true });
  }
  const body = await request.text();
  seen.push(body);
  let reply: { status?: number; json?: unknown; sse?: Array<{ type: string }>; gate?: string; held_after?: number } | undefined;
  try {
    reply = (JSON.parse(body) as { echo_reply?: typeof reply }).echo_reply;
  } catch {
    reply = undefined;
  }
  if (reply === undefined) {
    return Response.json({
      url: request.url,
      method: request.method,
      x_api_key: request.headers.get("x-api-key"),
      authorization: request.headers.get("authorization"),
      accept_encoding: request.headers.get("accept-encoding"),
      body,
    });
  }
  if (reply.sse === undefined) return Response.json(reply.json, { status: reply.status ?? 200 });
  const events = reply.sse.map((e) => new TextEncoder().encode(`event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`));
  const held = reply.gate === undefined ? null : { at: reply.held_after ?? 1, open: gate(reply.gate) };
  let sent = 0;
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (held !== null && sent === held.at) await held.open;
      if (sent === events.length) return controller.close();
      controller.enqueue(events[sent++]);
    },
  });
  return new Response(stream, { status: reply.status ?? 200, headers: { "content-type": "text/event-stream" } });
}

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.jsonc" },
      miniflare: {
        bindings: {
          KIT_API_TOKEN: "kit-api-test-token",
          // The agent's mail address and name (test/mail.test.ts).
          KIT_MAIL_ADDRESS: "agent@example.com",
          KIT_MAIL_NAME: "Acme Support",
          ANTHROPIC_API_KEY: "sk-ant-test-real-key",
          KIT_MODEL_UPSTREAM: "http://upstream.test",
          KIT_WORKER_URL: "http://shim.test",
          // test/model.test.ts calls the model route directly (src/index.ts).
          KIT_PUBLIC_MODEL_ROUTE: "1",
          // Limits for the route's tests (test/model.test.ts), in kit deploy's form.
          // The egress allowlist of test/egress.test.ts, in kit deploy's form.
          KIT_EGRESS: JSON.stringify([{ host: "upstream.test", wildcard: false, port: null }]),
          KIT_LIMITS: JSON.stringify({ models: ["claude-opus-5-5", "claude-haiku-*"], turn_tokens: 1000, session_tokens: 1500 }),
        },
        outboundService: upstream,
      },
    }),
  ],
  server: { fs: { allow: [".."] } },
  // A frame wait gives up after 10 s with a message naming what it waited for.
  // test/web.test.ts reads the page's stylesheet (?raw): vitest hands CSS it does not
  // process over as an empty string.
  test: { testTimeout: 30_000, css: { include: [/kit\/web\/style\.css/] } },
});
