"""Linking a device: the end-to-end encrypted exchange between an approving and a new device.

The new device shows a link code (`crypto.link_code`) carrying a relay channel id and its X25519
provisioning public key. A device already on the account reads it and the two exchange three
messages through that relay channel, which sees ciphertext only::

    approving -> new    offer  = E || AEAD(offer key, b"offer" || version)
    new -> approving    reply  = AEAD(reply key, the new device's Ed25519 identity public key)
    approving -> new    final  = AEAD(final key, account key seed, user id, device id, phone,
                                      the signed device list that now lists the new device)

    E = the approving device's ephemeral X25519 public key, P = the code's provisioning key
    offer key || reply key || final key = HKDF-SHA256(salt = channel id,
        ikm = X25519(e, P) = X25519(p, E), info = "cryptopass/1 link", 96 bytes)
    AEAD = AES-256-GCM, nonce 12 zero bytes (each key seals one message),
           associated data = label of the message || channel id || P || E

Only the holder of p (the device that showed the code) can open the offer and the final, or
make a reply that opens: a relay that answers in the new device's place is refused at the reply,
before the account key leaves the approving device. Between the reply and the final the
approving device signs the new device list and publishes it (the relay then returns the new
device's id). docs/CRYPTO.md, "Linking a device (provisioning)", has the encodings.

Pure: no I/O; randomness comes from the caller's `RandomSource`. Nothing here prints a secret.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from nacl.bindings import crypto_core_ed25519_is_valid_point

from crypto.device_list import (
    MAX_DEVICE_LIST_SIZE,
    DeviceListError,
    SignedDeviceList,
    decode_device_list,
)
from crypto.link_code import (
    CHANNEL_ID_SIZE,
    LINK_CODE_PREFIX,
    LinkCode,
    LinkCodeError,
    decode_link_code,
    encode_link_code,
)
from crypto.primitives import (
    AES256GCM_KEY_SIZE,
    AES256GCM_NONCE_SIZE,
    AES256GCM_TAG_SIZE,
    ED25519_PRIVATE_KEY_SIZE,
    ED25519_PUBLIC_KEY_SIZE,
    X25519_KEY_SIZE,
    CryptoError,
    DecryptionError,
    Ed25519KeyPair,
    InvalidPublicKeyError,
    RandomSource,
    X25519KeyPair,
    aes256gcm_open,
    aes256gcm_seal,
    ed25519_keypair_from_private,
    hkdf_sha256,
    x25519_dh,
    x25519_generate,
)

__all__ = [
    "CHANNEL_ID_SIZE",
    "LINK_CODE_PREFIX",
    "MAX_FINAL_SIZE",
    "MAX_PHONE_CHARS",
    "MAX_PROVISIONED_DEVICE_ID",
    "MAX_USER_ID_BYTES",
    "OFFER_SIZE",
    "PROVISIONING_VERSION",
    "REPLY_SIZE",
    "Approval",
    "LinkCode",
    "LinkCodeError",
    "LinkSession",
    "ProvisionedAccount",
    "ProvisioningError",
    "ProvisioningKeys",
    "decode_link_code",
    "encode_link_code",
    "open_offer",
    "start_approval",
]

PROVISIONING_VERSION = 1
"""The exchange's version, sealed in the offer: it fixes the format of the reply and final."""
_LINK_INFO = b"cryptopass/1 link"
_OFFER_LABEL = b"cryptopass/1 link offer\x00"
_REPLY_LABEL = b"cryptopass/1 link reply\x00"
_FINAL_LABEL = b"cryptopass/1 link final\x00"
_OFFER_MAGIC = b"offer"
_ZERO_NONCE = bytes(AES256GCM_NONCE_SIZE)  # Safe: each of the three keys seals one plaintext.

MAX_USER_ID_BYTES = 64
"""ASCII characters of a user id: the relay's limit for the opaque ids it assigns."""
MAX_PHONE_CHARS = 16
"""Characters of an E.164 number: "+" and at most 15 digits (ITU-T E.164 section 6)."""
MAX_PROVISIONED_DEVICE_ID = 2**31 - 1
"""Largest device id the relay assigns (PROTOCOL.md): a signed 32-bit column."""
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

