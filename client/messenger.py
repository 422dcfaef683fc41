"""The encrypting client: a `RelayClient`, a device's `DeviceCrypto` and its profile.

    async with Messenger.connect(profile) as messenger:
        await messenger.send_text("+33698765432", "hello")
        async with aclosing(messenger.messages(stop_when_empty=True)) as messages:
            async for message in messages:
                show(message)       # acknowledged once the loop asks for the next one

Every text is encrypted for every device on the recipient's signed device list and for this
account's own other devices (a copy, so they show the conversation); the relay only sees
ciphertext, and the sender's phone number travels inside it (`client.message_content`).
A file (`send_file`) is encrypted with a key of its own and uploaded once as a blob
(`client.attachments`); its key, digest and blob id then go to the same devices as a text
would, and `messages(download_dir=...)` fetches and checks it before handing it over.
Trust follows `client.contacts`: a contact is pinned to one account key, and only the devices
that key listed are addressed or believed.

State: every read-modify-write of the end-to-end state happens under the profile's lock
(`client.profile_files`), reloading what another process may have saved meanwhile, and the
state is written before anything built from it leaves: a message key is never used twice,
even across a crash or by two processes on one profile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import mimetypes
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import trio

from client.attachments import TransferProgress, UploadedFile, forget_upload, upload_file
from client.connection import (
    CONNECT_TIMEOUT_SECONDS,
    ConnectionClosed,
    RelayClient,
    RelayError,
    connect_any,
    connect_relay,
)
from client.contacts import AccountView, Contact, decode_contacts, encode_contacts
from client.downloads import FileRefused, download_file
from client.file_names import announced_name
from client.groups import GroupBook, GroupFile, GroupHeader, GroupKey
from client.message_content import (
    CallSignal,
    ContentError,
    DeviceListUpdate,
    FileMessage,
    GroupOpened,
    ProfileKeyShare,
    TextMessage,
    decode_content,
    encode_call_signal,
    encode_content,
    encode_device_list_update,
    encode_file_content,
    encode_group_opened,
    encode_profile_key_share,
)
from client.prekey_upkeep import MissingPrekeysError, bundle_from_wire, publish_prekeys
from client.profile import Profile, ProfileError
from client.sealed import (
    SEALED_MESSAGE_ID_SIZE,
    SealedSettings,
    current_certificate,
    fits_anonymous_connection,
    refresh_relay_keys,
    register_token,
    seal_payloads,
    send_sealed,
)
from crypto.delivery_token import delivery_token
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.device_list import (
    DeviceListError,
    SignedDeviceList,
    check_successor,
    decode_device_list,
)
from crypto.errors import DuplicateMessageError
from crypto.primitives import (
    CryptoError,
    Ed25519KeyPair,
    SystemRandom,
    ed25519_keypair_from_private,
)
from crypto.safety_number import safety_number
from crypto.sealed_sender import (
    OpenedEnvelope,
    SealedSenderError,
    check_pinned_sender,
    open_envelope,
)
from crypto.sender_certificate import CertificateError, CertificateProblem
from transport.addresses import parse_relay_list
from transport.quic import QuicEndpoint
from wire.frames import Deliver, ErrorCode, QueueEmpty

__all__ = ["MAX_MISMATCH_RETRIES", "DeviceListProblem", "IdentityChangedError", "Messenger",
           "ReceivedCallSignal", "ReceivedMessage", "SendReceipt", "UnknownContactError",
           "create_device_state", "saved_groups"]

STATE_VERSION = 2
MAX_MISMATCH_RETRIES = 3
"""SENDs retried after MISMATCHED_DEVICES: one retry covers a device change; more mean the
user's devices change faster than we can fetch bundles, or that the relay lists a device the
account's signed list does not name: give up and say so."""
MAX_CLIENT_MESSAGE_ID = 2**63  # PROTOCOL.md: client_message_id is 0 .. 2^63-1.
PREKEY_CHECK_INTERVAL_S = 3600.0
"""How often a long-lived connection checks whether its prekeys are due for rotation (they
rotate weekly, crypto.prekeys): an hour late at most."""
MAX_INBOX = 64
"""Decrypted messages kept until the caller took them (normally one at a time)."""


class IdentityChangedError(Exception):
    """A contact's account key changed: nothing was sent; compare safety numbers, then trust."""

    def __init__(self, phone: str, *, user_changed: bool) -> None:
        self.user_changed = user_changed
        self.change = ("the number now belongs to a new account" if user_changed
                       else "the number was enrolled again with a new account key")
        super().__init__(f"the safety number with {phone} changed ({self.change}); nothing was "
                         f"sent. Compare 'cryptopass safety-number {phone}' with them, "
                         f"then run 'cryptopass trust {phone}'")
        self.phone = phone


class DeviceListProblem(Exception):
    """The relay served a device list that cannot be right (a bad signature, or older than
    one already seen): a relay fault or an attack. Nothing was sent."""


class UnknownContactError(Exception):
    """The number is not a reachable Cryptopass user."""


@dataclass(frozen=True, kw_only=True)
class SendReceipt:
    """What `Messenger.send_text` addressed."""

    message_id: int | str  #: the SEND's client_message_id, or a SEALED_SEND's id in hex
    recipient_devices: tuple[int, ...]  #: the recipient's devices that got the message
    own_devices: tuple[int, ...]  #: this user's other devices that got a copy
    mismatch_retries: int  #: SENDs repeated after MISMATCHED_DEVICES
    own_copy_problem: str | None = None  #: why the own devices' copy failed, if it did
    sealed: bool = False  #: sent sealed: the relay was not told who sent it


@dataclass(frozen=True, kw_only=True)
class ReceivedMessage:
    """One delivery, decrypted (or the reason it could not be read)."""

    envelope_id: int  #: the relay's id of the envelope
    sender: DeviceAddress | None  #: the sending device (None: a sealed envelope refused)
    accepted_at: int  #: when the relay accepted it, ms since the Unix epoch
    content: TextMessage | FileMessage | None  #: the message, or None if it could not be read
    problem: str | None = None  #: why it could not be read, or its file refused (never the
    #: plaintext)
    file: Path | None = None  #: where a file message's file was saved, if it was fetched
    sender_confirmed: bool = False  #: the relay gives content.sender_phone to this sender
    identity_changed: bool = False  #: the sender's account key is not the accepted one: warn
    group: str | None = None  #: the group's local name, for a group message
    sealed: bool = False  #: came sealed: the sender is the one its certificate names
    refused: bool = False  #: a sealed envelope refused (``problem`` says why): not a message


@dataclass(frozen=True, kw_only=True)
class ReceivedCallSignal:
    """A call message (client.calls), decrypted, from a sender the relay confirmed."""

    sender: DeviceAddress  #: the sending device, as the relay authenticated it
    accepted_at: int  #: when the relay accepted it, ms since the Unix epoch
    signal: CallSignal  #: what it says


