"""``python -m kit.runtime``: serve one session inside a sandbox.

A config passed in the environment (``KIT_RUNTIME_CONFIG_JSON``: Cloudflare's containers,
Fly's machines) makes the runtime exec itself on a private file
(:func:`kit.runtime.config.exec_with_config_file`); that happens here, before the server
and the Agent SDK are imported, so a container start imports them once, not twice (~1.1 s
of CPU each; bench/cf_rehearsal.py).
"""

import os

from kit.runtime import config as startup

if startup.CONFIG_JSON_ENV in os.environ:
    startup.exec_early(os.environ)  # returns only if it cannot: main() says why

from kit.runtime.server import main  # after the exec: imported once

main()
