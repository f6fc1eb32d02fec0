// The bindings the tests see through `env` (vitest.config.mts binds KIT_API_TOKEN).
declare namespace Cloudflare {
  interface Env {
    SESSION: DurableObjectNamespace<import("../src/session").SessionDO>;
    SESSION_INDEX: DurableObjectNamespace<import("../src/sessionindex").SessionIndex>;
    MAIL_INDEX: DurableObjectNamespace<import("../src/mail/mailindex").MailIndex>;
    KIT_MAIL?: SendEmail;
    KIT_MAIL_ADDRESS?: string;
    KIT_MAIL_NAME?: string;
    KIT_API_TOKEN: string;
    KIT_SANDBOX_TIER?: string;
    ANTHROPIC_API_KEY: string;
    KIT_MODEL_UPSTREAM: string;
    KIT_WORKER_URL: string;
    KIT_STORE_CONFORMANCE?: string;
    ASSETS: Fetcher;
  }
}
