"""Which identity keys a device accepts for each contact, and which devices it addresses.

The trust rule of the reference client (docs/CRYPTO.md, "The reference client"):

- **First contact** with a phone number accepts every device key it then sees (trust on
  first use), for the contact's user id at that moment.
- After that, any other key is **pending**: a new device of the contact, a device whose key
  changed, or a new user id for the number (the account was deleted and enrolled again).
  A pending key is never encrypted to; sending to that contact is refused until the user
  compares safety numbers and runs ``cryptopass trust PHONE``, which accepts exactly the
  pending keys that were shown.
- One's own user is a contact too (one's other devices get a copy of every message).

Pure data: no I/O; `encode_contacts`/`decode_contacts` give the saved form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Contact", "KeyVerdict", "decode_contacts", "encode_contacts"]

MAX_CONTACT_DEVICES = 16
"""Device ids kept per contact and kind: a user holds at most 16 devices (PROTOCOL.md)."""


@dataclass(frozen=True)
class KeyVerdict:
    """What `Contact.observe` decided about one device key."""

    accepted: bool  #: True if the key may be encrypted to


@dataclass
class Contact:
    """One phone number as this device knows it."""

    phone: str  #: the E.164 number
    user_id: str  #: the relay's user id accepted for the number
    accepted: dict[int, bytes] = field(default_factory=dict)  #: device id -> accepted key
    devices: set[int] = field(default_factory=set)  #: device ids the last SEND addressed
    pending_user_id: str | None = None  #: a new user id for the number, not yet accepted
    pending: dict[int, bytes] = field(default_factory=dict)  #: keys seen, not yet accepted

    @property
    def current_user_id(self) -> str:
        """The user id the relay now gives for the number (pending if it changed)."""
        return self.pending_user_id or self.user_id

    @property
    def first_contact(self) -> bool:
        """No key accepted yet: the next keys seen are trusted on first use."""
        return not self.accepted and self.pending_user_id is None

    @property
    def changed(self) -> bool:
        """Something awaits the user's `trust`: sending is refused until then."""
        return bool(self.pending) or self.pending_user_id is not None

    def observe(self, device_id: int, identity_key: bytes) -> KeyVerdict:
        """Check the key the relay or a message shows for ``device_id`` of the user id in
        force (`user_id`, or `pending_user_id` while that is pending); a key not accepted
        is recorded as pending. First contact goes through `accept_first` instead."""
        if self.pending_user_id is None and self.accepted.get(device_id) == identity_key:
            return KeyVerdict(accepted=True)
        if len(self.pending) < MAX_CONTACT_DEVICES or device_id in self.pending:
            self.pending[device_id] = identity_key
        return KeyVerdict(accepted=False)

    def accept_first(self, keys: dict[int, bytes]) -> None:
        """Trust on first use: accept ``keys`` (called once, at first contact)."""
        self.accepted.update(keys)

    def trust_pending(self) -> dict[int, bytes]:
        """Accept the pending user id and keys; return the keys newly accepted."""
        newly = dict(self.pending)
        if self.pending_user_id is not None:
            self.user_id, self.pending_user_id = self.pending_user_id, None
            self.accepted, self.devices = {}, set()
        self.accepted.update(newly)
        self.pending = {}
        return newly

    def forget_device(self, device_id: int) -> None:
        """The device left its user (the relay said so): stop addressing it."""
        self.devices.discard(device_id)
        self.accepted.pop(device_id, None)
        self.pending.pop(device_id, None)


def encode_contacts(contacts: dict[str, Contact]) -> list[dict[str, Any]]:
    """The msgpack-ready form of every contact."""
    return [{"phone": contact.phone, "user_id": contact.user_id,
             "accepted": [[device_id, key] for device_id, key in sorted(contact.accepted.items())],
             "devices": sorted(contact.devices),
             "pending_user_id": contact.pending_user_id,
             "pending": [[device_id, key] for device_id, key in sorted(contact.pending.items())]}
            for contact in contacts.values()]


def decode_contacts(value: object) -> dict[str, Contact]:
    """Read what `encode_contacts` wrote.

    Raises:
        ValueError: the value is not in that form.
    """
    if not isinstance(value, list):
        raise ValueError("contacts are not a list")
    contacts: dict[str, Contact] = {}
    try:
        for item in value:
            contact = Contact(
                phone=str(item["phone"]), user_id=str(item["user_id"]),
                accepted={int(device_id): bytes(key) for device_id, key in item["accepted"]},
                devices={int(device_id) for device_id in item["devices"]},
                pending_user_id=(None if item["pending_user_id"] is None
                                 else str(item["pending_user_id"])),
                pending={int(device_id): bytes(key) for device_id, key in item["pending"]})
            contacts[contact.phone] = contact
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"contacts are damaged: {error}") from error
    return contacts