OFFER_SIZE = X25519_KEY_SIZE + len(_OFFER_MAGIC) + 1 + AES256GCM_TAG_SIZE
"""Bytes of an offer (54)."""
REPLY_SIZE = ED25519_PUBLIC_KEY_SIZE + AES256GCM_TAG_SIZE
"""Bytes of a reply (48)."""
_FINAL_FIXED_SIZE = ED25519_PRIVATE_KEY_SIZE + 1 + 4 + 1 + 2  # seed, 3 lengths, device id.
MAX_FINAL_SIZE = (_FINAL_FIXED_SIZE + MAX_USER_ID_BYTES + MAX_PHONE_CHARS + MAX_DEVICE_LIST_SIZE
                  + AES256GCM_TAG_SIZE)
"""Bytes of the largest final message (778): the bound for a channel's payloads."""


class ProvisioningError(CryptoError):
    """A link message is malformed, forged, or from another device than the code's."""


@dataclass(frozen=True, kw_only=True, repr=False)
class ProvisioningKeys:
    """The new device's provisioning key pair: fresh for each link code, never stored."""

    keypair: X25519KeyPair

    @classmethod
    def generate(cls, random: RandomSource) -> ProvisioningKeys:
        """Draw a fresh X25519 key pair (32 bytes of ``random``)."""
        return cls(keypair=x25519_generate(random))

    @property
    def public_key(self) -> bytes:
        """The 32-byte public key the link code carries."""
        return self.keypair.public_key

    def __repr__(self) -> str:
        return f"ProvisioningKeys(public_key={self.public_key.hex()}, private_key=<redacted>)"


def _problem_with_account(account: Ed25519KeyPair, user_id: str, device_id: int, phone: str,
                          device_list: SignedDeviceList) -> str | None:
    if not (user_id.isascii() and user_id.isprintable()
            and 1 <= len(user_id) <= MAX_USER_ID_BYTES):
        return f"a user id is 1..{MAX_USER_ID_BYTES} printable ASCII characters"
    if not 1 <= device_id <= MAX_PROVISIONED_DEVICE_ID:
        return f"a device id is 1..{MAX_PROVISIONED_DEVICE_ID}"
    if _E164.fullmatch(phone) is None:
        return "the phone number is not in E.164 form (+ then up to 15 digits)"
    if device_list.account_key != account.public_key:
        return "the device list is signed by another account key than the one provisioned"
    return None


@dataclass(frozen=True, kw_only=True)
class ProvisionedAccount:
    """What the approving device hands the new one: the account and the new device's place."""

    account: Ed25519KeyPair
    """The account key pair (its private seed is what makes the new device speak for it)."""
    user_id: str
    """The relay's id of the user."""
    device_id: int
    """The id the relay gave the new device when the approving device published the list."""
    phone: str
    """The account's phone number, E.164."""
    device_list: SignedDeviceList
    """The account's newest signed device list; it lists the new device's identity key."""

    def __post_init__(self) -> None:
        problem = _problem_with_account(self.account, self.user_id, self.device_id, self.phone,
                                        self.device_list)
        if problem is not None:
            raise ValueError(problem)


@dataclass(frozen=True, kw_only=True, repr=False)
class _LinkKeys:
    offer_key: bytes
    reply_key: bytes
    final_key: bytes
    context: bytes
    """channel id || provisioning public key || ephemeral public key: ends every AD."""


def _derive(shared_secret: bytes, channel_id: bytes, provisioning_key: bytes,
            ephemeral_key: bytes) -> _LinkKeys:
    keys = hkdf_sha256(salt=channel_id, input_key_material=shared_secret, info=_LINK_INFO,
                       length=3 * AES256GCM_KEY_SIZE)
    return _LinkKeys(offer_key=keys[:AES256GCM_KEY_SIZE],
                     reply_key=keys[AES256GCM_KEY_SIZE:2 * AES256GCM_KEY_SIZE],
                     final_key=keys[2 * AES256GCM_KEY_SIZE:],
                     context=channel_id + provisioning_key + ephemeral_key)


def _seal(key: bytes, label: bytes, keys: _LinkKeys, plaintext: bytes) -> bytes:
    return aes256gcm_seal(key=key, nonce=_ZERO_NONCE, plaintext=plaintext,
                          associated_data=label + keys.context)


def _open(key: bytes, label: bytes, keys: _LinkKeys, ciphertext: bytes) -> bytes:
    return aes256gcm_open(key=key, nonce=_ZERO_NONCE, ciphertext=ciphertext,
                          associated_data=label + keys.context)


