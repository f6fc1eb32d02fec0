"""Ask the agent that `kit dev` runs one question, from Python, and print the answer.

    .venv/bin/python examples/client.py "Where is my order 1042?"

It finds `kit dev` through the file `kit dev` writes when it starts, `dev.json` in its
state folder (by default `.kit/` in the agent's folder; here the example agent's, or
KIT_STATE_DIR). To talk to another host, set KIT_URL and KIT_API_TOKEN instead.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

from kit.client import SessionClient, create_session

EXAMPLE_AGENT = Path(__file__).resolve().parent.parent / "skills" / "support-bot"


def find_kit_dev() -> tuple[str, str]:
    """The host's URL and API token."""
    if os.environ.get("KIT_URL"):
        return os.environ["KIT_URL"], os.environ["KIT_API_TOKEN"]
    state = Path(os.environ.get("KIT_STATE_DIR") or EXAMPLE_AGENT / ".kit")
    try:
        dev = json.loads((state / "dev.json").read_text())
    except FileNotFoundError:
        sys.exit(f"No running `kit dev` found ({state / 'dev.json'} is missing): start it first.")
    return dev["url"], Path(dev["api_token_file"]).read_text().strip()


async def main(question: str) -> None:
    url, api_token = find_kit_dev()
    info = await create_session(url, api_token)
    print(f"session {info.session_id}")
    async with SessionClient(info.ws_url, info.token) as client:
        async for event in client.turn(question):
            if event.kind == "tool_use":
                print(f"  [tool] {event.data['name']}")
            elif event.kind == "result":
                print(event.data.get("text") or f"(the turn ended: {event.data.get('subtype')})")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Where is my order 1042?"))
