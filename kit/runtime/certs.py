"""Trust for HTTPS that Cloudflare's outbound interception terminates.

On Cloudflare a session's container reaches the internet only through the Worker
(worker_shim/src/egress.ts): its HTTPS is intercepted, with TLS terminated by a CA that
Cloudflare installs in the container at :data:`CLOUDFLARE_CA` (reference/cloudflare.md §6).
The runtime runs as an unprivileged user and cannot add it to the system's store, so the
agent's tools are pointed at a bundle of the system's CAs plus that one, in the variables
the common clients read. Where the file is absent (every other target) nothing changes.
"""

from __future__ import annotations

from pathlib import Path

CLOUDFLARE_CA = Path("/etc/cloudflare/certs/cloudflare-containers-ca.crt")
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUNDLE_NAME = "kit-ca-bundle.pem"
BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")
"""OpenSSL's default file, Python requests, curl and git: each replaces the system store, so
each gets the whole bundle."""


def intercepted_tls_env(
    folder: Path, *, ca: Path = CLOUDFLARE_CA, system: Path = SYSTEM_BUNDLE
) -> dict[str, str]:
    """The variables that make the agent's tools trust ``ca`` besides the system's CAs (a
    bundle of both written in ``folder``: the agent's home, not a tmp a tool may clean);
    none when ``ca`` cannot be read (absent: every other target)."""
    try:
        extra = ca.read_bytes()
    except OSError:
        return {}
    try:
        base = system.read_bytes()
    except OSError:
        base = b""
    bundle = folder / BUNDLE_NAME
    bundle.write_bytes(base.rstrip(b"\n") + b"\n" + extra if base else extra)
    env = dict.fromkeys(BUNDLE_VARS, str(bundle))
    env["NODE_EXTRA_CA_CERTS"] = str(ca)  # Node adds it to its own store
    return env
