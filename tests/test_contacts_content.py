"""The reference client's trust rule and message content, without a relay."""

from __future__ import annotations

import datetime

import msgpack
import pytest

from client.contacts import AccountView, Contact, decode_contacts, encode_contacts
from client.message_content import (
    MAX_TEXT_BYTES,
    ContentError,
    DeviceListUpdate,
    TextMessage,
    decode_content,
    encode_content,
    encode_device_list_update,
)
from crypto.device_list import StaleDeviceListError, sign_device_list
from crypto.primitives import Ed25519KeyPair, ed25519_keypair_from_private


def _account(seed: int) -> Ed25519KeyPair:
    return ed25519_keypair_from_private(bytes([seed]) * 32)


DEVICE_1, DEVICE_2, DEVICE_3 = (_account(10 + index).public_key for index in range(3))


def _view(account: Ed25519KeyPair, version: int, devices: dict[int, bytes],
          user_id: str = "u1") -> AccountView:
    signed = sign_device_list(account, version=version, devices=devices.values())
    return AccountView(user_id=user_id, account_key=account.public_key, device_list=signed,
                       devices=devices)


def test_first_contact_pins_the_account_and_devices_follow_its_signed_list() -> None:
    alice = _account(1)
    contact = Contact(phone="+33612345678", user_id="u1")
    assert contact.first_contact
    assert contact.observe(_view(alice, 1, {1: DEVICE_1}))
    assert contact.account_key == alice.public_key and contact.devices == {1: DEVICE_1}
    # A device the account key listed is accepted without asking anyone.
    assert contact.observe(_view(alice, 2, {1: DEVICE_1, 2: DEVICE_2}))
    assert contact.devices == {1: DEVICE_1, 2: DEVICE_2} and not contact.changed
    # ... and one it dropped is no longer addressed.
    assert contact.observe(_view(alice, 3, {2: DEVICE_2}))
    assert contact.devices == {2: DEVICE_2}
    seen = contact.seen_list()
    assert seen is not None and seen.version == 3


def test_a_replayed_older_list_is_refused_and_changes_nothing() -> None:
    alice = _account(1)
    contact = Contact(phone="+33612345678", user_id="u1")
    old = _view(alice, 1, {1: DEVICE_1, 2: DEVICE_2})
    contact.observe(old)
    contact.observe(_view(alice, 2, {1: DEVICE_1}))
    with pytest.raises(StaleDeviceListError):
        contact.observe(old)
    assert contact.devices == {1: DEVICE_1}
    seen = contact.seen_list()
    assert seen is not None and seen.version == 2


def test_a_new_account_key_is_pending_until_trusted() -> None:
    alice, hijacker = _account(1), _account(2)
    contact = Contact(phone="+33612345678", user_id="u1")
    contact.observe(_view(alice, 5, {1: DEVICE_1}))
    assert not contact.observe(_view(hijacker, 1, {3: DEVICE_3}))
    assert contact.changed and contact.account_key == alice.public_key
    assert contact.devices == {1: DEVICE_1}  # nothing of the new account is addressed
    # Seeing the old key again does not clear the warning: only a person's trust does.
    assert not contact.observe(_view(alice, 5, {1: DEVICE_1}))
    contact.trust_pending()
    assert not contact.changed and contact.account_key == hijacker.public_key
    assert contact.observe(_view(hijacker, 1, {3: DEVICE_3}))
    assert contact.devices == {3: DEVICE_3}


def test_a_new_user_for_the_number_is_pending_until_trusted() -> None:
    alice, again = _account(1), _account(2)
    contact = Contact(phone="+33612345678", user_id="u1")
    contact.observe(_view(alice, 1, {1: DEVICE_1}))
    assert not contact.observe(_view(again, 1, {1: DEVICE_2}, user_id="u2"))
    assert contact.current_user_id == "u2" and contact.user_id == "u1"
    contact.trust_pending()
    assert (contact.user_id, contact.account_key) == ("u2", again.public_key)


def test_contacts_round_trip_and_damage_is_refused() -> None:
    contact = Contact(phone="+33612345678", user_id="u1")
    contact.observe(_view(_account(1), 1, {1: DEVICE_1, 2: DEVICE_2}))
    contact.observe(_view(_account(2), 1, {3: DEVICE_3}))
    saved = msgpack.unpackb(msgpack.packb(encode_contacts({contact.phone: contact})))
    assert decode_contacts(saved) == {contact.phone: contact}
    with pytest.raises(ValueError, match="damaged"):
        decode_contacts([{"phone": "+33612345678"}])


def test_a_device_list_update_round_trips_and_is_bounded() -> None:
    signed = sign_device_list(_account(1), version=1, devices=[DEVICE_1])
    update = decode_content(encode_device_list_update(signed.encoded))
    assert update == DeviceListUpdate(device_list=signed.encoded)
    with pytest.raises(ContentError):
        decode_content(encode_device_list_update(b"x" * 2000))
    with pytest.raises(ContentError, match="unknown kind"):
        decode_content(msgpack.packb({"v": 1, "kind": "surprise"}))


def test_content_round_trip_and_limits() -> None:
    sent_at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    data = encode_content(sender_phone="+33612345678", recipient_phone="+33698765432",
                          text="héllo", sent_at=sent_at)
    message = decode_content(data)
    assert isinstance(message, TextMessage)
    assert (message.sender_phone, message.text, message.sent_at) == (
        "+33612345678", "héllo", "2026-01-02T03:04:05.000+00:00")
    with pytest.raises(ValueError, match="longer than"):
        encode_content(sender_phone="+1", recipient_phone="+2", text="x" * (MAX_TEXT_BYTES + 1),
                       sent_at=sent_at)
    for bad in (b"\xc1", msgpack.packb({"v": 2}), msgpack.packb(
            {"v": 1, "from": "+1" * 40, "to": "+2", "text": "", "sent_at": ""})):
        with pytest.raises(ContentError):
            decode_content(bad)