def _encode_final(account: ProvisionedAccount) -> bytes:
    user = account.user_id.encode("ascii")
    phone = account.phone.encode("ascii")
    listed = account.device_list.encoded
    return (account.account.private_key + bytes([len(user)]) + user
            + struct.pack(">I", account.device_id) + bytes([len(phone)]) + phone
            + struct.pack(">H", len(listed)) + listed)


class _Reader:
    """Reads fields off the front of a plaintext; running short is the peer's fault."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise ProvisioningError("the final link message is truncated")
        chunk = self._data[self._offset:end]
        self._offset = end
        return chunk

    def integer(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise ProvisioningError("the final link message has trailing bytes")


def _decode_final(plaintext: bytes) -> ProvisionedAccount:
    """Parse the final message's plaintext strictly (ProvisioningError on anything else)."""
    reader = _Reader(plaintext)
    seed = reader.take(ED25519_PRIVATE_KEY_SIZE)
    user = reader.take(reader.integer(1))
    device_id = reader.integer(4)
    phone = reader.take(reader.integer(1))
    listed = reader.take(reader.integer(2))
    reader.finish()
    try:
        user_id, phone_number = user.decode("ascii"), phone.decode("ascii")
    except UnicodeDecodeError as error:
        raise ProvisioningError("the user id or phone number is not ASCII") from error
    account = ed25519_keypair_from_private(seed)
    try:
        device_list = decode_device_list(listed, account_key=account.public_key)
    except DeviceListError as error:
        raise ProvisioningError(f"the final message's device list is refused: {error}") from error
    problem = _problem_with_account(account, user_id, device_id, phone_number, device_list)
    if problem is not None:
        raise ProvisioningError(problem)
    return ProvisionedAccount(account=account, user_id=user_id, device_id=device_id,
                              phone=phone_number, device_list=device_list)


class Approval:
    """The approving device's side of one exchange (made by `start_approval`).

    Use: send the offer; `open_reply` the answer; sign and publish the new device list; send
    `final`. Not thread-safe; keep it in memory only for the exchange.
    """

    def __init__(self, *, code: LinkCode, keys: _LinkKeys) -> None:
        self.code = code
        self._keys = keys
        self._new_identity_key: bytes | None = None
        self._final_plaintext: bytes | None = None

    def __repr__(self) -> str:
        return (f"Approval(channel_id={self.code.channel_id.hex()}, "
                f"reply_opened={self._new_identity_key is not None})")

    def open_reply(self, reply: bytes) -> bytes:
        """Check the new device's reply; return its 32-byte Ed25519 identity public key.

        Raises:
            ProvisioningError: the reply was not made by the holder of the provisioning private
                key of the code (a relay or another device answered), or is malformed.
        """
        if len(reply) != REPLY_SIZE:
            raise ProvisioningError(f"a link reply is {REPLY_SIZE} bytes, not {len(reply)}")
        try:
            identity_key = _open(self._keys.reply_key, _REPLY_LABEL, self._keys, reply)
        except DecryptionError as error:
            raise ProvisioningError(
                "the link reply does not open: the device that answered is not the one that "
                "showed the code") from error
        if not crypto_core_ed25519_is_valid_point(identity_key):
            raise ProvisioningError("the new device's identity key is not a valid Ed25519 key")
        if self._new_identity_key not in (None, identity_key):
            raise ProvisioningError("a second, different link reply")
        self._new_identity_key = identity_key
        return identity_key

    def final(self, account: ProvisionedAccount) -> bytes:
        """Seal the account for the new device: the last message of the exchange.

        May be called again with the same account (a resend gives the same bytes).

        Raises:
            ValueError: the reply was not opened first, the device list does not list the new
                device's identity key, or another account was already sealed.
        """
        if self._new_identity_key is None:
            raise ValueError("open the new device's reply before sending it the account")
        if self._new_identity_key not in account.device_list.devices:
            raise ValueError("the device list must list the new device's identity key")
        plaintext = _encode_final(account)
        if self._final_plaintext not in (None, plaintext):
            raise ValueError("this exchange already sealed another account (one key, one "
                             "message)")
        self._final_plaintext = plaintext
        return _seal(self._keys.final_key, _FINAL_LABEL, self._keys, plaintext)


