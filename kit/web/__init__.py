"""The chat page: static files (``index.html``, ``app.js``, ``render.js``, ``style.css``)
that a host serves at ``/`` (:mod:`kit.host.web`). No build step: plain ES modules, no
third-party code; README.md says why markdown is rendered by kit's own small renderer."""

from __future__ import annotations

from pathlib import Path

WEB_DIR = Path(__file__).parent
"""Where the page's files are (package data of an installed kit)."""

__all__ = ["WEB_DIR"]
