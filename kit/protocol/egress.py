"""The contract between a sandbox and the host's egress proxy.

The runtime's loopback forwarder (:mod:`kit.runtime.egress_forwarder`) hands tools an
``HTTPS_PROXY`` URL carrying these credentials; the host's egress proxy
(:mod:`kit.host.egress`) checks them on every request:
``Proxy-Authorization: Basic base64(PROXY_USER + ":" + token)``.
"""

from __future__ import annotations

PROXY_USER = "kit"
"""The user name in ``Proxy-Authorization``; the session's egress token is the password."""
