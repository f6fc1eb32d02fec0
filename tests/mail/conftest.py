"""The mail tests' `kit dev`: a test agent with ``[mail] address``, its SMTP port any free one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.agents import write_agent
from tests.e2e.test_kit_dev import _env, start_kit_dev, stop_kit_dev
from tests.mail.test_dev_mail import AGENT, Mailbox


@pytest.fixture
async def mailbox(kit_tmp: Path) -> AsyncIterator[Mailbox]:
    project = write_agent(kit_tmp / "agent", extra_toml=f'\n[mail]\naddress = "{AGENT}"\n')
    state = kit_tmp / "state"
    dev = await start_kit_dev(project, _env(KIT_STATE_DIR=str(state), KIT_SMTP_PORT="0"))
    yield Mailbox(dev, state)
    await stop_kit_dev(dev)
