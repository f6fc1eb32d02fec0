// Tests run inside workerd with the Worker of wrangler.jsonc (docs: worker_shim/README.md).
import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.jsonc" },
      miniflare: { bindings: { KIT_API_TOKEN: "kit-api-test-token" } },
    }),
  ],
  server: { fs: { allow: [".."] } },
  // A frame wait gives up after 10 s with a message naming what it waited for.
  test: { testTimeout: 30_000 },
});
