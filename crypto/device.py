"""The device-side API: everything a client needs to encrypt and decrypt, and nothing else.

`DeviceCrypto` holds one device's identity, prekey secrets, the identity keys it has seen for
peer devices, and its sessions. It does no I/O: the client fetches bundles, sends and receives
bytes, and saves `to_bytes()` after every call that changed state (each method says so).

Identity keys follow trust on first use: the first key seen for a device is trusted; a
different key later is recorded as untrusted and `encrypt` refuses to send to that device
(`UntrustedIdentityError`) until the user has checked the safety number and the client calls
`trust_identity`. Receiving from a changed identity still works and says so
(`DecryptedMessage.identity_changed`), so the client can warn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crypto import pqxdh
from crypto.device_state import (
    DeviceAddress,
    DeviceState,
    IdentityRecord,
    decode_device_state,
    encode_device_state,
)
from crypto.errors import NoSessionError, UnknownPrekeyError, UntrustedIdentityError
from crypto.message_format import PrekeyMessage, decode_message
from crypto.prekeys import LocalPrekeys, OneTimePrekey, PrekeyBundle, SignedPrekey
from crypto.primitives import (
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
    "MAX_REMEMBERED_BASE_KEYS",
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
MAX_REMEMBERED_BASE_KEYS = 1000
"""Base keys of accepted initial messages that used only reusable prekeys (no one-time key
was consumed), kept to refuse their replay (PQXDH §4.2 leaves that to the application)."""
MAX_RECIPIENTS_PER_MESSAGE = 32
"""Devices one `encrypt` call addresses at most: 16 per user (PROTOCOL.md) for the recipient
and for the sender's own other devices."""


