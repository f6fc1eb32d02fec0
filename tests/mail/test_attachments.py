"""Attachments: which are saved and under what name (writing them never follows a link the
sandbox user planted in its workspace: tests/runtime/test_files.py)."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from kit.mail.channel import MailChannel
from kit.mail.message import parse
from kit.mail.rules import Agent
from kit.mail.store import SqliteMailStore
from kit.mail.text import MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, attachment_plan, turn_text


def _mail(files: list[tuple[str, bytes]]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "agent@example.com"
    msg["Message-ID"] = "<a1@example.org>"
    msg["Subject"] = "files"
    msg.set_content("See attached.")
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def test_names_are_plain_unique_and_limits_hold() -> None:
    files = [("../../etc/passwd", b"x"), ("a.txt", b"1"), ("A.txt", b"2"), (".env", b"3")]
    files += [(f"f{n}.bin", b"z") for n in range(MAX_ATTACHMENTS)]
    msg = parse(_mail(files))
    plan = attachment_plan(msg, "mail/abc")
    assert [name for name, _ in plan[:4]] == ["passwd", "a.txt", "A (2).txt", "env"]
    assert all(name is None for name, _ in plan[MAX_ATTACHMENTS:])
    assert plan[-1][1] == f"not saved (more than {MAX_ATTACHMENTS} attachments)"
    text = turn_text(msg, [why for _, why in plan])
    assert (
        "- ../../etc/passwd (application/octet-stream, 1 bytes): saved as mail/abc/passwd" in text
    )


def test_a_file_over_the_limit_is_listed_not_saved() -> None:
    msg = parse(_mail([("big.bin", b"x" * (MAX_ATTACHMENT_BYTES + 1))]))
    ((name, why),) = attachment_plan(msg, "mail/abc")
    assert name is None
    assert why == "not saved (larger than 10 MiB)"


async def test_each_attachment_is_told_saved_or_not_on_its_own(tmp_path: Path) -> None:
    """The host refuses the second of three attachments: the agent is told the first and
    third were saved and why the second was not."""
    saved: list[str] = []

    async def save(session_id: str, folder: str, files: list[tuple[str, bytes]]) -> None:
        ((name, _),) = files
        if name == "b.bin":
            raise RuntimeError("the host refused it")
        saved.append(f"{folder}/{name}")

    channel = MailChannel(
        SqliteMailStore(tmp_path / "mail.sqlite"),
        Agent("agent@example.com"),
        "http://127.0.0.1:9",
        "t" * 32,
        save_files=save,
    )
    msg = parse(_mail([("a.bin", b"1"), ("b.bin", b"2"), ("c.bin", b"3")]))
    told = await channel._save_attachments(msg, "s1")
    assert told is not None
    assert [t.split(" ", 1)[0] for t in told] == ["saved", "not", "saved"]
    assert told[1] == "not saved (the host refused it)"
    assert [p.rsplit("/", 1)[1] for p in saved] == ["a.bin", "c.bin"]
