"""The device-side API: everything a client needs to encrypt and decrypt, and nothing else.

`DeviceCrypto` holds one device's address and identity, its prekey secrets, the identity keys
the client trusts for peer devices, and its sessions. It does no I/O and reads no clock: the
client fetches bundles, sends and receives bytes, passes the time where rotation needs it, and
saves `to_bytes()` after every call that changed state (each method says so).

Trust is decided by the client at the account level (a contact's account key signs the list of
its devices' identity keys, `crypto.device_list`). Here it comes down to two rules:

- Sending: `start_session` and `encrypt` address a device only with the identity key the client
  has passed to `trust_identity` for it (`UntrustedIdentityError` otherwise).
- Receiving: `decrypt` takes the identity key the sender's signed device list and the relay give
  for the sending device, and refuses a message under any other key (`IdentityMismatchError`).
  It never records or changes a trusted key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crypto import pqxdh
from crypto.address import DeviceAddress
from crypto.device_state import (
    DeviceState,
    IdentityRecord,
    decode_device_state,
    encode_device_state,
)
from crypto.errors import (
    IdentityMismatchError,
    NoSessionError,
    UnknownPrekeyError,
    UntrustedIdentityError,
)
from crypto.message_format import PrekeyMessage, RatchetMessage, decode_message
from crypto.prekeys import LocalPrekeys, OneTimePrekey, PrekeyBundle, SignedPrekey
from crypto.primitives import (
    ED25519_PUBLIC_KEY_SIZE,
    CryptoError,
    Ed25519KeyPair,
    RandomSource,
    ed25519_keypair_from_private,
    mlkem1024_encapsulate,
)
from crypto.ratchet import initialise_initiator, initialise_responder
from crypto.session import Session

__all__ = [
    "MAX_ARCHIVED_SESSIONS",
    "MAX_PLAINTEXT_SIZE",
    "MAX_RECIPIENTS_PER_MESSAGE",
    "DecryptedMessage",
    "DeviceAddress",
    "DeviceCrypto",
    "IdentityRecord",
]

MAX_PLAINTEXT_SIZE = 65_536
"""Bytes of plaintext per message: padded, with the PQXDH header, it stays under the relay's
98,304-byte payload limit; larger content travels as an encrypted attachment."""
MAX_ARCHIVED_SESSIONS = 3
"""Older sessions kept per peer device, so that messages still in flight under a replaced
session (e.g. after both sides started one at once) still open; libsignal keeps 40."""
MAX_RECIPIENTS_PER_MESSAGE = 32
"""Devices one `encrypt` call addresses at most: 16 per user (PROTOCOL.md) for the recipient
and for the sender's own other devices."""


@dataclass(frozen=True, kw_only=True)
class DecryptedMessage:
    """The result of `DeviceCrypto.decrypt`."""

    sender: DeviceAddress
    """The sending device, as the relay named it (the message's associated data binds it)."""
    plaintext: bytes


