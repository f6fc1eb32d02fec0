"""Hostile mail, queries and commands against the real `kit dev`: what a sender, a mail
client and a user at the terminal see."""

from __future__ import annotations

import stat

import aiosmtplib
import httpx
import pytest

from tests.kitproc import spawn_kit
from tests.mail.test_dev_mail import AGENT, Mailbox, mail, parsed

OUTLOOK_ID = "BY5PR11MB4243D0A3C5D6E2F1B3A4B9F4C8A2912345@BY5PR11MB4243.namprd11.prod.outlook.com"


def _wire(raw: str) -> list[str]:
    """A reply's header lines as they went out, unfolded."""
    return raw.split("\r\n\r\n", 1)[0].replace("\r\n ", " ").split("\r\n")


async def test_hostile_headers_get_one_clean_threaded_reply(mailbox: Mailbox) -> None:
    """A Subject with an encoded line break and Bcc, an Outlook-length Message-ID, raw
    UTF-8 headers (SMTPUTF8), a message with 100,000 headers and one with 200,000
    References: each answered once; the
    reply's Subject is one line with no Bcc header, its In-Reply-To is the id itself on the
    wire (a mail client threads it), the UTF-8 name and Subject reach the agent as text (a
    non-ASCII address, which kit cannot answer, is refused at once, not retried forever),
    and the many headers and ids are read in time (the SMTP client's 30 s; the email
    package took minutes for them)."""
    injected = (
        b"From: Alice <alice@example.org>\r\nTo: agent@example.com\r\n"
        b"Message-ID: <injected@example.org>\r\n"
        b"Subject: =?utf-8?q?Order=0D=0ABcc:_x@evil.test?=\r\n\r\nWho gets this?\r\n"
    )
    outlook = mail("Threaded?")
    del outlook["Message-ID"]
    outlook["Message-ID"] = f"<{OUTLOOK_ID}>"
    many = (
        "From: Alice <alice@example.org>\r\nTo: agent@example.com\r\n"
        "Message-ID: <many@example.org>\r\nSubject: Many\r\n"
        + "".join(f"X-Filler-{n}: {n}\r\n" for n in range(100_000))
        + "\r\nMany headers.\r\n"
    ).encode()
    refs = "\r\n ".join(
        " ".join(f"<r{n}.{m}@example.org>" for m in range(20)) for n in range(10_000)
    )
    long_refs = (
        "From: Alice <alice@example.org>\r\nTo: agent@example.com\r\n"
        f"Message-ID: <refs@example.org>\r\nSubject: Refs\r\nReferences: {refs}\r\n"
        "\r\nMany references.\r\n"
    ).encode()
    for msg in (injected, outlook, many, long_refs):
        assert "accepted for session" in await mailbox.send(msg)
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=mailbox.smtp_port, start_tls=False, timeout=30
    ) as smtp:  # internationalized mail (RFC 6531/6532): raw UTF-8 in headers
        await smtp.login("jürgen", mailbox.token)
        for local, mid in (("juergen", "utf8-ascii"), ("jürgen", "utf8-full")):
            raw = (
                f"From: Jürgen <{local}@example.org>\r\nTo: {AGENT}\r\n"
                f"Message-ID: <{mid}@example.org>\r\nSubject: Grüße\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\nHallo.\r\n"
            ).encode()
            _, answer = await smtp.sendmail(
                f"{local}@example.org", [AGENT], raw, mail_options=["SMTPUTF8"]
            )
            assert ("accepted for session" if mid == "utf8-ascii" else "not answered") in answer

    r_injected = _wire((await mailbox.reply_to("injected@example.org"))["raw"])
    assert "Subject: Re: Order Bcc: x@evil.test" in r_injected
    assert not any(line.lower().startswith("bcc:") for line in r_injected)
    r_outlook = _wire((await mailbox.reply_to(OUTLOOK_ID))["raw"])
    assert f"In-Reply-To: <{OUTLOOK_ID}>" in r_outlook
    assert f"References: <{OUTLOOK_ID}>" in r_outlook
    r_utf8 = await mailbox.reply_to("utf8-ascii@example.org")
    assert r_utf8["subject"] == "Re: Grüße"
    assert r_utf8["text"].startswith("You said: Email from Jürgen <juergen@example.org>")
    refused = {r["message_id"]: r["reason"] for r in await mailbox.refused()}
    assert refused == {"utf8-full@example.org": "malformed"}
    r_refs = parsed(await mailbox.reply_to("refs@example.org"))
    assert len(str(r_refs["References"]).split()) == 100
    r_many = await mailbox.reply_to("many@example.org")
    assert r_many["text"].endswith("Many headers.")
    replied = [i["in_reply_to"] for i in await mailbox.outbox()]
    assert sorted(replied) == sorted(
        [
            "injected@example.org",
            OUTLOOK_ID,
            "many@example.org",
            "utf8-ascii@example.org",
            "refs@example.org",
        ]
    )


async def test_unreadable_mail_bad_queries_and_bad_addresses(mailbox: Mailbox) -> None:
    """A thousand nested MIME parts is bounced with 554 and the reason; ``limit=²`` on the
    outbox is a 400 naming the range, not a 500; mail.sqlite (session tokens) is 0600;
    ``kit mail send`` with a bad --from, --to or --subject says what to write, without a
    traceback."""
    nested = (
        "From: alice@example.org\r\nTo: agent@example.com\r\nMessage-ID: <deep@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        + "".join(
            f"Content-Type: multipart/mixed; boundary=b{n}\r\n\r\n--b{n}\r\n" for n in range(1000)
        )
        + "Content-Type: text/plain\r\n\r\nhello\r\n"
        + "".join(f"--b{n}--\r\n" for n in reversed(range(1000)))
    ).encode()
    with pytest.raises(aiosmtplib.SMTPDataError) as bounced:
        await mailbox.send(nested)
    assert bounced.value.code == 554
    assert "nested too deeply" in bounced.value.message

    async with httpx.AsyncClient(timeout=30) as http:
        for path in ("/mail/outbox", "/mail/refused"):
            r = await http.get(
                mailbox.dev.url + "/_kit" + path,
                params={"limit": "²"},
                headers={"authorization": f"Bearer {mailbox.token}"},
            )
            assert r.status_code == 400, r.text
            assert "limit must be a whole number from 1 to 500" in r.json()["message"]

    assert stat.S_IMODE((mailbox.state / "mail.sqlite").stat().st_mode) == 0o600

    project = mailbox.state.parent / "agent"
    cases = [
        (["--from", "not an address"], "--from 'not an address' is not a mail address"),
        (["--from", "a@example.org", "--to", "garbage"], "--to 'garbage' is not a mail address"),
        (["--from", "a@example.org", "--subject", "a\nBcc: x@y"], "--subject must be one line"),
    ]
    for args, expected in cases:
        proc = await spawn_kit(
            "mail", "send", *args, "--no-wait", "Hi", cwd=project, env=mailbox.dev.env
        )
        out, err = await proc.communicate()
        assert proc.returncode == 1, (out, err)
        assert expected in err.decode()
        assert "Traceback" not in err.decode()
    assert await mailbox.outbox() == []
