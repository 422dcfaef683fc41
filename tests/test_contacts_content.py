"""The reference client's trust rule and message content, without a relay."""

from __future__ import annotations

import datetime

import msgpack
import pytest

from client.contacts import Contact, decode_contacts, encode_contacts
from client.message_content import (
    MAX_TEXT_BYTES,
    ContentError,
    decode_content,
    encode_content,
)

KEY_1, KEY_2, KEY_3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_keys_after_first_contact_stay_pending_until_trusted() -> None:
    contact = Contact(phone="+33612345678", user_id="u1")
    assert contact.first_contact
    contact.accept_first({1: KEY_1})
    assert contact.observe(1, KEY_1).accepted
    assert not contact.observe(2, KEY_2).accepted  # a new device
    assert not contact.observe(1, KEY_3).accepted  # a changed key
    assert contact.changed
    assert contact.trust_pending() == {1: KEY_3, 2: KEY_2}
    assert contact.observe(1, KEY_3).accepted and contact.observe(2, KEY_2).accepted
    assert not contact.observe(1, KEY_1).accepted  # the old key is no longer accepted


def test_a_new_account_for_the_number_replaces_everything_only_on_trust() -> None:
    contact = Contact(phone="+33612345678", user_id="u1", devices={1})
    contact.accept_first({1: KEY_1})
    contact.pending_user_id = "u2"
    assert not contact.observe(1, KEY_2).accepted
    assert contact.current_user_id == "u2" and contact.user_id == "u1"
    contact.trust_pending()
    assert (contact.user_id, contact.accepted, contact.devices) == ("u2", {1: KEY_2}, set())


def test_contacts_round_trip_and_damage_is_refused() -> None:
    contact = Contact(phone="+33612345678", user_id="u1", devices={1, 2}, pending={3: KEY_3})
    contact.accept_first({1: KEY_1, 2: KEY_2})
    saved = msgpack.unpackb(msgpack.packb(encode_contacts({contact.phone: contact})))
    assert decode_contacts(saved) == {contact.phone: contact}
    with pytest.raises(ValueError, match="damaged"):
        decode_contacts([{"phone": "+33612345678"}])


def test_content_round_trip_and_limits() -> None:
    sent_at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    data = encode_content(sender_phone="+33612345678", recipient_phone="+33698765432",
                          text="héllo", sent_at=sent_at)
    message = decode_content(data)
    assert (message.sender_phone, message.text, message.sent_at) == (
        "+33612345678", "héllo", "2026-01-02T03:04:05.000+00:00")
    with pytest.raises(ValueError, match="longer than"):
        encode_content(sender_phone="+1", recipient_phone="+2", text="x" * (MAX_TEXT_BYTES + 1),
                       sent_at=sent_at)
    for bad in (b"\xc1", msgpack.packb({"v": 2}), msgpack.packb(
            {"v": 1, "from": "+1" * 40, "to": "+2", "text": "", "sent_at": ""})):
        with pytest.raises(ContentError):
            decode_content(bad)
