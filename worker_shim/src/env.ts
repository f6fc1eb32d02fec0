// The Worker's bindings (wrangler.jsonc): read once at the edge, passed down.

import type { SessionDO } from "./session";
import type { SessionIndex } from "./sessionindex";
import type { MailIndex } from "./mail/mailindex";

export interface Env {
  /** One SessionDO per session, named by the session id. */
  SESSION: DurableObjectNamespace<SessionDO>;
  /** The list of sessions (one object, sessionindex.ts): DOs cannot be listed. */
  SESSION_INDEX: DurableObjectNamespace<SessionIndex>;
  /** The email threads (one object, mail/mailindex.ts): routing, refusals, the outbox. */
  MAIL_INDEX: DurableObjectNamespace<MailIndex>;
  /** Replies go out through this send_email binding (mail/replies.ts); absent: none can. */
  KIT_MAIL?: SendEmail;
  /** The agent's mail address (kit.toml `[mail] address`, set by kit deploy and the
   * rehearsal); absent: every inbound message is refused `no_address`. */
  KIT_MAIL_ADDRESS?: string;
  /** The name replies are signed with in `From` (optional). */
  KIT_MAIL_NAME?: string;
  /** The host API token (a secret): every HTTP route but /healthz needs it as a Bearer. */
  KIT_API_TOKEN: string;
  /** The instance type a session's container starts at (default `basic`). */
  KIT_SANDBOX_TIER?: string;
  /** Comma-separated browser origins allowed to open session sockets (docs/protocol.md §2). */
  KIT_ALLOWED_ORIGINS?: string;
  /** The model API key (a secret): the model route adds it to sandboxes' calls. */
  ANTHROPIC_API_KEY?: string;
  /** The bundle's `[limits]` as JSON (kit/deploy/cloudflare/target.py `limits_var`);
   * absent or `{}`: kit's defaults. The model route enforces them (spend.ts). */
  KIT_LIMITS?: string;
  /** Where model calls go (default https://api.anthropic.com; the offline model in a rehearsal). */
  KIT_MODEL_UPSTREAM?: string;
  /** The bundle's `[sandbox] egress` allowlist as JSON rules (kit/deploy/cloudflare/target.py
   * `egress_var`); absent or `[]`: a sandbox reaches only kit's own routes (egress.ts). */
  KIT_EGRESS?: string;
  /** A rehearsal's: this Worker's loopback URL, where kit's container emulator delivers
   * the container's intercepted requests (containers always call `http://kit.internal`). */
  KIT_WORKER_URL?: string;
  /** Where the bundle is inside the container's image, and its sha256 (checked by the runtime). */
  KIT_BUNDLE_DIR?: string;
  KIT_BUNDLE_DIGEST?: string;
  /** kit's container emulator (`wrangler dev` has no containers): its URL on loopback, and
   * its token (a secret, in .dev.vars); the image its containers run. */
  KIT_CONTAINER_EMULATOR?: string;
  KIT_CONTAINER_EMULATOR_TOKEN?: string;
  KIT_CONTAINER_IMAGE?: string;
  /** "1" lets POST /v1/sessions/{id}/store-token mint tokens that may use any key of that
   * DO's store, as the SDK's conformance suite needs: for tests only, never in production. */
  KIT_STORE_CONFORMANCE?: string;
  /** "1" serves the model route (`/v1/sessions/{id}/model/…`) on the Worker's own URL, for
   * tests that call it directly: never in production, where only the session's container
   * reaches it, through outbound interception (egress.ts). */
  KIT_PUBLIC_MODEL_ROUTE?: string;
  /** The chat page's files (kit/web, the Worker's static assets; web.ts serves them). */
  ASSETS: Fetcher;
  /** Where a deployed page gets a session: kit.toml's `[web] session_url`, set by kit
   * deploy (served in /web/config.json, its origin added to the page's connect-src);
   * absent: the page can only rejoin sessions it was linked to. */
  KIT_WEB_SESSION_URL?: string;
  /** "1" serves POST /web/session (a session without the API token for a same-origin page
   * of this Worker at a loopback name): set only by `kit dev --target cloudflare`, and
   * honoured only with KIT_CONTAINER_EMULATOR (a rehearsal), never on Cloudflare. */
  KIT_WEB_LOCAL_SESSIONS?: string;
}
