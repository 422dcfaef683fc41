"""The encrypting client: a `RelayClient`, a device's `DeviceCrypto` and its profile.

    async with Messenger.connect(profile) as messenger:
        await messenger.send_text("+33698765432", "hello")
        async with aclosing(messenger.messages(stop_when_empty=True)) as messages:
            async for message in messages:
                show(message)       # acknowledged once the loop asks for the next one

Every text is encrypted for every current device of the recipient and for this user's own
other devices (a copy, so they show the conversation); the relay only sees ciphertext, and
the sender's phone number travels inside it (`client.message_content`). The end-to-end state
is written to the profile after every change, before anything built from it leaves: a
message key is never used twice, even across a crash. Trust follows `client.contacts`.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import trio

from client.connection import ConnectionClosed, RelayClient, RelayError, connect_relay
from client.contacts import Contact, decode_contacts, encode_contacts
from client.message_content import ContentError, TextMessage, decode_content, encode_content
from client.prekey_upkeep import bundle_from_wire, publish_prekeys
from client.profile import Profile, ProfileError
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.errors import DuplicateMessageError
from crypto.primitives import CryptoError, SystemRandom, ed25519_keypair_from_private
from crypto.safety_number import safety_number
from transport.addresses import parse_host_port
from transport.quic import QuicEndpoint
from wire.frames import Deliver, ErrorCode, QueueEmpty
from wire.prekey_frames import DeviceInfo

__all__ = ["MAX_MISMATCH_RETRIES", "IdentityChangedError", "Messenger", "ReceivedMessage",
           "SendReceipt", "UnknownContactError", "create_device_state"]

STATE_VERSION = 1
MAX_MISMATCH_RETRIES = 3
"""SENDs retried after MISMATCHED_DEVICES: one retry covers a device change; more mean the
user's devices change faster than we can fetch bundles, so give up and say so."""
MAX_CLIENT_MESSAGE_ID = 2**63  # PROTOCOL.md: client_message_id is 0 .. 2^63-1.


class IdentityChangedError(Exception):
    """A contact's keys changed: nothing was sent; compare safety numbers, then trust."""

    def __init__(self, phone: str, device_ids: Iterable[int], *, user_changed: bool) -> None:
        self.device_ids = tuple(sorted(device_ids))
        self.user_changed = user_changed
        # What changed, in words: a new account, or which devices' keys.
        self.change = ("the number now belongs to a new account" if user_changed
                       else f"new or changed identity keys on device(s) "
                            f"{', '.join(map(str, self.device_ids))}")
        super().__init__(f"the safety number with {phone} changed ({self.change}); nothing was "
                         f"sent. Compare 'cryptopass safety-number {phone}' with them, "
                         f"then run 'cryptopass trust {phone}'")
        self.phone = phone


class UnknownContactError(Exception):
    """The number is not a reachable Cryptopass user."""


@dataclass(frozen=True, kw_only=True)
class SendReceipt:
    """What `Messenger.send_text` addressed."""

    message_id: int  #: the client_message_id of the SEND to the recipient (PROTOCOL.md)
    recipient_devices: tuple[int, ...]  #: the recipient's devices that got the message
    own_devices: tuple[int, ...]  #: this user's other devices that got a copy
    mismatch_retries: int  #: SENDs repeated after MISMATCHED_DEVICES


@dataclass(frozen=True, kw_only=True)
class ReceivedMessage:
    """One delivery, decrypted (or the reason it could not be read)."""

    envelope_id: int  #: the relay's id of the envelope
    sender: DeviceAddress  #: the sending device, as the relay authenticated it
    accepted_at: int  #: when the relay accepted it, ms since the Unix epoch
    content: TextMessage | None  #: the message, or None if it could not be read
    problem: str | None = None  #: why it could not be read (never the plaintext)
    sender_confirmed: bool = False  #: the relay gives content.sender_phone to this sender
    identity_changed: bool = False  #: the sender's key is not an accepted one: warn


def create_device_state(profile: Profile) -> DeviceCrypto:
    """Make and save a new device's end-to-end state (at enrolment), from its identity key."""
    identity = ed25519_keypair_from_private(bytes(profile.signing_key()))
    device = DeviceCrypto.create(identity, SystemRandom())
    profile.save_device_state(_encode_state(device, {}))
    return device


