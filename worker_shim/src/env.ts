// The Worker's bindings (wrangler.jsonc): read once at the edge, passed down.

import type { SessionDO } from "./session";

export interface Env {
  /** One SessionDO per session, named by the session id. */
  SESSION: DurableObjectNamespace<SessionDO>;
  /** The host API token (a secret): every HTTP route but /healthz needs it as a Bearer. */
  KIT_API_TOKEN: string;
  /** The instance type a session's container starts at (default `basic`). */
  KIT_SANDBOX_TIER?: string;
  /** Comma-separated browser origins allowed to open session sockets (docs/protocol.md §2). */
  KIT_ALLOWED_ORIGINS?: string;
}
