#!/usr/bin/env python3
"""Print a greeting for NAME: the hello skill's script.

Skills run from a read-only bundle with the workspace as the current directory, so scripts
use only the standard library and never write next to themselves.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def greeting(name: str) -> str:
    """The line this script prints for ``name``."""
    return f"Hello, {name}! This reply came from the hello skill's script."


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="hello.py", description="Print a greeting.")
    parser.add_argument("name", nargs="?", default="world", help="who to greet (default: world)")
    args = parser.parse_args(argv)
    print(greeting(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
