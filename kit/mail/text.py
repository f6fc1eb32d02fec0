"""The text a message gives the agent: its own words, without the quoted history."""

from __future__ import annotations

import re

from kit.mail.message import Attachment, Inbound, utf8

MAX_TURN_CHARS = 32_000
"""Longest body handed to the agent; the rest is cut with a note saying so."""

_CUT = [
    re.compile(r"^-{2,}\s*Original Message\s*-{2,}\s*$", re.I),
    re.compile(r"^-{2,}\s*Forwarded message\s*-{2,}\s*$", re.I),
    re.compile(r"^_{10,}\s*$"),
    re.compile(r"^On\b.{0,200}\bwrote:\s*$", re.I),
    re.compile(r"^-- ?$"),
]
_ON_START = re.compile(r"^On\b", re.I)
_WROTE_END = re.compile(r"\bwrote:\s*$", re.I)


def strip_quotes(text: str) -> str:
    """``text`` without quoted history and signature.

    Cut at the first line that starts a quote or a signature (``On … wrote:``, also over
    two lines; ``-----Original Message-----``; a line of underscores, Outlook's separator;
    ``-- ``), then drop lines starting with ``>``; trailing blank lines go. Shared with the
    shim through ``golden/strip.jsonl``.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        if any(p.match(line) for p in _CUT):
            break
        if (
            _ON_START.match(line)
            and i + 1 < len(lines)
            and _WROTE_END.search(lines[i + 1])
            and len(line) + len(lines[i + 1]) <= 300
        ):
            break
        if line.startswith(">"):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept).strip("\n").strip()


def turn_text(msg: Inbound, saved: list[str] | None = None) -> str:
    """What the agent reads for ``msg``: who wrote, the subject, the body without quotes,
    and the attachments (``saved``: for each, where it went — ``saved as PATH`` — or why it
    did not; None: none were saved)."""
    body = strip_quotes(msg.text)
    if len(body) > MAX_TURN_CHARS:
        body = body[:MAX_TURN_CHARS] + f"\n[… cut: the message was {len(body)} characters]"
    sender = f"{msg.sender_name} <{msg.sender}>" if msg.sender_name else msg.sender
    parts = [f"Email from {sender}", f"Subject: {msg.subject}" if msg.subject else "", "", body]
    if msg.attachments:
        parts += ["", "Attachments:"]
        parts += [
            _attachment_line(a, saved[i] if saved else None) for i, a in enumerate(msg.attachments)
        ]
    text = "\n".join(p for i, p in enumerate(parts) if p or i >= 2).rstrip()
    return utf8(text)  # a lone surrogate would make the turn unsendable, retried forever


def _attachment_line(a: Attachment, where: str | None) -> str:
    return f"- {a.filename} ({a.content_type}, {a.size} bytes): {where or 'not saved'}"


MAX_ATTACHMENTS = 10
"""Attachments saved per message; the rest are listed, not saved."""
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
"""The largest attachment saved."""
_UNSAFE = re.compile(r"[^\w.\- ]+")
MAX_NAME_BYTES = 240
"""A saved name's UTF-8 bytes, room left for `` (10)``: a session's file path takes at most
255 bytes a part (:func:`kit.protocol.runtime_api.file_path_parts`)."""


def safe_filename(name: str) -> str:
    """A plain file name for an attachment's name: its last path part, only letters,
    digits, ``.``, ``-``, ``_`` and spaces, no leading dot, at most 100 characters and
    :data:`MAX_NAME_BYTES` bytes (the extension kept)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip(" .")
    if len(base) > 100:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 99 - len(ext)] + dot + ext) if dot and len(ext) <= 10 else base[:100]
    while len(base.encode()) > MAX_NAME_BYTES:  # at most 100 times
        stem, dot, ext = base.rpartition(".")
        base = stem[:-1] + dot + ext if dot and len(stem) > 1 and len(ext) <= 10 else base[:-1]
    return base or "attachment"


def attachment_plan(msg: Inbound, folder: str) -> list[tuple[str | None, str]]:
    """For each attachment of ``msg``: the file name to save it as in ``folder`` (None:
    not saved) and the phrase the agent reads (``saved as folder/name`` or why not)."""
    plan: list[tuple[str | None, str]] = []
    taken: set[str] = set()
    for n, a in enumerate(msg.attachments):
        if n >= MAX_ATTACHMENTS:
            plan.append((None, f"not saved (more than {MAX_ATTACHMENTS} attachments)"))
            continue
        if a.size > MAX_ATTACHMENT_BYTES:
            plan.append((None, f"not saved (larger than {MAX_ATTACHMENT_BYTES // 2**20} MiB)"))
            continue
        first = name = safe_filename(a.filename)
        stem, dot, ext = first.rpartition(".")
        for k in range(2, MAX_ATTACHMENTS + 2):  # one name per attachment at most
            if name.lower() not in taken:
                break
            name = f"{stem} ({k}){dot}{ext}" if dot else f"{first} ({k})"
        taken.add(name.lower())
        plan.append((name, f"saved as {folder}/{name}"))
    return plan