def start_approval(code: LinkCode, random: RandomSource) -> tuple[Approval, bytes]:
    """Begin approving the device that showed ``code``; return the state and the offer.

    Raises:
        ProvisioningError: the code's public key is a low-order or invalid X25519 key.
    """
    ephemeral = x25519_generate(random)
    try:
        shared_secret = x25519_dh(ephemeral.private_key, code.public_key)
    except InvalidPublicKeyError as error:
        raise ProvisioningError("the link code's key is not a usable X25519 key") from error
    keys = _derive(shared_secret, code.channel_id, code.public_key, ephemeral.public_key)
    sealed = _seal(keys.offer_key, _OFFER_LABEL, keys,
                   _OFFER_MAGIC + bytes([PROVISIONING_VERSION]))
    return Approval(code=code, keys=keys), ephemeral.public_key + sealed


class LinkSession:
    """The new device's side of one exchange, after a valid offer (made by `open_offer`)."""

    def __init__(self, *, channel_id: bytes, keys: _LinkKeys) -> None:
        self.channel_id = channel_id
        self._keys = keys
        self._identity_key: bytes | None = None

    def __repr__(self) -> str:
        return (f"LinkSession(channel_id={self.channel_id.hex()}, "
                f"replied={self._identity_key is not None})")

    def reply(self, identity_key: bytes) -> bytes:
        """Seal this device's 32-byte Ed25519 identity public key for the approving device.

        May be called again with the same key (a resend gives the same bytes).

        Raises:
            ValueError: the key is not a valid Ed25519 public key, or differs from the one
                already sent.
        """
        if len(identity_key) != ED25519_PUBLIC_KEY_SIZE or not crypto_core_ed25519_is_valid_point(
                identity_key):
            raise ValueError("an identity key is a valid 32-byte Ed25519 public key")
        if self._identity_key not in (None, identity_key):
            raise ValueError("this exchange already sent another identity key (one key, one "
                             "message)")
        self._identity_key = bytes(identity_key)
        return _seal(self._keys.reply_key, _REPLY_LABEL, self._keys, identity_key)

    def open_final(self, data: bytes) -> ProvisionedAccount:
        """Open the approving device's final message: the account this device now belongs to.

        Raises:
            ValueError: `reply` was not called first.
            ProvisioningError: forged, tampered or malformed, the device list is not signed by
                the account key received, or does not list this device's identity key.
        """
        if self._identity_key is None:
            raise ValueError("reply with this device's identity key before opening the final")
        if len(data) > MAX_FINAL_SIZE:
            raise ProvisioningError(f"a final link message is at most {MAX_FINAL_SIZE} bytes")
        try:
            plaintext = _open(self._keys.final_key, _FINAL_LABEL, self._keys, data)
        except DecryptionError as error:
            raise ProvisioningError(
                "the final link message does not open: it was not made in this exchange") from error
        account = _decode_final(plaintext)
        if self._identity_key not in account.device_list.devices:
            raise ProvisioningError("the account's device list does not list this device")
        return account


def open_offer(keys: ProvisioningKeys, channel_id: bytes, offer: bytes) -> LinkSession:
    """Check an offer that arrived on this device's channel; return the session to answer it.

    Raises:
        ValueError: ``channel_id`` is not 16 bytes (this device's own channel).
        ProvisioningError: the offer is malformed, or was not made from this device's link code
            (another key, another channel, or tampered), or is of an unknown version.
    """
    if len(channel_id) != CHANNEL_ID_SIZE:
        raise ValueError(f"a channel id is {CHANNEL_ID_SIZE} bytes")
    if len(offer) != OFFER_SIZE:
        raise ProvisioningError(f"a link offer is {OFFER_SIZE} bytes, not {len(offer)}")
    ephemeral_key = offer[:X25519_KEY_SIZE]
    try:
        shared_secret = x25519_dh(keys.keypair.private_key, ephemeral_key)
    except InvalidPublicKeyError as error:
        raise ProvisioningError("the link offer's key is not a usable X25519 key") from error
    link_keys = _derive(shared_secret, channel_id, keys.public_key, ephemeral_key)
    try:
        content = _open(link_keys.offer_key, _OFFER_LABEL, link_keys, offer[X25519_KEY_SIZE:])
    except DecryptionError as error:
        raise ProvisioningError(
            "the link offer does not open: it was not made from this device's link code") \
            from error
    if content[:len(_OFFER_MAGIC)] != _OFFER_MAGIC:
        raise ProvisioningError("not a link offer")
    if content[len(_OFFER_MAGIC)] != PROVISIONING_VERSION:
        raise ProvisioningError(f"link exchange version {content[len(_OFFER_MAGIC)]} is not "
                                f"supported (this app speaks {PROVISIONING_VERSION})")
    return LinkSession(channel_id=bytes(channel_id), keys=link_keys)