@dataclass(frozen=True, kw_only=True)
class DecryptedMessage:
    """The result of `DeviceCrypto.decrypt`."""

    sender: DeviceAddress
    plaintext: bytes
    identity_changed: bool
    """The sender's identity key is not the one we had: warn; sending to it now refuses."""


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
    def create(cls, identity: Ed25519KeyPair, random: RandomSource) -> DeviceCrypto:
        """New state for a device whose Ed25519 identity is `identity` (its relay key), with
        a first signed prekey and last-resort KEM prekey."""
        prekeys = LocalPrekeys()
        prekeys.rotate_signed_prekey(identity, random)
        prekeys.rotate_kem_last_resort(identity, random)
        return cls(DeviceState(identity_private_key=identity.private_key, prekeys=prekeys),
                   random)

    @classmethod
    def from_bytes(cls, data: bytes, random: RandomSource) -> DeviceCrypto:
        """Load what `to_bytes` saved.

        Raises:
            ValueError: the data is corrupt or of a state version this code does not read.
        """
        return cls(decode_device_state(data), random)

    def to_bytes(self) -> bytes:
        """The whole state, versioned (contains private keys: store it as secret)."""
        return encode_device_state(self._state)

    @property
    def identity_key(self) -> bytes:
        """Our 32-byte Ed25519 identity key (the relay key)."""
        return self._identity.public_key

    # --- prekeys (each changes state: save afterwards) --------------------------------------

    def signed_prekey(self) -> SignedPrekey:
        """The current signed X25519 prekey to publish."""
        return self._state.prekeys.current_signed_prekey(self._identity)

    def kem_last_resort_prekey(self) -> SignedPrekey:
        """The current last-resort ML-KEM-1024 prekey to publish."""
        return self._state.prekeys.current_kem_last_resort(self._identity)

    def rotate_signed_prekey(self) -> SignedPrekey:
        """Replace the signed prekey (older ones stay usable for a while); return the new one."""
        return self._state.prekeys.rotate_signed_prekey(self._identity, self._random)

    def rotate_kem_last_resort_prekey(self) -> SignedPrekey:
        """Replace the last-resort ML-KEM prekey; return the new one."""
        return self._state.prekeys.rotate_kem_last_resort(self._identity, self._random)

    def generate_one_time_prekeys(self, count: int) -> list[OneTimePrekey]:
        """Make `count` (1..100) one-time X25519 prekeys to upload."""
        return self._state.prekeys.generate_one_time_prekeys(count, self._random)

    def generate_kem_one_time_prekeys(self, count: int) -> list[SignedPrekey]:
        """Make `count` (1..100) signed one-time ML-KEM-1024 prekeys to upload."""
        return self._state.prekeys.generate_kem_one_time_prekeys(
            self._identity, count, self._random)

    # --- identities -----------------------------------------------------------------------

    def identity_of(self, address: DeviceAddress) -> IdentityRecord | None:
        """The identity key on record for `address`, and whether it is trusted for sending."""
        return self._state.identities.get(address)

    def trust_identity(self, address: DeviceAddress, identity_key: bytes) -> None:
        """Record `identity_key` as the trusted key of `address` (after the user checked the
        safety number). Sessions with another key are dropped. Changes state."""
        record = self._state.identities.get(address)
        if record is not None and record.identity_key != identity_key:
            self._state.sessions.pop(address, None)
        self._state.identities[address] = IdentityRecord(identity_key=identity_key, trusted=True)

    def forget_device(self, address: DeviceAddress) -> None:
        """Drop the session and identity of a device that left its user. Changes state."""
        self._state.sessions.pop(address, None)
        self._state.identities.pop(address, None)

    # --- sessions -------------------------------------------------------------------------

    def has_session(self, address: DeviceAddress) -> bool:
        """True if `encrypt` can address `address` without a bundle."""
        return bool(self._state.sessions.get(address))

    def start_session(self, address: DeviceAddress, bundle: PrekeyBundle) -> None:
        """Run PQXDH with `bundle` (fetched for `address`) and make it the current session.
        Changes state only on success.

        Raises:
            SignatureError: a bundle signature does not verify.
            InvalidPublicKeyError: a bundle key is malformed.
            UntrustedIdentityError: the bundle's identity key is not the trusted one on record.
        """
        record = self._state.identities.get(address)
        if record is not None and (record.identity_key != bundle.identity_key
                                   or not record.trusted):
            raise UntrustedIdentityError(address)
        agreement = pqxdh.initiate(identity=self._identity, bundle=bundle, random=self._random,
                                   encapsulate=self._encapsulate)
        session = Session(
            local_identity_key=self.identity_key, remote_identity_key=bundle.identity_key,
            base_key=agreement.header.base_key,
            ratchet=initialise_initiator(agreement.shared_secret, agreement.remote_ratchet_key,
                                         self._random),
            pending_prekey_header=agreement.header,
        )
        if record is None:
            self._state.identities[address] = IdentityRecord(identity_key=bundle.identity_key,
                                                             trusted=True)
        self._install_session(address, session)

    def encrypt(self, plaintext: bytes,
                recipients: Iterable[DeviceAddress]) -> dict[DeviceAddress, bytes]:
        """Encrypt one plaintext for each recipient device. Changes state (save afterwards);
        on any error nothing is encrypted and nothing changes.

        Raises:
            ValueError: the plaintext is over `MAX_PLAINTEXT_SIZE`, or too many recipients.
            NoSessionError: some recipients have no session (`.addresses` lists them all).
            UntrustedIdentityError: a recipient's identity changed and is not yet trusted.
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
            if record is None or not record.trusted:
                raise UntrustedIdentityError(address)
        return {address: self._state.sessions[address][0].encrypt(plaintext)
                for address in addresses}

    def decrypt(self, sender: DeviceAddress, data: bytes) -> DecryptedMessage:
        """Decrypt a message that the relay says `sender` sent. Changes state only on success.

        Raises:
            CryptoError: `MalformedMessageError`, `DecryptionError`, `DuplicateMessageError`,
                `TooManySkippedMessagesError`, `UnknownPrekeyError`, `NoSessionError`, ...
        """
        message = decode_message(data)
        address = sender
        sessions = self._state.sessions.get(address, [])
        if isinstance(message, PrekeyMessage):
            header = message.prekey_header
            existing = [session for session in sessions if session.base_key == header.base_key]
            candidates = existing or [self._respond(header)]
            inner = message.message
        else:
            candidates = sessions
            inner = message
        if not candidates:
            raise NoSessionError([address])
        error: Exception | None = None
        for candidate in candidates:
            try:
                new_session, plaintext = candidate.decrypt(inner, self._random)
            except CryptoError as failure:  # Try the next session; report the first failure.
                error = error or failure
                continue
            identity_changed = self._commit_received(address, new_session, candidate, message)
            return DecryptedMessage(sender=address, plaintext=plaintext,
                                    identity_changed=identity_changed)
        assert error is not None
        raise error

    # --- internals ------------------------------------------------------------------------

    def _respond(self, header: pqxdh.PrekeyHeader) -> Session:
        prekeys = self._state.prekeys
        signed_prekey = prekeys.signed_prekey_pair(header.signed_prekey_id)
        kem_seed = prekeys.kem_seed(header.kem_prekey_id)
        one_time_private_key = (None if header.one_time_prekey_id is None
                                else prekeys.one_time_private_key(header.one_time_prekey_id))
        if (signed_prekey is None or kem_seed is None
                or (header.one_time_prekey_id is not None and one_time_private_key is None)):
            raise UnknownPrekeyError("initial message names a prekey this device does not hold")
        if header.base_key in self._state.remembered_base_keys:
            raise UnknownPrekeyError("initial message replayed")
        shared_secret = pqxdh.respond(identity=self._identity, header=header,
                                      signed_prekey=signed_prekey, kem_seed=kem_seed,
                                      one_time_private_key=one_time_private_key)
        return Session(local_identity_key=self.identity_key,
                       remote_identity_key=header.identity_key, base_key=header.base_key,
                       ratchet=initialise_responder(shared_secret, signed_prekey),
                       pending_prekey_header=None)

    def _commit_received(self, address: DeviceAddress, new_session: Session, old: Session,
                         message: object) -> bool:
        """Apply an authenticated message's effects; return True if the identity changed."""
        state = self._state
        if isinstance(message, PrekeyMessage) and old not in state.sessions.get(address, []):
            header = message.prekey_header
            used_only_reusable_prekeys = (header.one_time_prekey_id is None
                                          and header.kem_prekey_id not in
                                          state.prekeys.kem_one_time)
            if used_only_reusable_prekeys:
                _remember(state.remembered_base_keys, header.base_key)
            state.prekeys.consume(one_time_prekey_id=header.one_time_prekey_id,
                                  kem_prekey_id=header.kem_prekey_id)
        self._install_session(address, new_session, replacing=old)
        record = state.identities.get(address)
        if record is None:
            state.identities[address] = IdentityRecord(
                identity_key=new_session.remote_identity_key, trusted=True)
            return False
        if record.identity_key == new_session.remote_identity_key:
            return not record.trusted
        state.identities[address] = IdentityRecord(identity_key=new_session.remote_identity_key,
                                                   trusted=False)
        return True

    def _install_session(self, address: DeviceAddress, session: Session,
                         replacing: Session | None = None) -> None:
        """Make `session` current; keep the others as archived, newest first, capped."""
        others = [kept for kept in self._state.sessions.get(address, [])
                  if kept is not replacing and kept.base_key != session.base_key]
        self._state.sessions[address] = [session, *others][:1 + MAX_ARCHIVED_SESSIONS]


def _remember(base_keys: list[bytes], base_key: bytes) -> None:
    base_keys.append(base_key)
    del base_keys[:-MAX_REMEMBERED_BASE_KEYS]