class DeviceCrypto:
    """One device's end-to-end state. Not thread-safe; one owner at a time."""

    def __init__(self, state: DeviceState, random: RandomSource,
                 encapsulate: pqxdh.Encapsulate = mlkem1024_encapsulate) -> None:
        """Use `create` or `from_bytes`. `encapsulate` exists only for test vectors."""
        self._state = state
        self._random = random
        self._encapsulate = encapsulate
        self._identity = ed25519_keypair_from_private(state.identity_private_key)

    @classmethod
    def create(cls, identity: Ed25519KeyPair, random: RandomSource, *,
               address: DeviceAddress, now_ms: int) -> DeviceCrypto:
        """New state for the device `address` (known once enrolment or linking gave it its
        device id) whose Ed25519 identity is `identity` (its relay key), with a first signed
        prekey and last-resort KEM prekey made at `now_ms` (Unix milliseconds)."""
        prekeys = LocalPrekeys()
        prekeys.rotate(random, now_ms)
        return cls(DeviceState(address=address, identity_private_key=identity.private_key,
                               prekeys=prekeys), random)

    @classmethod
    def from_bytes(cls, data: bytes, random: RandomSource) -> DeviceCrypto:
        """Load what `to_bytes` saved.

        Raises:
            ValueError: the data is corrupt or of a state version this code does not read
                (version 1, from before account identities: the device must enrol again).
        """
        return cls(decode_device_state(data), random)

    def to_bytes(self) -> bytes:
        """The whole state, versioned (contains private keys: store it as secret)."""
        return encode_device_state(self._state)

    @property
    def identity_key(self) -> bytes:
        """Our 32-byte Ed25519 identity key (the relay key)."""
        return self._identity.public_key

    @property
    def address(self) -> DeviceAddress:
        """Our own (user id, device id)."""
        return self._state.address

    # --- prekeys ---------------------------------------------------------------------------

    def signed_prekey(self) -> SignedPrekey:
        """The current signed X25519 prekey to publish. Changes nothing."""
        return self._state.prekeys.current_signed_prekey(self._identity)

    def kem_last_resort_prekey(self) -> SignedPrekey:
        """The current last-resort ML-KEM-1024 prekey to publish. Changes nothing."""
        return self._state.prekeys.current_kem_last_resort(self._identity)

    def rotate_due_prekeys(self, now_ms: int) -> bool:
        """Rotate the signed and last-resort prekeys if due, and delete retired ones past
        their grace period; return True if new keys were made (publish them). Call it at
        every connection and after each `decrypt`: it is cheap. Changes state (save
        afterwards, whatever it returns).

        Due when the current keys are `PREKEY_ROTATION_INTERVAL_MS` old, or the clock went
        back past their creation, or they can accept no more initial messages without a
        one-time key (`MAX_BASE_KEYS_PER_PREKEY_PAIR`).
        """
        prekeys = self._state.prekeys
        prekeys.delete_expired(now_ms)
        if not prekeys.rotation_due(now_ms):
            return False
        prekeys.rotate(self._random, now_ms)
        return True

    def generate_one_time_prekeys(self, count: int) -> list[OneTimePrekey]:
        """Make `count` (1..100) one-time X25519 prekeys to upload. Changes state."""
        return self._state.prekeys.generate_one_time_prekeys(count, self._random)

    def generate_kem_one_time_prekeys(self, count: int) -> list[SignedPrekey]:
        """Make `count` (1..100) signed one-time ML-KEM-1024 prekeys to upload. Changes
        state."""
        return self._state.prekeys.generate_kem_one_time_prekeys(
            self._identity, count, self._random)

    # --- identities -----------------------------------------------------------------------

    def identity_of(self, address: DeviceAddress) -> IdentityRecord | None:
        """The identity key the client trusts for `address`, if any."""
        return self._state.identities.get(address)

    def trust_identity(self, address: DeviceAddress, identity_key: bytes) -> None:
        """Trust `identity_key` for `address` (the client found it on the device list signed
        by the account key it trusts for that user). Sessions with `address` under another
        key are dropped. Changes state.

        Raises:
            ValueError: the key is not 32 bytes.
        """
        if len(identity_key) != ED25519_PUBLIC_KEY_SIZE:
            raise ValueError(f"an identity key has {ED25519_PUBLIC_KEY_SIZE} bytes")
        sessions = [session for session in self._state.sessions.get(address, [])
                    if session.remote_identity_key == identity_key]
        if sessions:
            self._state.sessions[address] = sessions
        else:
            self._state.sessions.pop(address, None)
        self._state.identities[address] = IdentityRecord(identity_key=identity_key)

    def forget_device(self, address: DeviceAddress) -> None:
        """Drop the sessions and trusted key of a device that left its user. Changes state."""
        self._state.sessions.pop(address, None)
        self._state.identities.pop(address, None)

    # --- sessions -------------------------------------------------------------------------

    def has_session(self, address: DeviceAddress) -> bool:
        """True if there is a current session with `address` (`encrypt` also needs its key
        to be the trusted one)."""
        return bool(self._state.sessions.get(address))

    def start_session(self, address: DeviceAddress, bundle: PrekeyBundle) -> None:
        """Run PQXDH with `bundle` (fetched for `address`) and make it the current session.
        Changes state only on success.

        Raises:
            UntrustedIdentityError: the bundle's identity key is not the one trusted for
                `address` (call `trust_identity` first).
            SignatureError: a bundle signature does not verify.
            InvalidPublicKeyError: a bundle key is malformed.
        """
        record = self._state.identities.get(address)
        if record is None or record.identity_key != bundle.identity_key:
            raise UntrustedIdentityError(address)
        agreement = pqxdh.initiate(identity=self._identity, bundle=bundle, random=self._random,
                                   encapsulate=self._encapsulate)
        session = Session(
            local_address=self.address, remote_address=address,
            local_identity_key=self.identity_key, remote_identity_key=bundle.identity_key,
            base_key=agreement.header.base_key,
            ratchet=initialise_initiator(agreement.shared_secret, agreement.remote_ratchet_key,
                                         self._random),
            pending_prekey_header=agreement.header,
        )
        self._install_session(address, session)

    def encrypt(self, plaintext: bytes,
                recipients: Iterable[DeviceAddress]) -> dict[DeviceAddress, bytes]:
        """Encrypt one plaintext for each recipient device. Changes state (save afterwards);
        on any error nothing is encrypted and nothing changes.

        Raises:
            ValueError: the plaintext is over `MAX_PLAINTEXT_SIZE`, or too many recipients.
            NoSessionError: some recipients have no session (`.addresses` lists them all).
            UntrustedIdentityError: a recipient has no trusted key, or its session is under
                another key.
        """
        addresses = sorted(set(recipients))
        if len(addresses) > MAX_RECIPIENTS_PER_MESSAGE:
            raise ValueError(f"at most {MAX_RECIPIENTS_PER_MESSAGE} recipient devices")
        if len(plaintext) > MAX_PLAINTEXT_SIZE:
            raise ValueError(f"plaintext is over {MAX_PLAINTEXT_SIZE} bytes")
        missing = [address for address in addresses if not self.has_session(address)]
        if missing:
            raise NoSessionError(missing)
        for address in addresses:
            record = self._state.identities.get(address)
            current = self._state.sessions[address][0]
            if record is None or record.identity_key != current.remote_identity_key:
                raise UntrustedIdentityError(address)
        return {address: self._state.sessions[address][0].encrypt(plaintext)
                for address in addresses}

    def decrypt(self, sender: DeviceAddress, data: bytes, *,
                expected_identity_key: bytes) -> DecryptedMessage:
        """Decrypt a message that the relay says `sender` sent. `expected_identity_key` is the
        identity key that the sender's account's signed device list, and the relay, give for
        that device. Changes state only on success (save afterwards).

        An initial message starts a new session (the client may then `trust_identity` the
        sender to reply); no identity record is made or changed here.

        Raises:
            IdentityMismatchError: the message (or every session with `sender`) is under
                another identity key.
            CryptoError: `MalformedMessageError`, `DecryptionError`, `DuplicateMessageError`,
                `TooManySkippedMessagesError`, `UnknownPrekeyError`, `InvalidPublicKeyError`,
                `NoSessionError`, ...
        """
        message = decode_message(data)
        sessions = [session for session in self._state.sessions.get(sender, [])
                    if session.remote_identity_key == expected_identity_key]
        if isinstance(message, PrekeyMessage):
            header = message.prekey_header
            if header.identity_key != expected_identity_key:
                raise IdentityMismatchError(sender)
            existing = [session for session in sessions if session.base_key == header.base_key]
            candidates = [(session, False) for session in existing]
            if not candidates:
                candidates = [(self._respond(sender, header), True)]
        else:
            if not sessions and self._state.sessions.get(sender):
                raise IdentityMismatchError(sender)
            candidates = [(session, False) for session in sessions]
        if not candidates:
            raise NoSessionError([sender])
        error: CryptoError | None = None
        for candidate, is_new in candidates:
            try:
                new_session, plaintext = candidate.decrypt(message, self._random)
            except CryptoError as failure:  # Try the next session; report the first failure.
                error = error or failure
                continue
            self._commit_received(sender, new_session, candidate, message, is_new=is_new)
            return DecryptedMessage(sender=sender, plaintext=plaintext)
        if error is None:  # Unreachable: there was at least one candidate, and it failed.
            raise NoSessionError([sender])
        raise error

    # --- internals ------------------------------------------------------------------------

    def _respond(self, sender: DeviceAddress, header: pqxdh.PrekeyHeader) -> Session:
        """A responder session for an initial message, before its AEAD check (no state
        changes).

        Raises:
            InvalidPublicKeyError: the base key is non-canonical or of small order.
            UnknownPrekeyError: a named prekey is gone or unknown, or the message is a replay.
        """
        pqxdh.check_base_key(header.base_key)
        prekeys = self._state.prekeys
        signed_prekey = prekeys.signed_prekey_pair(header.signed_prekey_id)
        kem_seed = prekeys.kem_seed(header.kem_prekey_id)
        one_time_private_key = (None if header.one_time_prekey_id is None
                                else prekeys.one_time_private_key(header.one_time_prekey_id))
        if (signed_prekey is None or kem_seed is None
                or (header.one_time_prekey_id is not None and one_time_private_key is None)):
            raise UnknownPrekeyError("initial message names a prekey this device does not hold")
        prekeys.check_not_replayed(
            signed_prekey_id=header.signed_prekey_id, kem_prekey_id=header.kem_prekey_id,
            one_time_prekey_id=header.one_time_prekey_id, base_key=header.base_key)
        shared_secret = pqxdh.respond(identity=self._identity, header=header,
                                      signed_prekey=signed_prekey, kem_seed=kem_seed,
                                      one_time_private_key=one_time_private_key)
        return Session(local_address=self.address, remote_address=sender,
                       local_identity_key=self.identity_key,
                       remote_identity_key=header.identity_key, base_key=header.base_key,
                       ratchet=initialise_responder(shared_secret, signed_prekey),
                       pending_prekey_header=None)

    def _commit_received(self, address: DeviceAddress, new_session: Session, old: Session,
                         message: PrekeyMessage | RatchetMessage, *, is_new: bool) -> None:
        """Apply an authenticated message's effects."""
        if is_new and isinstance(message, PrekeyMessage):
            header = message.prekey_header
            self._state.prekeys.record_agreement(
                signed_prekey_id=header.signed_prekey_id, kem_prekey_id=header.kem_prekey_id,
                one_time_prekey_id=header.one_time_prekey_id, base_key=header.base_key)
        self._install_session(address, new_session, replacing=old)

    def _install_session(self, address: DeviceAddress, session: Session,
                         replacing: Session | None = None) -> None:
        """Make `session` current; keep the others as archived, newest first, capped."""
        others = [kept for kept in self._state.sessions.get(address, [])
                  if kept is not replacing and kept.base_key != session.base_key]
        self._state.sessions[address] = [session, *others][:1 + MAX_ARCHIVED_SESSIONS]