def _encode_state(device: DeviceCrypto, contacts: dict[str, Contact]) -> bytes:
    packed: bytes = msgpack.packb({"version": STATE_VERSION, "crypto": device.to_bytes(),
                                   "contacts": encode_contacts(contacts)})
    return packed


def _load_state(profile: Profile) -> tuple[DeviceCrypto, dict[str, Contact]]:
    data = profile.device_state()
    if data is None:
        raise ProfileError(f"no end-to-end state in {profile.directory}; run 'cryptopass verify'")
    try:
        value = msgpack.unpackb(data, raw=False)
        if not isinstance(value, dict) or value.get("version") != STATE_VERSION:
            raise ValueError("unsupported version")
        return (DeviceCrypto.from_bytes(value["crypto"], SystemRandom()),
                decode_contacts(value["contacts"]))
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as error:
        raise ProfileError(f"the end-to-end state in {profile.directory} is damaged: "
                           f"{error}") from error


class Messenger:
    """An authenticated, encrypting client. Use `Messenger.connect`."""

    def __init__(self, client: RelayClient, profile: Profile, device: DeviceCrypto,
                 contacts: dict[str, Contact], *, persist_state: bool = True) -> None:
        """Args:
            persist_state: write the end-to-end state to the profile after every change
                (the default, and the only safe choice for a real device: a crash must never
                reuse a message key). False keeps it in memory only, for load generators
                whose devices live for one run (``cryptopass-bench live --encrypted``).
        """
        user_id, device_id, _, _ = profile.require_enrolled()
        if profile.data.phone is None:
            raise ProfileError(f"{profile.directory} has no phone number; re-enrol")
        self.client = client
        self.profile = profile
        self.device = device
        self.contacts = contacts
        self.user_id, self.device_id, self.phone = user_id, device_id, profile.data.phone
        self.persist_state = persist_state
        self._own_other_devices: set[int] = set()

    @classmethod
    @asynccontextmanager
    async def connect(cls, profile: Profile, *, endpoint: QuicEndpoint | None = None,
                      reached: trio.Event | None = None) -> AsyncIterator[Messenger]:
        """Connect and authenticate as the profile's device, publish missing prekeys, and
        keep refilling them while connected.

        Args:
            reached: set once the relay completed the QUIC handshake, before authentication:
                a caller that gives up first can tell an unreachable relay from a slow one.

        Raises:
            ProfileError: the profile is not enrolled, or its state is damaged.
            RelayUnreachable, HandshakeFailed, CertificateFileError: see `connect_relay`.
        """
        user_id, device_id, relay, ca = profile.require_enrolled()
        host, port = parse_host_port(relay)
        device, contacts = _load_state(profile)
        async with connect_relay(host, port, ca=Path(ca) if ca else None,
                                 endpoint=endpoint) as client:
            if reached is not None:
                reached.set()
            await client.authenticate(user_id, device_id, profile.signing_key())
            async with cls.attach(client, profile, device, contacts) as messenger:
                yield messenger

    @classmethod
    @asynccontextmanager
    async def attach(cls, client: RelayClient, profile: Profile, device: DeviceCrypto,
                     contacts: dict[str, Contact], *,
                     persist_state: bool = True) -> AsyncIterator[Messenger]:
        """Run a messenger on ``client``, already authenticated as the profile's device:
        publish missing prekeys, learn this user's other devices, and keep refilling prekeys
        until the block ends. `connect` uses it; a load generator that opens its own
        connections (many devices on one endpoint) calls it directly."""
        messenger = cls(client, profile, device, contacts, persist_state=persist_state)
        await messenger.refresh_prekeys()
        await messenger._refresh_own_devices()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(messenger._refill_when_told)
            try:
                yield messenger
            finally:
                nursery.cancel_scope.cancel()

    def save(self) -> None:
        """Write the end-to-end state to the profile (atomic, mode 0600); nothing when the
        messenger keeps its state in memory only (``persist_state=False``)."""
        if self.persist_state:
            self.profile.save_device_state(_encode_state(self.device, self.contacts))

    def _address(self, user_id: str, device_id: int) -> DeviceAddress:
        return DeviceAddress(user_id=user_id, device_id=device_id)

    # -- prekeys ------------------------------------------------------------------------

    async def refresh_prekeys(self) -> bool:
        """Publish what the relay lacks; True if anything was uploaded."""
        counts = await self.client.prekey_counts()
        return await publish_prekeys(self.client, self.device, counts, self.save)

    async def _refill_when_told(self) -> None:
        try:
            while True:
                await self.client.next_prekeys_low()
                await self.refresh_prekeys()
        except ConnectionClosed:
            return  # The connection's owner reports the close.

    # -- contacts -----------------------------------------------------------------------

    async def _refresh_own_devices(self) -> list[DeviceInfo]:
        devices = await self.client.list_devices()
        self._own_other_devices = {info.device_id for info in devices} - {self.device_id}
        own = self.contacts.setdefault(self.phone, Contact(phone=self.phone, user_id=self.user_id))
        for gone in own.devices - self._own_other_devices:
            self._forget(own, gone)
        if own.first_contact and self._own_other_devices:
            await self._first_contact(own, {})
        self.save()
        return devices

    async def contact(self, phone: str) -> Contact:
        """The contact for ``phone``, looked up on first use.

        Raises:
            UnknownContactError: the number is not a reachable user.
        """
        known = self.contacts.get(phone)
        if known is not None:
            return known
        entries = await self.client.lookup([phone])
        if not entries:
            raise UnknownContactError(f"{phone} is not a reachable Cryptopass user")
        contact = Contact(phone=phone, user_id=entries[0].user_id)
        self.contacts[phone] = contact
        return contact

    def _forget(self, contact: Contact, device_id: int) -> None:
        contact.forget_device(device_id)
        self.device.forget_device(self._address(contact.user_id, device_id))

    async def _fetch_sessions(self, contact: Contact, device_ids: set[int] | None) -> set[int]:
        """Fetch bundles for the devices without a session (every current device when
        ``device_ids`` is None); start sessions with accepted keys, record the others as
        pending. Returns the device ids that still exist."""
        user_id = contact.current_user_id
        wanted = None if device_ids is None else sorted(
            device_id for device_id in device_ids
            if not self.device.has_session(self._address(user_id, device_id))
            and device_id not in contact.pending)
        if device_ids is not None and wanted == []:
            return device_ids  # every one has a session or awaits trust: nothing to fetch
        bundles = await self.client.fetch_bundle(user_id, wanted or ())
        fetched = {bundle.device_id for bundle in bundles}
        existing = fetched if device_ids is None else (
            device_ids - set(wanted or ()) | (fetched & set(wanted or ())))
        if contact.first_contact:
            contact.accept_first({bundle.device_id: bundle.identity_key for bundle in bundles})
        for bundle in bundles:
            if contact.observe(bundle.device_id, bundle.identity_key).accepted:
                self.device.start_session(self._address(user_id, bundle.device_id),
                                          bundle_from_wire(bundle))
        self.save()
        return existing

    def _require_trusted(self, contact: Contact, device_ids: Iterable[int]) -> None:
        """Raise IdentityChangedError unless every key of ``device_ids`` is accepted."""
        if contact.pending_user_id is not None:
            self.save()
            raise IdentityChangedError(contact.phone, (), user_changed=True)
        blocked = []
        for device_id in device_ids:
            record = self.device.identity_of(self._address(contact.user_id, device_id))
            if (record is None or not record.trusted
                    or not contact.observe(device_id, record.identity_key).accepted):
                blocked.append(device_id)
        if blocked or contact.pending:
            self.save()
            raise IdentityChangedError(contact.phone, blocked or contact.pending,
                                       user_changed=False)

    # -- sending ------------------------------------------------------------------------

    async def send_text(self, phone: str, text: str) -> SendReceipt:
        """Encrypt ``text`` for every device of ``phone`` and this user's other devices.

        Raises:
            UnknownContactError: the number is not a reachable user.
            IdentityChangedError: a key awaits the user's trust; nothing was sent.
            MissingPrekeysError: a device has not published its prekeys yet.
            RelayError: the relay refused (QUEUE_FULL, RATE_LIMITED, ...).
            ValueError: the text is too long.
        """
        content = encode_content(sender_phone=self.phone, recipient_phone=phone, text=text,
                                 sent_at=datetime.datetime.now(datetime.UTC))
        contact = await self.contact(phone)
        message_id = secrets.randbelow(MAX_CLIENT_MESSAGE_ID)
        recipient_devices, retries = await self._deliver(
            contact, content, contact.devices or None, message_id)
        own_devices: tuple[int, ...] = ()
        own = self.contacts[self.phone]
        if contact is not own and self._own_other_devices:
            own_devices, own_retries = await self._deliver(
                own, content, set(self._own_other_devices),
                secrets.randbelow(MAX_CLIENT_MESSAGE_ID))
            retries += own_retries
        return SendReceipt(message_id=message_id, recipient_devices=recipient_devices,
                           own_devices=own_devices, mismatch_retries=retries)

    async def _deliver(self, contact: Contact, content: bytes, device_ids: set[int] | None,
                       message_id: int) -> tuple[tuple[int, ...], int]:
        own = contact.user_id == self.user_id
        retries = 0
        while True:
            if contact.pending_user_id is None:
                device_ids = await self._fetch_sessions(contact, device_ids)
            self._require_trusted(contact, device_ids or ())
            if own:
                device_ids = (device_ids or set()) - {self.device_id}
            if not device_ids:
                return (), retries
            addresses = [self._address(contact.user_id, device_id) for device_id in device_ids]
            ciphertexts = self.device.encrypt(content, addresses)
            self.save()  # Before the ciphertexts leave: their message keys are now used.
            try:
                await self.client.send(contact.user_id, {
                    address.device_id: ciphertext for address, ciphertext in ciphertexts.items()},
                    client_message_id=message_id)
            except RelayError as error:
                if error.code == ErrorCode.UNKNOWN_RECIPIENT and not own:
                    await self._check_number_owner(contact)
                if (error.code != ErrorCode.MISMATCHED_DEVICES
                        or retries >= MAX_MISMATCH_RETRIES):
                    raise
                retries += 1
                for gone in error.error.extra_devices:
                    self._forget(contact, gone)
                device_ids = (device_ids - set(error.error.extra_devices)) | set(
                    error.error.missing_devices)
                continue
            if contact.devices != device_ids:  # Else nothing changed since the last save.
                contact.devices = set(device_ids)
                self.save()
            return tuple(sorted(device_ids)), retries

    async def _check_number_owner(self, contact: Contact) -> None:
        """The contact's user is gone: if the number now belongs to another account, record
        it as pending and refuse (the user must compare safety numbers)."""
        entries = await self.client.lookup([contact.phone])
        if entries and entries[0].user_id != contact.user_id:
            contact.pending_user_id, contact.pending = entries[0].user_id, {}
            self.save()
            raise IdentityChangedError(contact.phone, (), user_changed=True)

    # -- receiving ----------------------------------------------------------------------

    async def messages(self, *,
                       stop_when_empty: bool = False) -> AsyncGenerator[ReceivedMessage, None]:
        """Decrypted deliveries in queue order. Each is acknowledged, and the state saved,
        once the caller asks for the next one or closes the iterator (use
        `contextlib.aclosing`): a crash before then delivers it again."""
        handed_over: Deliver | None = None
        try:
            async for delivery in self.client.deliveries():
                if isinstance(delivery, QueueEmpty):
                    if stop_when_empty:
                        return
                    continue
                message = await self._open(delivery)
                if message is None:  # Already handed over before a crash or lost ACK.
                    self._commit(delivery)
                    continue
                handed_over = delivery
                yield message
                self._commit(delivery)
                handed_over = None
        finally:
            if handed_over is not None:
                self._commit(handed_over)

    def _commit(self, delivery: Deliver) -> None:
        self.save()
        self.client.acknowledge(delivery.envelope_id)

    async def _open(self, delivery: Deliver) -> ReceivedMessage | None:
        sender = self._address(delivery.sender_user_id, delivery.sender_device_id)

        def unreadable(problem: str) -> ReceivedMessage:
            return ReceivedMessage(envelope_id=delivery.envelope_id, sender=sender,
                                   accepted_at=delivery.accepted_at, content=None,
                                   problem=problem)

        try:
            decrypted = self.device.decrypt(sender, delivery.ciphertext)
        except DuplicateMessageError:
            return None
        except CryptoError as error:
            return unreadable(f"cannot decrypt: {type(error).__name__}")
        try:
            content = decode_content(decrypted.plaintext)
        except ContentError as error:
            return unreadable(str(error))
        record = self.device.identity_of(sender)
        if record is None:  # never: decrypt records the sender's identity
            raise RuntimeError("no identity on record for a sender just decrypted")
        contact = await self._contact_of_sender(sender, content.sender_phone)
        identity_changed = decrypted.identity_changed
        if contact is not None:
            if contact.first_contact:
                await self._first_contact(contact, {sender.device_id: record.identity_key})
            if contact.observe(sender.device_id, record.identity_key).accepted:
                if contact.devices and sender.device_id != self.device_id:
                    contact.devices.add(sender.device_id)
            else:
                identity_changed = True
        return ReceivedMessage(envelope_id=delivery.envelope_id, sender=sender,
                               accepted_at=delivery.accepted_at, content=content,
                               sender_confirmed=contact is not None,
                               identity_changed=identity_changed)

    async def _contact_of_sender(self, sender: DeviceAddress,
                                 claimed_phone: str) -> Contact | None:
        """The contact the sender is, if the relay confirms it holds ``claimed_phone``."""
        contact = self.contacts.get(claimed_phone)
        if contact is None:
            entries = await self.client.lookup([claimed_phone])
            if not entries or entries[0].user_id != sender.user_id:
                return None
            contact = Contact(phone=claimed_phone, user_id=sender.user_id)
            self.contacts[claimed_phone] = contact
        return contact if sender.user_id in (contact.user_id, contact.pending_user_id) else None

    async def _first_contact(self, contact: Contact, known: dict[int, bytes]) -> None:
        """Trust on first use: accept ``known`` and every other current device of the
        contact now, so a reply reaches all of them without asking the user to trust each."""
        listed = {info.device_id for info in await self.client.list_devices(contact.user_id)}
        myself = {self.device_id} if contact.user_id == self.user_id else set()
        others = listed - set(known) - myself
        keys = {**known, **await self._first_contact_keys(contact, others)}
        contact.accept_first(keys)
        contact.devices = set(keys) - myself

    async def _first_contact_keys(self, contact: Contact,
                                  device_ids: set[int]) -> dict[int, bytes]:
        if not device_ids:
            return {}
        bundles = await self.client.fetch_bundle(contact.user_id, sorted(device_ids))
        keys: dict[int, bytes] = {}
        for bundle in bundles:
            self.device.start_session(self._address(contact.user_id, bundle.device_id),
                                      bundle_from_wire(bundle))
            keys[bundle.device_id] = bundle.identity_key
        return keys

    # -- safety numbers and trust -------------------------------------------------------

    async def current_keys(self, contact: Contact) -> dict[int, bytes]:
        """Every current device key of the contact as the relay now says (pending included),
        fetching bundles for devices whose key this device does not know yet."""
        user_id = contact.current_user_id
        listed = {info.device_id for info in await self.client.list_devices(user_id)}
        if user_id == self.user_id:
            listed.discard(self.device_id)
        await self._fetch_sessions(contact, listed)
        keys: dict[int, bytes] = {}
        for device_id in listed:
            record = self.device.identity_of(self._address(user_id, device_id))
            key = contact.pending.get(device_id) or (record.identity_key if record else None)
            if key is not None:
                keys[device_id] = key
        if user_id == self.user_id:
            keys[self.device_id] = self.device.identity_key
        return keys

    async def safety_number(self, phone: str) -> str:
        """The 60-digit safety number with ``phone`` over both users' current device keys."""
        contact = await self.contact(phone)
        theirs = await self.current_keys(contact)
        own = self.contacts[self.phone]
        mine = (theirs if own is contact else await self.current_keys(own))
        return safety_number(self.user_id, mine.values(), contact.current_user_id,
                             theirs.values())

    async def trust(self, phone: str, *, expected_safety_number: str | None = None) -> str:
        """Accept the contact's current keys; return the safety number they give.

        Raises:
            ValueError: ``expected_safety_number`` is given and differs (nothing changes).
        """
        number = await self.safety_number(phone)
        if expected_safety_number is not None and not secrets.compare_digest(
                expected_safety_number.replace(" ", ""), number):
            raise ValueError("the safety number differs from the one given; nothing trusted")
        contact = self.contacts[phone]
        old_user_id = contact.user_id
        if contact.pending_user_id is not None:
            for device_id in list(contact.accepted):
                self.device.forget_device(self._address(old_user_id, device_id))
        for device_id, key in contact.trust_pending().items():
            self.device.trust_identity(self._address(contact.user_id, device_id), key)
        self.save()
        return number

    async def own_devices(self) -> list[DeviceInfo]:
        """This user's current devices, as the relay lists them."""
        return await self._refresh_own_devices()