def create_device_state(profile: Profile, *, contacts: dict[str, Contact] | None = None
                        ) -> DeviceCrypto:
    """Make and save a new device's end-to-end state (at enrolment or linking), from its
    identity key and enrolled address."""
    user_id, device_id, _, _ = profile.require_enrolled()
    identity = ed25519_keypair_from_private(bytes(profile.signing_key()))
    device = DeviceCrypto.create(identity, SystemRandom(),
                                 address=DeviceAddress(user_id=user_id, device_id=device_id),
                                 now_ms=_now_ms())
    profile.save_device_state(_encode_state(device, contacts or {}, {}, SealedSettings(), {},
                                            GroupBook()))
    return device


def own_contact(phone: str, user_id: str, device_list: SignedDeviceList) -> Contact:
    """This account as a contact, pinned to its own account key from the start."""
    return Contact(phone=phone, user_id=user_id, account_key=device_list.account_key,
                   device_list=device_list.encoded)


def saved_groups(profile: Profile) -> GroupBook:
    """The groups kept in the profile's end-to-end state (hold ``profile.lock``)."""
    return _load_state(profile)[5]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_Loaded = tuple[DeviceCrypto, dict[str, Contact], dict[int, bytes], SealedSettings,
                dict[int, DeviceAddress], GroupBook]


def _encode_state(device: DeviceCrypto, contacts: dict[str, Contact], inbox: dict[int, bytes],
                  sealed: SealedSettings, inbox_senders: dict[int, DeviceAddress],
                  groups: GroupBook) -> bytes:
    packed: bytes = msgpack.packb({"version": STATE_VERSION, "crypto": device.to_bytes(),
                                   "contacts": encode_contacts(contacts),
                                   "inbox": sorted(inbox.items()),
                                   "sealed": sealed.to_state(),
                                   "inbox_senders": [
                                       [envelope_id, sender.user_id, sender.device_id]
                                       for envelope_id, sender in inbox_senders.items()],
                                   "groups": groups.to_state()})
    return packed


def _load_state(profile: Profile) -> _Loaded:
    data = profile.device_state()
    if data is None:
        raise ProfileError(f"no end-to-end state in {profile.directory}; run 'cryptopass verify'")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(value, dict) or value.get("version") != STATE_VERSION:
            raise ValueError("this state predates account keys: enrol this device again")
        inbox = {int(envelope_id): bytes(plaintext) for envelope_id, plaintext in value["inbox"]}
        senders = {int(envelope_id): DeviceAddress(str(user_id), int(device_id))
                   for envelope_id, user_id, device_id in value.get("inbox_senders", [])}
        return (DeviceCrypto.from_bytes(value["crypto"], SystemRandom()),
                decode_contacts(value["contacts"]), inbox,
                SealedSettings.from_state(value.get("sealed")), senders,
                GroupBook.from_state(value.get("groups", [])))  # none before groups came
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as error:
        raise ProfileError(f"the end-to-end state in {profile.directory} is damaged: "
                           f"{error}") from error


