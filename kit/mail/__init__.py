"""The email channel: an email thread is a session (shared/ARCHITECTURE.md §8).

Raw RFC 5322 is the canonical form every source is reduced to (kit dev's SMTP server, the
Fly gateway's webhook, the Cloudflare shim's ``email()`` handler). The pure rules live here
and are shared with the shim through golden cases (``golden/*.jsonl``):

- :mod:`kit.mail.message` — parse raw mail into an :class:`Inbound`;
- :mod:`kit.mail.rules` — refuse loops, route a message to a thread (plus-address token,
  then ``In-Reply-To``/``References``, else a new thread), participants only;
- :mod:`kit.mail.text` — strip quoted history, the text of the turn;
- :mod:`kit.mail.compose` — the threaded reply to an inbound message;
- :mod:`kit.mail.store` and :mod:`kit.mail.channel` — durable threads and replies, and the
  channel that drives turns over the session protocol, one reply per inbound message.
"""
