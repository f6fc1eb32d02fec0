// Tests run inside workerd with the Worker of wrangler.jsonc (docs: worker_shim/README.md).
import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.jsonc" },
      miniflare: {
        bindings: {
          KIT_API_TOKEN: "kit-api-test-token",
          ANTHROPIC_API_KEY: "sk-ant-test-real-key",
          KIT_MODEL_UPSTREAM: "http://upstream.test",
          KIT_WORKER_URL: "http://shim.test",
        },
        // Every fetch out of the Worker (the model route's upstream): echoed, so a test
        // sees what left — the URL, the key, the body.
        outboundService: async (request: Request) =>
          Response.json({
            url: request.url,
            method: request.method,
            x_api_key: request.headers.get("x-api-key"),
            authorization: request.headers.get("authorization"),
            body: await request.text(),
          }),
      },
    }),
  ],
  server: { fs: { allow: [".."] } },
  // A frame wait gives up after 10 s with a message naming what it waited for.
  test: { testTimeout: 30_000 },
});