class Messenger:
    """An authenticated, encrypting client. Use `Messenger.connect`."""

    def __init__(self, client: RelayClient, profile: Profile, device: DeviceCrypto,
                 contacts: dict[str, Contact], *, persist_state: bool = True,
                 inbox: dict[int, bytes] | None = None,
                 inbox_senders: dict[int, DeviceAddress] | None = None,
                 sealed: SealedSettings | None = None,
                 identity: Ed25519KeyPair | None = None) -> None:
        """Args:
            inbox: the decrypted messages not yet acknowledged, as the saved state holds
                them (`connect` passes them on, so a message decrypted before a crash or an
                interrupted file download is handed over again instead of being lost).
            persist_state: keep the end-to-end state in the profile, under its lock (the
                default, and the only safe choice for a real device: a crash or a second
                process must never reuse a message key). False keeps it in memory only, for
                load generators whose devices live for one run (``cryptopass-bench live
                --encrypted``).
        """
        user_id, device_id, _, _ = profile.require_enrolled()
        if profile.data.phone is None:
            raise ProfileError(f"{profile.directory} has no phone number; re-enrol")
        self.client = client
        self.profile = profile
        self.device = device
        self.contacts = contacts
        self.inbox: dict[int, bytes] = dict(inbox or {})
        self.inbox_senders: dict[int, DeviceAddress] = dict(inbox_senders or {})
        """Senders of sealed inbox entries (a sealed envelope names none to the relay)."""
        self.sealed = sealed or SealedSettings()
        self._identity = identity
        self.seal_by_default = True  #: send sealed to contacts whose profile key is known
        self.groups = GroupBook()  #: this device's groups (client.groups), saved with the state
        self._asked_keys_for_unknown = False  #: one look at the relay's keys per connection
        self.user_id, self.device_id, self.phone = user_id, device_id, profile.data.phone
        self.persist_state = persist_state
        self._stamp = profile.device_state_stamp() if persist_state else None
        self._depth = 0
        self.on_call_signal: Callable[[ReceivedCallSignal], None] | None = None
        """Called (without blocking) with every call message received; without it, call
        messages are read and dropped (client.calls sets it)."""
        self._nursery: trio.Nursery | None = None
        self._held: trio.CancelScope | None = None
        self._moving: trio.Event | None = None

    @property
    def identity(self) -> Ed25519KeyPair:
        """This device's identity key pair (the profile's ``identity.key``): it seals and
        opens sealed envelopes."""
        if self._identity is None:
            self._identity = ed25519_keypair_from_private(bytes(self.profile.signing_key()))
        return self._identity

    @classmethod
    @asynccontextmanager
    async def connect(cls, profile: Profile, *, endpoint: QuicEndpoint | None = None,
                      reached: trio.Event | None = None,
                      hold_profile: bool = True,
                      connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> AsyncIterator[Messenger]:
        """Connect and authenticate as the profile's device, publish missing prekeys, and
        keep refilling them while connected.

        Args:
            reached: set once the relay completed the QUIC handshake, before authentication:
                a caller that gives up first can tell an unreachable relay from a slow one.
            hold_profile: hold the profile's lock for the whole connection (the default, for
                a command that does one thing and ends): a second process on the profile
                waits its turn instead of taking over the device's connection (the relay
                keeps one per device, REPLACED). False, for a long-running follower: the
                lock is held only while connecting and while the state changes.
            connect_timeout: how long each of the profile's relay addresses may leave the
                handshake unanswered before the next is tried (`connect_any`).

        Raises:
            ProfileError: the profile is not enrolled, or its state is damaged.
            RelayUnreachable, HandshakeFailed, NoRelayReached, CertificateFileError: see
                `connect_any`.
        """
        user_id, device_id, relay, ca = profile.require_enrolled()
        addresses = parse_relay_list(relay)
        await profile.lock.acquire()
        held = True
        try:
            device, contacts, inbox, sealed, inbox_senders, groups = _load_state(profile)
            async with connect_any(addresses, ca=Path(ca) if ca else None,
                                   connect_timeout=connect_timeout, endpoint=endpoint) as client:
                if reached is not None:
                    reached.set()
                await client.authenticate(user_id, device_id, profile.signing_key())
                async with cls.attach(client, profile, device, contacts,
                                      inbox=inbox, inbox_senders=inbox_senders,
                                      sealed=sealed, groups=groups) as messenger:
                    if not hold_profile:
                        held = False
                        profile.lock.release()
                    yield messenger
        finally:
            if held:
                profile.lock.release()

    @classmethod
    @asynccontextmanager
    async def attach(cls, client: RelayClient, profile: Profile, device: DeviceCrypto,
                     contacts: dict[str, Contact], *, persist_state: bool = True,
                     inbox: dict[int, bytes] | None = None,
                     inbox_senders: dict[int, DeviceAddress] | None = None,
                     sealed: SealedSettings | None = None,
                     identity: Ed25519KeyPair | None = None,
                     seal: bool = True,
                     groups: GroupBook | None = None) -> AsyncIterator[Messenger]:
        """Run a messenger on ``client``, already authenticated as the profile's device:
        publish missing prekeys (rotating them when due), learn this account's other
        devices, and keep refilling prekeys until the block ends. `connect` uses it; a load
        generator that opens its own connections (many devices on one endpoint) calls it
        directly.

        Args:
            identity: this device's identity key pair, when the profile keeps none in a file
                (a load generator's devices); read from ``identity.key`` otherwise.
            seal: send sealed to contacts whose profile key is known (the default); False
                sends everything identified (what ``cryptopass-bench`` measures unless told
                ``--sealed``).
        """
        messenger = cls(client, profile, device, contacts, persist_state=persist_state,
                        inbox=inbox, inbox_senders=inbox_senders, sealed=sealed,
                        identity=identity)
        messenger.seal_by_default = seal
        messenger.groups = groups or GroupBook()
        await messenger.refresh_prekeys()
        await messenger.own_devices()
        await messenger.prepare_sealed()
        async with trio.open_nursery() as nursery:
            messenger._nursery = nursery
            nursery.start_soon(messenger._refill_when_told)
            try:
                yield messenger
            finally:
                nursery.cancel_scope.cancel()

    async def move_to(self, address: str) -> None:
        """Carry on through the relay node at ``address`` ("HOST:PORT", a node of the same
        cluster, which CALL_ELSEWHERE names): connect there and authenticate as this device.
        The relay keeps one connection per device, so the new one takes over (the old one is
        closed REPLACED); `messages` goes on reading from the new one, and every later request
        uses it. It stays open until this messenger's block ends (docs/CALLS.md "Calls on a
        cluster").

        Raises:
            ValueError: ``address`` is not HOST:PORT.
            RelayUnreachable, HandshakeFailed, CertificateFileError: see `connect_relay`
                (this messenger keeps its connection).
        """
        if self._nursery is None:
            raise RuntimeError("move_to needs a messenger made by Messenger.attach")
        [(host, port)] = parse_relay_list(address)
        moving = self._moving = trio.Event()
        try:
            client, held = await self._nursery.start(self._hold, host, port)
            previous, self._held, self.client = self._held, held, client
        finally:
            self._moving = None
            moving.set()  # `messages` carries on with the new connection
        if previous is not None:
            previous.cancel()  # an earlier move's connection, replaced by now
        self._nursery.start_soon(self._refill_when_told)

    async def _hold(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[tuple[RelayClient, trio.CancelScope]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Open and authenticate `move_to`'s connection, and keep it open until cancelled
        (in this messenger's nursery, so that it closes with the messenger)."""
        ca = self.profile.data.ca
        async with connect_relay(host, port, ca=Path(ca) if ca else None) as client:
            await client.authenticate(self.user_id, self.device_id, self.profile.signing_key())
            with trio.CancelScope() as held:
                task_status.started((client, held))
                await trio.sleep_forever()

    # -- the state, one writer at a time -----------------------------------------------

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the profile's lock around a read-modify-write of the state: reload what
        another process saved meanwhile, and save on the way out (reentrant)."""
        if not self.persist_state:
            yield
            return
        await self.profile.lock.acquire()
        self._depth += 1
        try:
            if self._depth == 1 and self.profile.device_state_stamp() != self._stamp:
                (self.device, self.contacts, self.inbox, self.sealed,
                 self.inbox_senders, self.groups) = _load_state(self.profile)
                self._stamp = self.profile.device_state_stamp()
            yield
        finally:
            self._depth -= 1
            try:
                if self._depth == 0:
                    self.save()
            finally:
                self.profile.lock.release()

    def save(self) -> None:
        """Write the end-to-end state to the profile (atomic, mode 0600); nothing when the
        messenger keeps its state in memory only (``persist_state=False``)."""
        if self.persist_state:
            self.profile.save_device_state(_encode_state(self.device, self.contacts, self.inbox,
                                                         self.sealed, self.inbox_senders,
                                                         self.groups))
            self._stamp = self.profile.device_state_stamp()

    def _address(self, user_id: str, device_id: int) -> DeviceAddress:
        return DeviceAddress(user_id=user_id, device_id=device_id)

    # -- prekeys ------------------------------------------------------------------------

    async def refresh_prekeys(self) -> bool:
        """Rotate the signed and last-resort prekeys when due and publish what the relay
        lacks; True if anything was uploaded."""
        async with self.exclusive():
            counts = await self.client.prekey_counts()
            return await publish_prekeys(self.client, self.device, counts, self.save,
                                         now_ms=_now_ms())

    async def _refill_when_told(self) -> None:
        """Refill on PREKEYS_LOW, and look at least hourly whether the signed and last-resort
        prekeys are due for rotation, so that a device connected for weeks rotates too."""
        try:
            while True:
                with trio.move_on_after(PREKEY_CHECK_INTERVAL_S):
                    await self.client.next_prekeys_low()
                await self.refresh_prekeys()
        except ConnectionClosed:
            return  # The connection's owner reports the close.

    # -- accounts and their devices -----------------------------------------------------

    async def account_view(self, user_id: str) -> AccountView:
        """What the relay says of ``user_id`` now, with the list's signature checked; the
        devices the relay shows but the signed list does not name are left out.

        Raises:
            UnknownContactError: the user is gone or has no signed list.
            DeviceListProblem: the list's signature does not verify.
        """
        try:
            answer = await self.client.list_devices(user_id)
        except RelayError as error:
            if error.code == ErrorCode.UNKNOWN_RECIPIENT:
                raise UnknownContactError("the user is not reachable") from error
            raise
        if answer.account_key is None or answer.signed_list is None:
            raise UnknownContactError("the user has no signed device list")
        try:
            signed = decode_device_list(answer.signed_list, account_key=answer.account_key)
        except DeviceListError as error:
            raise DeviceListProblem(f"the relay served a device list that does not verify: "
                                    f"{error}") from error
        devices = {info.device_id: info.identity_key for info in answer.devices
                   if info.identity_key in signed.devices}
        return AccountView(user_id=user_id, account_key=answer.account_key,
                           device_list=signed, devices=devices)

    def _observe(self, contact: Contact, view: AccountView) -> bool:
        """`Contact.observe`, then make the crypto state follow the accepted devices."""
        before = dict(contact.devices)
        try:
            accepted = contact.observe(view)
        except DeviceListError as error:
            raise DeviceListProblem(f"the relay served an old device list for "
                                    f"{contact.phone}: {error}") from error
        if not accepted:
            return False
        for device_id, key in before.items():
            if contact.devices.get(device_id) != key:
                self.device.forget_device(self._address(contact.user_id, device_id))
        for device_id, key in contact.devices.items():
            address = self._address(contact.user_id, device_id)
            record = self.device.identity_of(address)
            if record is None or record.identity_key != key:
                self.device.trust_identity(address, key)
        return True

    async def _accepted_view(self, contact: Contact) -> AccountView:
        """The contact's current devices, if its account key is the accepted one.

        Raises:
            IdentityChangedError: a new account key or user id awaits `trust`.
            UnknownContactError, DeviceListProblem: see `account_view`.
        """
        if contact.pending_user_id is None:
            try:
                view = await self.account_view(contact.user_id)
            except UnknownContactError:
                await self._check_number_owner(contact)
                raise
            if self._observe(contact, view):
                return view
        raise IdentityChangedError(contact.phone, user_changed=contact.pending_user_id is not None)

    async def _ready(self, contact: Contact) -> None:
        """Make sure the contact may be sent to: its account key is the accepted one, and its
        devices are known (read from its signed list the first time; after that the relay's
        MISMATCHED_DEVICES says when they changed, so a send costs no extra round trip).

        Raises:
            IdentityChangedError: a new account key or user id awaits `trust`.
        """
        if contact.changed:
            raise IdentityChangedError(contact.phone,
                                       user_changed=contact.pending_user_id is not None)
        if contact.first_contact or not contact.devices:
            await self._accepted_view(contact)

    async def _check_number_owner(self, contact: Contact) -> None:
        """The contact's user is gone: if the number now belongs to another user, record
        that user and its account key as pending, and refuse."""
        if contact is self._own():
            return
        entries = await self.client.lookup([contact.phone])
        if entries and entries[0].user_id != contact.user_id:
            view = await self.account_view(entries[0].user_id)
            contact.observe(view)
            raise IdentityChangedError(contact.phone, user_changed=True)

    def _own(self) -> Contact:
        return self.contacts.setdefault(self.phone, Contact(phone=self.phone,
                                                            user_id=self.user_id))

    async def own_devices(self) -> AccountView:
        """This account's devices as its signed list and the relay show them (this device
        included); the crypto state follows them.

        Raises:
            DeviceListProblem: the relay's list is not signed by this account's key, or is
                older than one this device has seen.
        """
        async with self.exclusive():
            own = self._own()
            view = await self.account_view(self.user_id)
            if own.account_key is not None and view.account_key != own.account_key:
                raise DeviceListProblem("the relay's device list for this account is signed "
                                        "by another account key: this number was enrolled "
                                        "again elsewhere")
            self._observe(own, view)
            return view

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

    # -- sending ------------------------------------------------------------------------

    async def send_text(self, phone: str, text: str) -> SendReceipt:
        """Encrypt ``text`` for every listed device of ``phone`` and this account's other
        devices. Every device's trust is checked before any ciphertext leaves.

        Raises:
            UnknownContactError: the number is not a reachable user.
            IdentityChangedError: an account key awaits the user's trust; nothing was sent.
            DeviceListProblem: the relay served a bad or replayed list; nothing was sent.
            MissingPrekeysError: a device has not published its prekeys yet.
            RelayError: the relay refused (QUEUE_FULL, RATE_LIMITED, ...).
            ValueError: the text is too long.
        """
        content = encode_content(sender_phone=self.phone, recipient_phone=phone, text=text,
                                 sent_at=datetime.datetime.now(datetime.UTC))
        return await self._send(phone, content)

    async def send_file(self, phone: str, path: Path, *,
                        progress: TransferProgress | None = None) -> SendReceipt:
        """Encrypt the file at ``path`` as it is read, upload it once, then send its key,
        digest, size, name and blob id as `send_text` sends a text. Trust is checked before
        the upload; an interrupted upload of this file to ``phone`` resumes where the relay
        stopped (`client.attachments`).

        Raises:
            FileUnreadable: not a regular file, too large, or changed while it was read.
            OSError: the file cannot be read.
            RelayError: the relay refused (BLOB_TOO_LARGE, BLOB_QUOTA_EXCEEDED, ...).
            and what `send_text` raises.
        """
        async with self.exclusive():
            await self._check_ready(phone)
        content, uploaded = await self.upload_announced(path, records_key=phone,
                                                        recipient_phone=phone,
                                                        progress=progress)
        receipt = await self._send(phone, content)
        await trio.to_thread.run_sync(forget_upload, uploaded)
        return receipt

    async def upload_announced(self, path: Path, *, records_key: str, recipient_phone: str,
                               progress: TransferProgress | None = None,
                               ) -> tuple[bytes, UploadedFile]:
        """Encrypt the file at ``path`` as it is read and upload it once (resuming an upload
        of it under the same ``records_key``); return the file content that announces it
        and the upload, whose record `forget_upload` removes once that content was sent.

        Raises:
            FileUnreadable, OSError, RelayError: as `send_file`.
        """
        uploaded = await upload_file(self.client, path, records=self.profile.directory,
                                     recipient=records_key, progress=progress)
        media_type, _ = mimetypes.guess_type(path.name, strict=False)
        content = encode_file_content(
            sender_phone=self.phone, recipient_phone=recipient_phone,
            sent_at=datetime.datetime.now(datetime.UTC), blob_id=uploaded.blob_id,
            key=uploaded.key, digest=uploaded.digest, size=uploaded.size,
            chunk_size=uploaded.chunk_size, name=announced_name(path),
            media_type=media_type)
        return content, uploaded

    async def _check_ready(self, phone: str) -> tuple[Contact, Contact]:
        """The contact and this account, both checked before anything leaves."""
        contact = await self.contact(phone)
        own = self._own()
        await self._ready(contact)
        if contact is not own:
            await self._ready(own)
        return contact, own

    async def _send(self, phone: str, content: bytes) -> SendReceipt:
        """Encrypt ``content`` for the contact's devices and this account's other ones."""
        async with self.exclusive():
            contact, own = await self._check_ready(phone)
            message_id = secrets.randbelow(MAX_CLIENT_MESSAGE_ID)
            sealed_id = secrets.token_bytes(SEALED_MESSAGE_ID_SIZE)
            recipient_devices, retries, sealed = await self._deliver(
                contact, content, message_id, sealed_id=None if contact is own else sealed_id)
            if contact is not own:
                await self._share_profile_key(contact)
            own_devices: tuple[int, ...] = ()
            problem = None
            if contact is not own:
                try:
                    own_devices, own_retries, _ = await self._deliver(
                        own, content, secrets.randbelow(MAX_CLIENT_MESSAGE_ID))
                    retries += own_retries
                except (RelayError, IdentityChangedError, DeviceListProblem,
                        MissingPrekeysError) as error:
                    problem = str(error)  # the recipient's copy left: do not say otherwise
        return SendReceipt(message_id=sealed_id.hex() if sealed else message_id,
                           recipient_devices=recipient_devices, own_devices=own_devices,
                           mismatch_retries=retries, own_copy_problem=problem, sealed=sealed)

    async def send_call_signal(self, phone: str, signal: CallSignal) -> tuple[int, ...]:
        """Send a call message to every device of ``phone`` (or, for this account's own
        number, its other devices), urgent and ephemeral: the relay wakes absent devices at
        once and drops the envelope after CALL_SIGNAL_TTL_MS. Returns the devices addressed.

        Raises:
            the errors of `send_text`.
        """
        content = encode_call_signal(signal)
        async with self.exclusive():
            contact = self._own() if phone == self.phone else await self.contact(phone)
            await self._ready(contact)
            # Identified: a call offer must ring at once, and sealed sends go through a
            # second connection (docs/PRIVACY.md says what the relay learns of calls).
            told, _, _ = await self._deliver(contact, content,
                                             secrets.randbelow(MAX_CLIENT_MESSAGE_ID),
                                             urgent=True)
            return told

    async def _deliver(self, contact: Contact, content: bytes, message_id: int, *,
                       sealed_id: bytes | None = None,
                       urgent: bool = False) -> tuple[tuple[int, ...], int, bool]:
        """Send to the contact's accepted devices (`_accepted_view` ran just before): sealed
        (with ``sealed_id`` as its idempotency id) if the contact can take it, else
        identified (``urgent``: a call message, always identified). Returns the devices, the
        mismatch retries, and whether it went sealed."""
        retries = 0
        while True:
            targets = {device_id: key for device_id, key in contact.devices.items()
                       if not (contact.user_id == self.user_id and device_id == self.device_id)}
            await self._start_sessions(contact, targets)
            if not targets:
                return (), retries, False
            addresses = [self._address(contact.user_id, device_id) for device_id in targets]
            ciphertexts = self.device.encrypt(content, addresses)
            self.save()  # Before the ciphertexts leave: their message keys are now used.
            messages = {address.device_id: ciphertext
                        for address, ciphertext in ciphertexts.items()}
            try:
                sealed = await self._send_messages(contact, messages, targets, message_id,
                                                   sealed_id, urgent=urgent)
            except RelayError as error:
                if error.code == ErrorCode.UNKNOWN_RECIPIENT:
                    await self._check_number_owner(contact)  # a new account for the number?
                if (error.code != ErrorCode.MISMATCHED_DEVICES
                        or retries >= MAX_MISMATCH_RETRIES):
                    raise
                retries += 1
                await self._accepted_view(contact)  # the list may have changed: follow it
                continue
            return tuple(sorted(targets)), retries, sealed

    async def _send_messages(self, contact: Contact, messages: dict[int, bytes],
                             keys: dict[int, bytes], message_id: int,
                             sealed_id: bytes | None, *, urgent: bool = False) -> bool:
        """Send the ratchet messages sealed if the contact shared its profile key (on a
        connection of their own) or switched tokens off (on this one), else identified. A
        refused route gives way to the other one once; when both are refused, the profile
        key is stale (rotated): it is dropped until the contact shares a new one. True if
        they went sealed."""
        tried: set[str] = set()
        while sealed_id is not None and self.seal_by_default:
            route = ("organisation" if contact.organisation
                     else "token" if contact.profile_key is not None else None)
            if route is None or route in tried:
                contact.organisation, contact.profile_key = False, None
                break
            tried.add(route)
            now_ms = _now_ms()
            certificate = await current_certificate(self.client, self.sealed, now_ms=now_ms)
            self.save()
            payloads = seal_payloads(messages, keys, certificate=certificate,
                                     identity=self.identity)
            try:
                token = (None if route == "organisation" or contact.profile_key is None
                         else delivery_token(contact.profile_key))
                if token is not None and fits_anonymous_connection(
                        contact.user_id, payloads, token=token, client_message_id=sealed_id):
                    _, _, relay, ca = self.profile.require_enrolled()
                    await send_sealed(parse_relay_list(relay), Path(ca) if ca else None,
                                      contact.user_id, payloads, token=token,
                                      client_message_id=sealed_id)
                else:  # organisation mode, or too large for an anonymous connection
                    await self.client.sealed_send(contact.user_id, payloads,
                                                  client_message_id=sealed_id,
                                                  delivery_token=token)
                return True
            except RelayError as error:
                if error.code != ErrorCode.DELIVERY_TOKEN_REFUSED:
                    raise
                # A rotated token, or tokens switched off: try as a colleague; refused as a
                # colleague, tokens are back on: try the token.
                contact.organisation = route == "token"
        await self.client.send(contact.user_id, messages, client_message_id=message_id,
                               urgent=urgent)
        return False

    # -- sealed sender: the profile key and the delivery token ----------------------------

    async def prepare_sealed(self) -> None:
        """Make the account's profile key on first use (and share it with this account's
        other devices), pin the relay's certificate keys, and register the delivery token's
        hash with the relay if it does not have it yet."""
        async with self.exclusive():
            now_ms = _now_ms()
            others = sorted(device_id for device_id in self._own().devices
                            if device_id != self.device_id)
            if all(self.device_id < device_id for device_id in others):
                # The account's first device makes the key; the others wait for its share.
                self.sealed.ensure_profile_key(now_ms)
            await refresh_relay_keys(self.client, self.sealed, now_ms=now_ms)
            await register_token(self.client, self.sealed)
            if set(others) - set(self.sealed.shared_with):
                await self._share_with_own_devices()

    def _profile_key_share(self) -> bytes:
        if self.sealed.profile_key is None:
            raise ValueError("no profile key yet")
        return encode_profile_key_share(sender_phone=self.phone,
                                        profile_key=self.sealed.profile_key,
                                        generation=self.sealed.generation,
                                        created_ms=self.sealed.created_ms)

    async def _share_with_own_devices(self) -> None:
        """Give the account's profile key to its other devices (best effort)."""
        own = self._own()
        if self.sealed.profile_key is None:
            return
        with contextlib.suppress(RelayError, MissingPrekeysError, IdentityChangedError,
                                 DeviceListProblem):
            told, _, _ = await self._deliver(own, self._profile_key_share(),
                                             secrets.randbelow(MAX_CLIENT_MESSAGE_ID))
            self.sealed.shared_with = sorted(set(self.sealed.shared_with) | set(told))

    async def _share_profile_key(self, contact: Contact) -> bool:
        """Send the account's profile key to ``contact`` unless it has it already (best
        effort: a failure is tried again with the next message). True if sent."""
        key = self.sealed.profile_key
        if (key is None or contact is self._own() or (contact.shared_profile_key is not None
                                                      and contact.shared_profile_key == key)):
            return False
        try:
            await self._deliver(contact, self._profile_key_share(),
                                secrets.randbelow(MAX_CLIENT_MESSAGE_ID),
                                sealed_id=secrets.token_bytes(SEALED_MESSAGE_ID_SIZE))
        except (RelayError, MissingPrekeysError, IdentityChangedError, DeviceListProblem):
            return False
        contact.shared_profile_key = key
        return True

    async def rotate_profile_key(self) -> int:
        """A new profile key: its token's hash replaces the old one at the relay (which then
        refuses the old token), and it goes to this account's other devices and to every
        contact that had the old one. Returns how many contacts got it."""
        async with self.exclusive():
            self.sealed.rotate(_now_ms())
            await register_token(self.client, self.sealed)
            await self._share_with_own_devices()
            shared = 0
            for contact in list(self.contacts.values()):
                if contact.shared_profile_key is not None and contact.user_id != self.user_id:
                    shared += await self._share_profile_key(contact)
            return shared

    async def set_delivery_mode(self, mode: str) -> None:
        """"token" (only holders of the delivery token send sealed) or "organisation"
        (tokens switched off: any device of this account's organisation may send sealed)."""
        async with self.exclusive():
            self.sealed.mode = mode
            await register_token(self.client, self.sealed)

    async def _start_sessions(self, contact: Contact, targets: dict[int, bytes]) -> None:
        """Start a session with every target device that has none, from a bundle whose
        identity key is the listed one."""
        missing = sorted(device_id for device_id in targets
                         if not self.device.has_session(self._address(contact.user_id,
                                                                      device_id)))
        if not missing:
            return
        bundles = await self.client.fetch_bundle(contact.user_id, missing)
        for bundle in bundles:
            if bundle.device_id in targets and bundle.identity_key == targets[bundle.device_id]:
                self.device.start_session(self._address(contact.user_id, bundle.device_id),
                                          bundle_from_wire(bundle))
        self.save()
        without = [device_id for device_id in missing
                   if not self.device.has_session(self._address(contact.user_id, device_id))]
        if without:
            raise MissingPrekeysError(
                f"device(s) {', '.join(map(str, without))} of {contact.phone} gave no usable "
                f"prekey bundle (none published yet, or one not made by the listed key)")

    async def announce_device_list(self, device_list: SignedDeviceList) -> tuple[int, ...]:
        """Tell this account's other devices, end to end, about a newly signed list; return
        the devices told."""
        async with self.exclusive():
            own = self._own()
            await self._accepted_view(own)
            told, _, _ = await self._deliver(own, encode_device_list_update(
                device_list.encoded), secrets.randbelow(MAX_CLIENT_MESSAGE_ID))
            return told

    # What client.group_messaging builds a group message's pairwise steps on.
    ready = _ready
    deliver = _deliver
    start_sessions = _start_sessions
    accepted_view = _accepted_view
    share_profile_key = _share_profile_key

    # -- receiving ----------------------------------------------------------------------

    async def messages(self, *, stop_when_empty: bool = False,
                       download_dir: Path | None = None,
                       progress: TransferProgress | None = None,
                       ) -> AsyncGenerator[ReceivedMessage, None]:
        """Decrypted deliveries in queue order. Each is acknowledged once the caller asks for
        the next one or closes the iterator (use `contextlib.aclosing`). The decryption is
        saved at once with the plaintext kept aside (the inbox), so a crash before the
        acknowledgement shows the message again instead of losing it.

        Args:
            download_dir: fetch each file message's file into this directory before handing
                the message over (its ``file`` says where it went; a file that failed its
                checks or expired is not saved and its ``problem`` says why). A transfer that
                breaks (connection, disk) raises with the message unacknowledged: the next
                run resumes it. None: file messages are handed over unfetched.
            progress: told how each file's download advances.
        """
        handed_over: Deliver | None = None
        try:
            while True:
                client = self.client
                try:
                    async for delivery in client.deliveries():
                        if isinstance(delivery, QueueEmpty):
                            if stop_when_empty:
                                return
                            continue
                        async with self.exclusive():
                            message = await self._open(delivery)
                        if message is None:  # Handed over and acknowledged, or a control one.
                            await self._commit(delivery)
                            continue
                        if download_dir is not None and isinstance(message.content,
                                                                   FileMessage):
                            message = await self._fetch(message, message.content,
                                                        download_dir, progress)
                        handed_over = delivery
                        yield message
                        await self._commit(delivery)
                        handed_over = None
                except ConnectionClosed:
                    if not await self._moved_from(client):
                        raise
                    # What the old connection delivered without an acknowledgement comes
                    # again on the new one; what was already decrypted is recognised.
        finally:
            if handed_over is not None:
                with trio.CancelScope(shield=True):
                    await self._commit(handed_over)

    async def _moved_from(self, client: RelayClient) -> bool:
        """Whether ``client``, now closed, was replaced by `move_to`'s new connection
        (waiting for a move under way to finish)."""
        moving = self._moving
        if moving is not None:
            await moving.wait()
        return self.client is not client

    async def _fetch(self, message: ReceivedMessage, file: FileMessage, directory: Path,
                     progress: TransferProgress | None) -> ReceivedMessage:
        """The message with its file saved, or with why the file was refused."""
        try:
            saved = await download_file(self.client, file, directory, progress=progress)
        except FileRefused as refused:
            return dataclasses.replace(message, problem=str(refused))
        return dataclasses.replace(message, file=saved)

    async def _commit(self, delivery: Deliver) -> None:
        async with self.exclusive():
            self.inbox.pop(delivery.envelope_id, None)
        self.client.acknowledge(delivery.envelope_id)

    async def _open(self, delivery: Deliver) -> ReceivedMessage | None:
        user_id, device_id = delivery.sender_user_id, delivery.sender_device_id
        if user_id is None or device_id is None:
            return await self._open_sealed(delivery)
        sender = self._address(user_id, device_id)

        def unreadable(problem: str) -> ReceivedMessage:
            return ReceivedMessage(envelope_id=delivery.envelope_id, sender=sender,
                                   accepted_at=delivery.accepted_at, content=None,
                                   problem=problem)

        plaintext = self.inbox.get(delivery.envelope_id)
        if plaintext is None:
            expected = await self._expected_identity(sender)
            if expected is None:
                return unreadable("the sending device is not on its account's signed "
                                  "device list")
            try:
                decrypted = self.device.decrypt(sender, delivery.ciphertext,
                                                expected_identity_key=expected)
            except DuplicateMessageError:
                return None
            except CryptoError as error:
                return unreadable(f"cannot decrypt: {type(error).__name__}")
            plaintext = decrypted.plaintext
            if delivery.shared is not None:  # a MULTI_SEND: the plaintext names the group
                try:
                    plaintext = self._open_shared(sender, plaintext, delivery.shared)
                except DuplicateMessageError:
                    self.save()  # the pairwise step moved on: keep it
                    return None
                except (ContentError, CryptoError) as error:
                    self.save()
                    return unreadable(f"cannot open the group message: {error}")
            self._keep(delivery.envelope_id, plaintext, None)
        return await self._read(delivery, sender, plaintext, sealed=False)

    def _keep(self, envelope_id: int, plaintext: bytes, sender: DeviceAddress | None) -> None:
        """Keep a decrypted plaintext until it is handed over (saved at once). A call message
        carries a media key: it is never written to disk, and is lost if this process dies
        before handling it, which an ephemeral call message may be."""
        if _is_call_signal(plaintext):
            self.save()  # the ratchet state moved
            return
        self.inbox[envelope_id] = plaintext
        if sender is not None:
            self.inbox_senders[envelope_id] = sender
        _drop_oldest(self.inbox, MAX_INBOX)
        for kept in [kept for kept in self.inbox_senders if kept not in self.inbox]:
            del self.inbox_senders[kept]
        self.save()

    async def _open_sealed(self, delivery: Deliver) -> ReceivedMessage | None:
        """Open a sealed envelope, check its certificate against the pinned relay keys and
        the sender against the keys pinned for it, then decrypt the inner message as one
        from that device. Any failure is a refusal, never a message."""

        def refused(reason: str) -> ReceivedMessage:
            return ReceivedMessage(envelope_id=delivery.envelope_id, sender=None,
                                   accepted_at=delivery.accepted_at, content=None,
                                   problem=f"sealed message refused: {reason}", sealed=True,
                                   refused=True)

        plaintext = self.inbox.get(delivery.envelope_id)
        sender = self.inbox_senders.get(delivery.envelope_id)
        if plaintext is None or sender is None:
            try:
                opened = await self._open_envelope(delivery)
                certificate = opened.certificate
                sender = self._address(certificate.user_id, certificate.device_id)
                expected = await self._expected_identity(sender)
                check_pinned_sender(certificate, identity_key=expected,
                                    account_key=await self._pinned_account_key(sender.user_id))
            except (SealedSenderError, CertificateError) as error:
                return refused(str(error))
            except UnknownContactError:
                return refused("the certificate names a user the relay does not know")
            if expected is None:  # check_pinned_sender refused a None already
                return refused("the sending device is not on its account's signed list")
            try:
                decrypted = self.device.decrypt(sender, opened.message,
                                                expected_identity_key=expected)
            except DuplicateMessageError:
                return None
            except CryptoError as error:
                return refused(f"the inner message does not decrypt: {type(error).__name__}")
            plaintext = decrypted.plaintext
            if delivery.shared is not None:  # a sealed MULTI_SEND: the plaintext names the group
                try:
                    plaintext = self._open_shared(sender, plaintext, delivery.shared)
                except DuplicateMessageError:
                    self.save()  # the pairwise step moved on: keep it
                    return None
                except (ContentError, CryptoError) as error:
                    self.save()
                    return refused(f"the group message does not open: {error}")
            self._keep(delivery.envelope_id, plaintext, sender)
        return await self._read(delivery, sender, plaintext, sealed=True)

    async def _open_envelope(self, delivery: Deliver) -> OpenedEnvelope:
        """`open_envelope` at the time the relay accepted it; a certificate key not pinned
        yet makes one refresh of the relay's keys (a rotation since the last look), once per
        connection, so that a stream of envelopes naming unknown keys costs one request."""
        for refreshed in (False, True):
            try:
                return open_envelope(delivery.ciphertext, recipient_identity=self.identity,
                                     pinned_relay_keys=self.sealed.relay_keys,
                                     now_ms=delivery.accepted_at)
            except CertificateError as error:
                if (refreshed or self._asked_keys_for_unknown
                        or error.problem is not CertificateProblem.UNKNOWN_KEY):
                    raise
                self._asked_keys_for_unknown = True
                await refresh_relay_keys(self.client, self.sealed, now_ms=_now_ms(),
                                         force=True)
        raise RuntimeError("unreachable")  # the loop returns or raises

    async def _pinned_account_key(self, user_id: str) -> bytes | None:
        """The account key accepted for ``user_id``: a contact's pinned key, else the one
        the relay shows now (first contact, as for an identified message)."""
        for contact in self.contacts.values():
            if (contact.user_id == user_id and not contact.changed
                    and contact.account_key is not None):
                return contact.account_key
        return (await self.account_view(user_id)).account_key

    async def _read(self, delivery: Deliver, sender: DeviceAddress, plaintext: bytes, *,
                    sealed: bool) -> ReceivedMessage | None:
        """Act on a decrypted content: a message to hand over, or a control one (None)."""
        try:
            content = decode_content(plaintext)
        except ContentError as error:
            return ReceivedMessage(envelope_id=delivery.envelope_id, sender=sender,
                                   accepted_at=delivery.accepted_at, content=None,
                                   problem=str(error), sealed=sealed)
        if isinstance(content, DeviceListUpdate):
            if sender.user_id == self.user_id:
                await self._apply_own_list(content.device_list)
            return None
        if isinstance(content, CallSignal):
            await self._hand_call_signal(sender, delivery.accepted_at, content)
            return None
        if isinstance(content, ProfileKeyShare):
            await self._take_profile_key(sender, content)
            return None
        if isinstance(content, GroupKey):
            self.groups.accept_key((sender.user_id, sender.device_id), content,
                                   own_user_id=self.user_id)
            return None
        group = None
        if isinstance(content, GroupOpened):
            shown = self.groups.opened((sender.user_id, sender.device_id), content.group_id,
                                       content.plaintext)
            if shown is None:  # a membership change, applied
                return None
            group, shown_content = shown
            if isinstance(shown_content, GroupFile):
                announced = _group_file(shown_content)
                if isinstance(announced, str):
                    return ReceivedMessage(envelope_id=delivery.envelope_id, sender=sender,
                                           accepted_at=delivery.accepted_at, content=None,
                                           problem=announced, sealed=sealed)
                content = announced
            else:
                content = TextMessage(sender_phone=shown_content.sender_phone,
                                      recipient_phone="", text=shown_content.text,
                                      sent_at=shown_content.sent_at)
        elif isinstance(content, GroupHeader):
            return ReceivedMessage(envelope_id=delivery.envelope_id, sender=sender,
                                   accepted_at=delivery.accepted_at, content=None,
                                   problem="group key material without a shared ciphertext",
                                   sealed=sealed)
        contact = await self._contact_of_sender(sender, content.sender_phone)
        identity_changed = contact is None or contact.changed
        return ReceivedMessage(envelope_id=delivery.envelope_id, sender=sender,
                               accepted_at=delivery.accepted_at, content=content,
                               sender_confirmed=contact is not None,
                               identity_changed=identity_changed, sealed=sealed,
                               group=group)

    def _open_shared(self, sender: DeviceAddress, record: bytes, shared: bytes) -> bytes:
        """A MULTI_SEND's envelope: its record names the group and the sender's chain; open
        the shared ciphertext with it (`GroupBook.open_shared`).

        Raises:
            ContentError: the record is not a group header.
            CryptoError: no such group or chain here, or the ciphertext does not open.
        """
        header = decode_content(record)
        if not isinstance(header, GroupHeader):
            raise ContentError("key material that is not a group header")
        plaintext = self.groups.open_shared((sender.user_id, sender.device_id), header, shared)
        return encode_group_opened(header.group_id, plaintext)

    async def _take_profile_key(self, sender: DeviceAddress, share: ProfileKeyShare) -> None:
        """A contact's profile key (it may now be sent sealed), or this account's from
        another of its devices (adopted if it wins, and its token registered)."""
        if sender.user_id == self.user_id:
            if self.sealed.adopt(share.profile_key, share.generation, share.created_ms):
                await register_token(self.client, self.sealed)
            elif self.sealed.profile_key != share.profile_key:
                await self._share_with_own_devices()  # ours wins: the sharer adopts it
            return
        contact = await self._contact_of_sender(sender, share.sender_phone)
        if contact is not None and not contact.changed and contact.user_id == sender.user_id:
            contact.profile_key, contact.organisation = share.profile_key, False

    async def _hand_call_signal(self, sender: DeviceAddress, accepted_at: int,
                                signal: CallSignal) -> None:
        """Give a call message to the handler if the relay confirms the sender holds the
        number it states (a call from an unconfirmed number is never rung)."""
        if self.on_call_signal is None:
            return
        if sender.user_id == self.user_id:
            confirmed = signal.sender_phone == self.phone
        else:
            contact = await self._contact_of_sender(sender, signal.sender_phone)
            confirmed = contact is not None and not contact.changed
        if confirmed:
            self.on_call_signal(ReceivedCallSignal(sender=sender, accepted_at=accepted_at,
                                                   signal=signal))

    async def _expected_identity(self, sender: DeviceAddress) -> bytes | None:
        """The identity key the sender device must have: the one its account's signed list
        and the relay give (the pinned account's if known, else the relay's view)."""
        for contact in self.contacts.values():
            if contact.user_id == sender.user_id and not contact.changed:
                key = contact.devices.get(sender.device_id)
                if key is not None:
                    return key
        view = await self.account_view(sender.user_id)
        for contact in self.contacts.values():
            if sender.user_id in (contact.user_id, contact.pending_user_id):
                self._observe(contact, view)
        return view.devices.get(sender.device_id)

    async def _apply_own_list(self, device_list: bytes) -> None:
        """Another device of this account signed a new list: check it, then follow it."""
        own = self._own()
        try:
            pushed = decode_device_list(device_list, account_key=own.account_key)
            check_successor(own.seen_list(), pushed)
        except DeviceListError:
            return  # an old or foreign list: the relay's current view decides below
        await self.own_devices()

    async def _contact_of_sender(self, sender: DeviceAddress,
                                 claimed_phone: str) -> Contact | None:
        """The contact the sender is, if the relay confirms it holds ``claimed_phone``."""
        contact = self.contacts.get(claimed_phone)
        if contact is None:
            entries = await self.client.lookup([claimed_phone])
            if not entries or entries[0].user_id != sender.user_id:
                return None
            contact = Contact(phone=claimed_phone, user_id=sender.user_id)
            self._observe(contact, await self.account_view(sender.user_id))
            self.contacts[claimed_phone] = contact
        return contact if sender.user_id in (contact.user_id, contact.pending_user_id) else None

    # -- safety numbers and trust -------------------------------------------------------

    async def safety_number(self, phone: str) -> str:
        """The 60-digit safety number with ``phone`` over both users' account keys (the
        pending key if it changed: that is the one to compare before trusting it)."""
        async with self.exclusive():
            contact = await self.contact(phone)
            if contact.first_contact or not contact.changed:
                with contextlib.suppress(IdentityChangedError):  # now pending: compare it
                    await self._accepted_view(contact)
            key = contact.pending_account_key or contact.account_key
            own = self._own()
            if key is None or own.account_key is None:
                raise UnknownContactError(f"{phone} has no account key yet")
            return safety_number(self.user_id, own.account_key, contact.current_user_id, key)

    async def trust(self, phone: str, *, expected_safety_number: str | None = None) -> str:
        """Accept the contact's new account key; return the safety number it gives.

        Raises:
            ValueError: ``expected_safety_number`` is given and differs (nothing changes).
        """
        async with self.exclusive():
            number = await self.safety_number(phone)
            if expected_safety_number is not None and not secrets.compare_digest(
                    expected_safety_number.replace(" ", ""), number):
                raise ValueError("the safety number differs from the one given; nothing "
                                 "trusted")
            contact = self.contacts[phone]
            for device_id in list(contact.devices):
                self.device.forget_device(self._address(contact.user_id, device_id))
            contact.trust_pending()
            self._observe(contact, await self.account_view(contact.user_id))
            return number


def _group_file(file: GroupFile) -> FileMessage | str:
    """The file a group message announces, or why it is not one."""
    try:
        content = decode_content(file.announcement)
    except ContentError as error:
        return f"a group file announcement that does not read: {error}"
    if not isinstance(content, FileMessage):
        return "a group file message that announces no file"
    return content


def _is_call_signal(plaintext: bytes) -> bool:
    try:
        return isinstance(decode_content(plaintext), CallSignal)
    except ContentError:
        return False


def _drop_oldest(inbox: dict[int, bytes], keep: int) -> None:
    """Drop the oldest entries beyond ``keep`` (insertion order)."""
    for envelope_id in list(inbox)[:-keep]:
        del inbox[envelope_id]
