"""Sender keys: one chain per (group, member device), as Signal's group messaging.

Each member device makes its own sending chain for a group: a random 32-byte chain key, a
random chain id and an Ed25519 signing key. It hands the chain (its key at the current
iteration, the chain id and the signing public key: `SenderKeyDistribution`) to every other
member device over the pairwise sessions; afterwards one ciphertext, encrypted once, can be
read by all of them.

Functions (the same shape as the Double Ratchet's symmetric chain, crypto/ratchet.py):

- message seed = HKDF-Expand(chain key, 0x01, 32), next chain key = HKDF-Expand(chain key,
  0x02, 32) (a one-block HKDF-Expand is HMAC-SHA256 with a constant): keys go forward only,
  so a chain handed over at iteration n opens nothing sent before n.
- AES-256 key || nonce = HKDF-SHA256(salt = 32 zero bytes, ikm = message seed,
  info = MESSAGE_INFO, 44); AES-256-GCM over the padded plaintext (crypto/padding.py) with
  AD = label || group id || chain id || iteration || signing public key.
- signature = Ed25519(signing key, AD || ciphertext): only the chain's owner can write in it
  (the other members hold its chain key too, and could otherwise forge its messages).

A receiving chain checks the signature first, then derives the key; it keeps keys it skipped
for late messages (at most `MAX_SKIPPED_SENDER_KEYS`), refuses a message further ahead than
`MAX_FORWARD_JUMP` and refuses a used iteration (a replay). `ReceivingChain.decrypt` never
changes the chain it is given: it returns the advanced copy only when the message opened.
Pure: no I/O; randomness comes in as a `RandomSource`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

from crypto.errors import DuplicateMessageError, MalformedMessageError, TooManySkippedMessagesError
from crypto.padding import pad, unpad
from crypto.primitives import (
    AES256GCM_KEY_SIZE,
    AES256GCM_NONCE_SIZE,
    AES256GCM_TAG_SIZE,
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    SHA256_SIZE,
    Ed25519KeyPair,
    RandomSource,
    aes256gcm_open,
    aes256gcm_seal,
    ed25519_generate,
    ed25519_keypair_from_private,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    hkdf_sha256_expand,
)

__all__ = ["GROUP_ID_SIZE", "MAX_FORWARD_JUMP", "MAX_ITERATION", "MAX_SKIPPED_SENDER_KEYS",
           "SENDER_KEY_VERSION", "ReceivingChain", "SenderKeyDistribution", "SenderKeyMessage",
           "SendingChain"]

SENDER_KEY_VERSION = 1
GROUP_ID_SIZE = 32  # Random group ids: collisions are out of reach.
MAX_FORWARD_JUMP = 2000
"""Iterations one message may skip ahead of the last received in its chain: more messages in
flight from one device to one group than any sender makes, and each skip costs a stored key,
so a forged huge iteration cannot make a receiver derive and store without end."""
MAX_SKIPPED_SENDER_KEYS = 2000
"""Skipped message keys kept per receiving chain (as libsignal's per sender key state); past
it the oldest are dropped and those late messages are refused as duplicates."""
MAX_ITERATION = 2**32 - 1  # Iterations and chain ids travel as 4 bytes.

MESSAGE_INFO = b"cryptopass/1 sender key message"
_LABEL = b"cryptopass/1 sender key\x00"
_MESSAGE_SEED_CONSTANT = b"\x01"
_CHAIN_KEY_CONSTANT = b"\x02"
_ZERO_SALT = bytes(SHA256_SIZE)
_AD_FIELDS = struct.Struct(">32sII32s")  # group id, chain id, iteration, signing public key
_DISTRIBUTION = struct.Struct(">B32sII32s32s")  # version, group, chain id, iteration, key, pub
_MIN_CIPHERTEXT = AES256GCM_TAG_SIZE + 1  # The padded plaintext is never empty.


def _next(chain_key: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message seed) of ``chain_key``."""
    seed = hkdf_sha256_expand(pseudorandom_key=chain_key, info=_MESSAGE_SEED_CONSTANT,
                              length=SHA256_SIZE)
    following = hkdf_sha256_expand(pseudorandom_key=chain_key, info=_CHAIN_KEY_CONSTANT,
                                   length=SHA256_SIZE)
    return following, seed


def _key_and_nonce(message_seed: bytes) -> tuple[bytes, bytes]:
    output = hkdf_sha256(salt=_ZERO_SALT, input_key_material=message_seed, info=MESSAGE_INFO,
                         length=AES256GCM_KEY_SIZE + AES256GCM_NONCE_SIZE)
    return output[:AES256GCM_KEY_SIZE], output[AES256GCM_KEY_SIZE:]


def _associated_data(group_id: bytes, chain_id: int, iteration: int,
                     signing_public_key: bytes) -> bytes:
    return _LABEL + _AD_FIELDS.pack(group_id, chain_id, iteration, signing_public_key)


def _check_group_id(group_id: bytes) -> None:
    if len(group_id) != GROUP_ID_SIZE:
        raise ValueError(f"a group id is {GROUP_ID_SIZE} bytes")


@dataclass(frozen=True, kw_only=True)
class SenderKeyMessage:
    """One group message under a chain. ``body`` is what every member receives alike (the
    shared payload); the chain id and iteration travel beside it, in each member device's
    pairwise-encrypted record, so that whoever carries the body learns neither."""

    chain_id: int  #: which chain of the sending device
    iteration: int  #: the message's position in that chain
    ciphertext: bytes  #: AES-256-GCM over the padded plaintext, tag included
    signature: bytes  #: Ed25519 over the associated data and the ciphertext

    def body(self) -> bytes:
        """version || ciphertext || signature."""
        return bytes([SENDER_KEY_VERSION]) + self.ciphertext + self.signature

    @classmethod
    def from_body(cls, *, chain_id: int, iteration: int, body: bytes) -> SenderKeyMessage:
        """Raises MalformedMessageError: not a body of a version we read, or too short."""
        if len(body) < 1 + _MIN_CIPHERTEXT + ED25519_SIGNATURE_SIZE:
            raise MalformedMessageError("sender key message too short")
        if body[0] != SENDER_KEY_VERSION:
            raise MalformedMessageError(f"sender key message version {body[0]} is not "
                                        f"{SENDER_KEY_VERSION}")
        if not (0 <= chain_id <= MAX_ITERATION and 0 <= iteration <= MAX_ITERATION):
            raise MalformedMessageError("chain id or iteration out of range")
        return cls(chain_id=chain_id, iteration=iteration,
                   ciphertext=body[1:-ED25519_SIGNATURE_SIZE],
                   signature=body[-ED25519_SIGNATURE_SIZE:])


@dataclass(frozen=True, kw_only=True, repr=False)
class SenderKeyDistribution:
    """What a member device hands, pairwise, to the others: its chain at ``iteration``.
    Holds a secret (the chain key); never log it."""

    group_id: bytes
    chain_id: int
    iteration: int
    chain_key: bytes
    signing_public_key: bytes

    def __repr__(self) -> str:
        return f"SenderKeyDistribution(chain_id={self.chain_id}, iteration={self.iteration})"

    def encode(self) -> bytes:
        return _DISTRIBUTION.pack(SENDER_KEY_VERSION, self.group_id, self.chain_id,
                                  self.iteration, self.chain_key, self.signing_public_key)

    @classmethod
    def decode(cls, data: bytes) -> SenderKeyDistribution:
        """Raises MalformedMessageError: wrong size or version."""
        if len(data) != _DISTRIBUTION.size:
            raise MalformedMessageError(f"a sender key distribution is {_DISTRIBUTION.size} "
                                        f"bytes")
        version, group_id, chain_id, iteration, chain_key, public = _DISTRIBUTION.unpack(data)
        if version != SENDER_KEY_VERSION:
            raise MalformedMessageError(f"sender key distribution version {version}")
        return cls(group_id=group_id, chain_id=chain_id, iteration=iteration,
                   chain_key=chain_key, signing_public_key=public)


@dataclass(kw_only=True, repr=False)
class SendingChain:
    """This device's chain for one group. Holds secrets; never log it."""

    group_id: bytes
    chain_id: int
    iteration: int
    chain_key: bytes
    signing_key: Ed25519KeyPair

    def __repr__(self) -> str:
        return f"SendingChain(chain_id={self.chain_id}, iteration={self.iteration})"

    @classmethod
    def create(cls, group_id: bytes, random: RandomSource) -> SendingChain:
        """A new chain at iteration 0 with a fresh key, chain id and signing key."""
        _check_group_id(group_id)
        return cls(group_id=group_id,
                   chain_id=int.from_bytes(random.bytes(4), "big"), iteration=0,
                   chain_key=random.bytes(SHA256_SIZE), signing_key=ed25519_generate(random))

    def distribution(self) -> SenderKeyDistribution:
        """The chain as it stands: its receivers can open this and every later message."""
        return SenderKeyDistribution(group_id=self.group_id, chain_id=self.chain_id,
                                     iteration=self.iteration, chain_key=self.chain_key,
                                     signing_public_key=self.signing_key.public_key)

    def encrypt(self, plaintext: bytes) -> SenderKeyMessage:
        """Encrypt and sign; the chain moves forward (save it before the message leaves).

        Raises:
            ValueError: the chain is exhausted (make a new one).
        """
        if self.iteration > MAX_ITERATION:
            raise ValueError("sending chain exhausted; make a new chain")
        following, seed = _next(self.chain_key)
        associated = _associated_data(self.group_id, self.chain_id, self.iteration,
                                      self.signing_key.public_key)
        key, nonce = _key_and_nonce(seed)
        ciphertext = aes256gcm_seal(key=key, nonce=nonce, plaintext=pad(plaintext),
                                    associated_data=associated)
        message = SenderKeyMessage(
            chain_id=self.chain_id, iteration=self.iteration, ciphertext=ciphertext,
            signature=ed25519_sign(self.signing_key.private_key, associated + ciphertext))
        self.chain_key, self.iteration = following, self.iteration + 1
        return message

    def to_state(self) -> dict[str, Any]:
        return {"group": self.group_id, "chain": self.chain_id, "iteration": self.iteration,
                "key": self.chain_key, "signing": self.signing_key.private_key}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SendingChain:
        return cls(group_id=bytes(state["group"]), chain_id=int(state["chain"]),
                   iteration=int(state["iteration"]), chain_key=bytes(state["key"]),
                   signing_key=ed25519_keypair_from_private(bytes(state["signing"])))


@dataclass(kw_only=True, repr=False)
class ReceivingChain:
    """Another member device's chain, as its distribution handed it over. Holds secrets."""

    group_id: bytes
    chain_id: int
    iteration: int  #: the next iteration not yet derived
    chain_key: bytes
    signing_public_key: bytes
    skipped: dict[int, bytes] = field(default_factory=dict)
    """iteration -> message seed, for messages skipped over; oldest first."""

    def __repr__(self) -> str:
        return f"ReceivingChain(chain_id={self.chain_id}, iteration={self.iteration})"

    @classmethod
    def from_distribution(cls, distribution: SenderKeyDistribution) -> ReceivingChain:
        """Raises MalformedMessageError: the signing key is not 32 bytes."""
        if len(distribution.signing_public_key) != ED25519_PUBLIC_KEY_SIZE:
            raise MalformedMessageError("a sender key's signing key is 32 bytes")
        return cls(group_id=distribution.group_id, chain_id=distribution.chain_id,
                   iteration=distribution.iteration, chain_key=distribution.chain_key,
                   signing_public_key=distribution.signing_public_key)

    def decrypt(self, message: SenderKeyMessage) -> tuple[ReceivingChain, bytes]:
        """Check and open ``message`` on a copy of the chain; return (advanced copy, plaintext).

        Raises:
            MalformedMessageError: the message is for another chain.
            SignatureError: not signed by the chain's owner.
            DuplicateMessageError: its iteration was already used (a replay), lies before the
                chain was handed over, or its skipped key was dropped.
            TooManySkippedMessagesError: it lies more than MAX_FORWARD_JUMP ahead.
            DecryptionError, PaddingError: it does not authenticate or unpad.
        """
        if message.chain_id != self.chain_id:
            raise MalformedMessageError("the message is for another chain")
        associated = _associated_data(self.group_id, self.chain_id, message.iteration,
                                      self.signing_public_key)
        ed25519_verify(self.signing_public_key, associated + message.ciphertext,
                       message.signature)
        chain = replace(self, skipped=dict(self.skipped))
        seed = chain.skipped.pop(message.iteration, None)
        if seed is None:
            if message.iteration < chain.iteration:
                raise DuplicateMessageError("sender key iteration already used or unknown")
            if message.iteration - chain.iteration > MAX_FORWARD_JUMP:
                raise TooManySkippedMessagesError(
                    f"message skips {message.iteration - chain.iteration} iterations; at most "
                    f"{MAX_FORWARD_JUMP}")
            while chain.iteration < message.iteration:
                chain.chain_key, skipped_seed = _next(chain.chain_key)
                chain.skipped[chain.iteration] = skipped_seed
                chain.iteration += 1
            chain.chain_key, seed = _next(chain.chain_key)
            chain.iteration += 1
            while len(chain.skipped) > MAX_SKIPPED_SENDER_KEYS:
                del chain.skipped[next(iter(chain.skipped))]
        key, nonce = _key_and_nonce(seed)
        padded = aes256gcm_open(key=key, nonce=nonce, ciphertext=message.ciphertext,
                                associated_data=associated)
        return chain, unpad(padded)

    def to_state(self) -> dict[str, Any]:
        return {"group": self.group_id, "chain": self.chain_id, "iteration": self.iteration,
                "key": self.chain_key, "signing_public": self.signing_public_key,
                "skipped": sorted(self.skipped.items())}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReceivingChain:
        return cls(group_id=bytes(state["group"]), chain_id=int(state["chain"]),
                   iteration=int(state["iteration"]), chain_key=bytes(state["key"]),
                   signing_public_key=bytes(state["signing_public"]),
                   skipped={int(iteration): bytes(seed) for iteration, seed in state["skipped"]})
