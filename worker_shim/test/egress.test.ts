// Outbound interception (src/egress.ts): in production a session's container reaches kit's
// routes as http://kit.internal and the internet only through KitEgress, bound to its
// session before it starts. vitest.config.mts binds KIT_EGRESS (upstream.test on the
// default ports).

import { SELF, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { egressRules, matches, normalHost } from "../src/egress";
import worker from "../src/index";
import { kitJson } from "./controlhelpers";
import { FakeContainer } from "./fake_runtime";
import { Driver } from "./golden";
import { AUTH, attachContainer, createSession, sessionWithTurn, untilEnd, type Frame } from "./helpers";
import { sandboxToken } from "./storehelp";
import { sha256 } from "../src/tokens";

/** A fake container with workerd's interception calls, recorded in order with its starts. */
class InterceptedContainer extends FakeContainer {
  readonly calls: string[] = [];
  binding: Fetcher | null = null;

  override start(options?: ContainerStartupOptions): void {
    this.calls.push("start");
    super.start(options);
  }

  override async interceptAllOutboundHttp(binding: Fetcher): Promise<void> {
    this.calls.push("http *");
    this.binding = binding;
  }

  override async interceptOutboundHttps(addr: string, binding: Fetcher): Promise<void> {
    this.calls.push(`https ${addr}`);
    expect(binding).toBe(this.binding);
  }
}

/** `fn` with the container's interception binding, inside the DO that made it (an I/O
 * object of one Durable Object cannot be used from another context). */
async function viaEgress<T>(sessionId: string, container: InterceptedContainer, fn: (egress: Fetcher) => Promise<T>): Promise<T> {
  return runInDurableObject(env.SESSION.getByName(sessionId), () => fn(container.binding!));
}

describe("outbound interception", () => {
  it("binds the container's HTTP and HTTPS to the session before it starts; kit.internal reaches its own model and store routes only", async () => {
    const container = new InterceptedContainer();
    const [session, a, frames] = await sessionWithTurn(container);
    a.close();
    expect(frames.at(-1)?.kind).toBe("result");
    expect(container.calls).toEqual(["http *", "https *", "start"]);
    const config = JSON.parse((container.starts[0].env ?? {}).KIT_RUNTIME_CONFIG_JSON) as Record<string, string>;
    expect(config.model_base_url).toBe(`http://kit.internal/v1/sessions/${session.session_id}/model`);
    expect(config.store_url).toBe(`do+http://kit.internal/v1/sessions/${session.session_id}/store`);
    const sandboxStoreToken = await sandboxToken(session.session_id);
    const other = await createSession();
    await viaEgress(session.session_id, container, async (egress) => {
    // The model call reaches the upstream with the real key, which the container never had.
    const model = await egress.fetch(`${config.model_base_url}/v1/messages`, {
      method: "POST",
      headers: { "x-api-key": config.model_token, "content-type": "application/json" },
      body: JSON.stringify({ model: "claude-opus-5-5", max_tokens: 10, messages: [] }),
    });
    expect(model.status).toBe(200);
    expect(((await model.json()) as { x_api_key: string }).x_api_key).toBe(env.ANTHROPIC_API_KEY);
    // So does a store call, with the sandbox's store token.
    const store = await egress.fetch(`http://kit.internal/v1/sessions/${session.session_id}/store/load`, {
      method: "POST",
      headers: { authorization: `Bearer ${sandboxStoreToken}`, "content-type": "application/json" },
      body: JSON.stringify({ key: { project_key: "kit", session_id: session.session_id } }),
    });
    expect(store.status).toBe(200);
    expect(await store.json()).toEqual({ result: null });

    // Another session's routes and the Worker's API are not the sandbox's, token or not,
    // however the path is written.
    const own = session.session_id;
    const oth = other.session_id;
    for (const [url, headers] of [
      [`http://kit.internal/v1/sessions/${oth}/model/v1/messages`, { "x-api-key": config.model_token }],
      [`http://kit.internal/v1/sessions/${oth}/store/load`, { authorization: `Bearer ${sandboxStoreToken}` }],
      ["http://kit.internal/_kit/sessions", AUTH],
      ["http://kit.internal/v1/sessions", AUTH],
      [`http://kit.internal/v1/sessions/${own}/store-token`, AUTH],
      [`http://kit.internal/v1/sessions/${own}/model/../../${oth}/model/v1/messages`, { "x-api-key": config.model_token }],
      [`http://kit.internal/v1/sessions/${own}%2F..%2F..%2F${oth}/model/v1/messages`, { "x-api-key": config.model_token }],
      [`http://kit.internal//v1/sessions/${oth}/model/v1/messages`, { "x-api-key": config.model_token }],
      [`http://kit.internal/v1/sessions/${own.toUpperCase()}/model/v1/messages`, { "x-api-key": config.model_token }],
      [`http://KIT.INTERNAL.:8080/_kit/sessions`, AUTH],
    ] as const) {
      const refused = await egress.fetch(url, { method: "POST", headers, body: "{}" });
      expect(refused.status, url).toBe(403);
      expect(((await refused.json()) as { message: string }).message).toContain("only its own session's");
    }
    });
  });

  it("binds a running container again when a new instance adopts it", async () => {
    const container = new InterceptedContainer();
    const [session, a, first] = await sessionWithTurn(container);
    a.close();
    expect(first.at(-1)?.kind).toBe("result");
    expect(await kitJson("POST", `/do/${session.session_id}/evict`)).toMatchObject({ status: 200 });
    container.forgetInstance(); // the container outlived the instance
    await attachContainer(session.session_id, container);
    const b = await Driver.open(session.session_id);
    b.send(JSON.stringify({ type: "hello", token: session.token, last_seq: first.at(-1)!.seq }));
    expect(await b.recv()).toMatchObject({ type: "welcome", resume: "none" });
    b.send(JSON.stringify({ type: "user", client_msg_id: "c-2", text: "two" }));
    const frames = await untilEnd(b);
    b.close();
    expect(frames.at(-1)?.data?.text).toBe("You said: two. How can I help?");
    expect(container.calls).toEqual(["http *", "https *", "start", "http *", "https *"]);
  });

  it("lets through what [sandbox] egress allows and refuses the rest, naming the fix", async () => {
    const container = new InterceptedContainer();
    const [session, a] = await sessionWithTurn(container);
    a.close();
    await viaEgress(session.session_id, container, async (egress) => {
    const allowed = await egress.fetch("http://UPSTREAM.test./anything", { method: "POST", body: "{}" });
    expect(allowed.status).toBe(200);
    expect(((await allowed.json()) as { url: string }).url).toContain("upstream.test");
    // A redirect goes back to the container: never followed to a host not on the list.
    const redirect = await egress.fetch("http://upstream.test/__redirect?to=http://elsewhere.test/x", { redirect: "manual" });
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get("location")).toBe("http://elsewhere.test/x");
    for (const url of ["http://elsewhere.test/", "http://upstream.test:8080/", "http://sub.upstream.test/", "http://[::1]/", "http://upstream..test/", "http://a_b.upstream.test/"]) {
      const refused = await egress.fetch(url);
      expect(refused.status, url).toBe(403);
      expect(await refused.text()).toMatch(/not on this agent's egress allowlist\. Add it to \[sandbox\] egress in kit\.toml/);
    }
    });
  });

  it("starts no container it cannot intercept: the turn fails with a sandbox failure that says why", async () => {
    const container = new FakeContainer();
    Object.assign(container, { interceptAllOutboundHttp: undefined }); // a runtime without it
    const [session, a, frames] = await sessionWithTurn(container);
    a.close();
    expect(container.starts).toHaveLength(0);
    const failed = frames.filter((f) => f.kind === "sandbox" && f.data?.state === "failed");
    expect(failed.length).toBeGreaterThan(0);
    expect(String(failed[0].data?.message)).toContain("cannot intercept the container's outbound HTTP");
    expect(frames.at(-1)?.data?.code).toBe("turn_failed");
  });
});

describe("the Worker's own URL", () => {
  it("serves no model route when deployed: a model token read by a tool spends from nowhere but its container", async () => {
    const container = new InterceptedContainer();
    const [session, a] = await sessionWithTurn(container);
    a.close();
    const config = JSON.parse((container.starts[0].env ?? {}).KIT_RUNTIME_CONFIG_JSON) as Record<string, string>;
    const deployed = { ...env, KIT_PUBLIC_MODEL_ROUTE: undefined, KIT_WORKER_URL: undefined, KIT_CONTAINER_EMULATOR: undefined };
    const call = (headers: Record<string, string>) =>
      worker.fetch(
        new Request(`https://acme.example.workers.dev/v1/sessions/${session.session_id}/model/v1/messages`, {
          method: "POST",
          headers: { "content-type": "application/json", ...headers },
          body: JSON.stringify({ model: "claude-opus-5-5", max_tokens: 10, messages: [] }),
        }),
        deployed,
      );
    expect((await call({ "x-api-key": config.model_token })).status).toBe(401);
    expect((await call({ "x-api-key": config.model_token, ...AUTH })).status).toBe(404);
    // Nor the emulator's delivery route.
    const id = env.SESSION.idFromName(session.session_id).toString();
    const delivered = await worker.fetch(new Request(`https://acme.example.workers.dev/_egress/${id}`, { method: "POST", body: "{}" }), deployed);
    expect(delivered.status).toBe(401);
    // Answered by the Worker itself (its API-token refusal), never handed to the DO.
    expect(delivered.headers.get("www-authenticate")).toBe("Bearer");
    const authed = await worker.fetch(new Request(`https://acme.example.workers.dev/_egress/${id}`, { method: "POST", headers: AUTH, body: "{}" }), deployed);
    expect(authed.status).toBe(404);
  });
});

describe("the rehearsal's deliveries (kit's container emulator)", () => {
  it("reach the session's KitEgress with the token kept at interception, or the one before it, until the sandbox's tokens are revoked", async () => {
    const container = new InterceptedContainer();
    const [session, a] = await sessionWithTurn(container);
    a.close();
    const config = JSON.parse((container.starts[0].env ?? {}).KIT_RUNTIME_CONFIG_JSON) as Record<string, string>;
    const stub = env.SESSION.getByName(session.session_id);
    const keep = (token: string) =>
      runInDurableObject(stub, async (instance) => {
        const held = instance as unknown as { log: { setMeta(k: string, v: string): void; meta(k: string): string | null }; emulated: unknown };
        // What HttpContainer.interceptAllOutboundHttp does through its egressToken hook.
        held.log.setMeta("egress_token_prev_sha256", held.log.meta("egress_token_sha256") ?? "");
        held.log.setMeta("egress_token_sha256", await sha256(token));
      });
    const rehearsal = { ...env, KIT_CONTAINER_EMULATOR: "http://emulator.test" };
    const id = env.SESSION.idFromName(session.session_id).toString();
    const deliver = async (token: string) => {
      const answer = await worker.fetch(
        new Request(`http://127.0.0.1:8787/_egress/${id}`, {
          method: "POST",
          headers: {
            "x-kit-egress-token": token,
            "x-kit-egress-url": `http://kit.internal/v1/sessions/${session.session_id}/model/v1/messages`,
            "x-api-key": config.model_token,
            "content-type": "application/json",
          },
          body: JSON.stringify({ model: "claude-opus-5-5", max_tokens: 10, messages: [] }),
        }),
        rehearsal,
      );
      const text = await answer.text();
      return { status: answer.status, text };
    };
    await keep("kit-egress-one");
    const delivered = await deliver("kit-egress-one");
    expect(delivered.status).toBe(200);
    expect((JSON.parse(delivered.text) as { x_api_key: string }).x_api_key).toBe(env.ANTHROPIC_API_KEY);
    expect((await deliver("kit-egress-wrong")).status).toBe(401);
    await keep("kit-egress-two"); // a new instance intercepted again: both work meanwhile
    expect((await deliver("kit-egress-one")).status).toBe(200);
    expect((await deliver("kit-egress-two")).status).toBe(200);
    await runInDurableObject(stub, (instance) => (instance as unknown as { runner: { host: { revokeSandboxTokens(): void } } }).runner.host.revokeSandboxTokens());
    expect((await deliver("kit-egress-one")).status).toBe(401);
    expect((await deliver("kit-egress-two")).status).toBe(401);
    // An id that is no Durable Object's: 404 from the Worker.
    const bogus = await worker.fetch(new Request(`http://127.0.0.1:8787/_egress/${"f".repeat(64)}`, { method: "POST", body: "{}" }), rehearsal);
    expect(bogus.status).toBe(404);
  });
});

describe("egress rules", () => {
  it("match as kit/bundle/allowlist.py's do", () => {
    const [exact, wild, port] = egressRules(
      JSON.stringify([
        { host: "api.github.com", wildcard: false, port: null },
        { host: "pypi.org", wildcard: true, port: null },
        { host: "127.0.0.1", wildcard: false, port: 8080 },
      ]),
    );
    expect(matches(exact, "api.github.com", 443)).toBe(true);
    expect(matches(exact, "api.github.com", 80)).toBe(true);
    expect(matches(exact, "api.github.com", 8443)).toBe(false);
    expect(matches(exact, "x.api.github.com", 443)).toBe(false);
    expect(matches(wild, "files.pypi.org", 443)).toBe(true);
    expect(matches(wild, "a.b.pypi.org", 80)).toBe(true);
    expect(matches(wild, "pypi.org", 443)).toBe(false);
    expect(matches(wild, "evilpypi.org", 443)).toBe(false);
    expect(matches(port, "127.0.0.1", 8080)).toBe(true);
    expect(matches(port, "127.0.0.1", 443)).toBe(false);
    expect(egressRules(undefined)).toEqual([]);
    expect(normalHost("API.GitHub.com.")).toBe("api.github.com");
    expect(normalHost("127.0.0.1")).toBe("127.0.0.1");
    for (const bad of ["", ".pypi.org", "evil..pypi.org", "a_b.pypi.org", "-a.pypi.org", "pypi.123", "x.0x7f", "[::1]", "a.b.."]) {
      expect(normalHost(bad), bad).toBeNull();
    }
    expect(() => egressRules('{"host": "x"}')).toThrow(/not a JSON list/);
    expect(() => egressRules('[{"host": "x"}]')).toThrow(/not \{host, wildcard, port\}/);
  });
});
