"""``python -m kit.runtime``: serve one session inside a sandbox."""

from kit.runtime.server import main

main()
