"""Which account key a device accepts for each contact, and which devices it addresses.

The trust rule of the reference client (docs/CRYPTO.md, "The reference client"):

- A user's account has one Ed25519 **account key**; the account's devices are the identity
  keys on a device list signed by it (`crypto.device_list`). A contact is pinned to one
  (user id, account key) pair: first contact with a number accepts the pair then seen (trust
  on first use).
- Devices follow the signed list: a device whose key the pinned account key listed is
  addressed without asking anyone; a device the relay shows but the list does not name gets
  nothing. Adding or removing a device does not change the safety number.
- A **new account key** for the number (SMS enrolment on a new phone, or someone who got
  the SMS code) or a **new user id** (the account was deleted and declared again) is
  *pending*: nothing is encrypted to it, and sending is refused until the user compares
  safety numbers and runs ``cryptopass trust PHONE``.
- A list older than the newest one seen for the pinned key is a replay: it is refused.
- One's own user is a contact too, pinned to one's own account key from enrolment or linking.

Pure data: no I/O; `encode_contacts`/`decode_contacts` give the saved form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crypto.device_list import SignedDeviceList, check_successor, decode_device_list

__all__ = ["AccountView", "Contact", "decode_contacts", "encode_contacts"]


@dataclass(frozen=True, kw_only=True)
class AccountView:
    """What the relay says of a user now, with the list's signature checked.

    ``devices`` holds only the relay's devices whose identity key is on the signed list."""

    user_id: str
    account_key: bytes
    device_list: SignedDeviceList
    devices: dict[int, bytes]  #: device id -> identity key, listed devices only


@dataclass
class Contact:
    """One phone number as this device knows it."""

    phone: str  #: the E.164 number
    user_id: str  #: the relay's user id accepted for the number
    account_key: bytes | None = None  #: the pinned account key (None before first contact)
    device_list: bytes | None = None  #: the newest list seen signed by ``account_key``
    devices: dict[int, bytes] = field(default_factory=dict)  #: addressed device id -> key
    pending_user_id: str | None = None  #: a new user id for the number, not yet accepted
    pending_account_key: bytes | None = None  #: a new account key seen, not yet accepted
    pending_list: bytes | None = None  #: the list that came with the pending key
    profile_key: bytes | None = None  #: the contact's profile key (sealed sends), if shared
    organisation: bool = False  #: the contact switched tokens off: seal on the own connection
    shared_profile_key: bytes | None = None  #: this account's profile key last sent to it

    @property
    def first_contact(self) -> bool:
        """No account key pinned yet: the next one seen is trusted on first use."""
        return self.account_key is None and not self.changed

    @property
    def changed(self) -> bool:
        """A new account key or user id awaits the user's `trust`: sending is refused."""
        return self.pending_account_key is not None or self.pending_user_id is not None

    @property
    def current_user_id(self) -> str:
        """The user id the relay now gives for the number (pending if it changed)."""
        return self.pending_user_id or self.user_id

    def seen_list(self) -> SignedDeviceList | None:
        """The newest accepted list (its signature was checked when it was accepted)."""
        if self.device_list is None or self.account_key is None:
            return None
        return decode_device_list(self.device_list, account_key=self.account_key)

    def observe(self, view: AccountView) -> bool:
        """Weigh what the relay now shows for this contact; True if it may be encrypted to.

        Raises:
            StaleDeviceListError: the pinned key's list is older than one already seen (the
                relay replays an old list): nothing changes.
        """
        if self.first_contact:
            self.user_id, self.account_key = view.user_id, view.account_key
            self.device_list, self.devices = view.device_list.encoded, dict(view.devices)
            return True
        if view.user_id == self.user_id and view.account_key == self.account_key:
            if check_successor(self.seen_list(), view.device_list):
                self.device_list = view.device_list.encoded
            self.devices = dict(view.devices)
            return not self.changed
        self.pending_user_id = None if view.user_id == self.user_id else view.user_id
        self.pending_account_key = view.account_key
        self.pending_list = view.device_list.encoded
        return False

    def trust_pending(self) -> None:
        """Accept the pending user id and account key (the user compared safety numbers)."""
        if self.pending_user_id is not None:
            self.user_id = self.pending_user_id
        if self.pending_account_key is not None:
            self.account_key, self.device_list = self.pending_account_key, self.pending_list
            self.devices = {}
        # Another account now: its profile key is unknown, and ours is not shared with it.
        self.profile_key = self.shared_profile_key = None
        self.organisation = False
        self.pending_user_id = self.pending_account_key = self.pending_list = None


def encode_contacts(contacts: dict[str, Contact]) -> list[dict[str, Any]]:
    """The msgpack-ready form of every contact."""
    return [{"phone": contact.phone, "user_id": contact.user_id,
             "account_key": contact.account_key, "device_list": contact.device_list,
             "devices": [[device_id, key] for device_id, key in sorted(contact.devices.items())],
             "pending_user_id": contact.pending_user_id,
             "pending_account_key": contact.pending_account_key,
             "pending_list": contact.pending_list, "profile_key": contact.profile_key,
             "organisation": contact.organisation,
             "shared_profile_key": contact.shared_profile_key}
            for contact in contacts.values()]


def _optional_bytes(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise TypeError("expected bytes")
    return value


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
                account_key=_optional_bytes(item["account_key"]),
                device_list=_optional_bytes(item["device_list"]),
                devices={int(device_id): bytes(key) for device_id, key in item["devices"]},
                pending_user_id=(None if item["pending_user_id"] is None
                                 else str(item["pending_user_id"])),
                pending_account_key=_optional_bytes(item["pending_account_key"]),
                pending_list=_optional_bytes(item["pending_list"]),
                profile_key=_optional_bytes(item.get("profile_key")),
                organisation=bool(item.get("organisation", False)),
                shared_profile_key=_optional_bytes(item.get("shared_profile_key")))
            contacts[contact.phone] = contact
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"contacts are damaged: {error}") from error
    return contacts
