"""The store's contract, cut into the small protocols its callers need.

Each module holds one capability and states its rules on its methods:
``envelope_queue`` (sends, the queue, acknowledgements, expiry), ``directory`` (who exists, and
the cross-organisation policy), ``enrolment`` (SMS codes, device registration, secrets),
``accounts`` (account keys, device lists, revocation notices, link channels), ``prekeys``,
``rate_limits``, ``administration`` (organisations, users, accounts, sessions, tokens, audit,
licences), ``blobs`` (encrypted files' ciphertext), ``lifecycle`` and ``cluster`` (what a
shared database offers the relay nodes). ``storage.base.Store`` composes them all; a caller
that needs one capability asks for that protocol only.
"""

from __future__ import annotations

__all__: list[str] = []
