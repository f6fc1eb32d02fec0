"""Attachments: which are saved and under what name (writing them never follows a link the
sandbox user planted in its workspace: tests/runtime/test_files.py)."""

from __future__ import annotations

from email.message import EmailMessage

from kit.mail.message import parse
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
