"""kit: deploy Claude Agent SDK agents with sessions that survive their sandbox.

The package root stays import-light: ``kit.protocol`` and ``kit.runtime`` import it
inside the sandbox.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
