"""The Double Ratchet (Signal's specification, revision 4), with AES-256-GCM.

https://signal.org/docs/specifications/doubleratchet/

Functions (§5.2 "recommended cryptographic algorithms", made concrete):

- KDF_RK(rk, dh_out) = HKDF-SHA256(salt=rk, ikm=dh_out, info=ROOT_INFO, 64) -> (rk', ck)
- KDF_CK(ck): mk = HKDF-Expand(ck, 0x01, 32), ck' = HKDF-Expand(ck, 0x02, 32)
  (a one-block HKDF-Expand is HMAC-SHA256(ck, constant || 0x01): §5.2's HMAC with constants)
- ENCRYPT(mk, pt, ad): HKDF-SHA256(salt=32 zero bytes, ikm=mk, info=MESSAGE_INFO, 44) ->
  AES-256 key (32) || nonce (12); AES-256-GCM over pt with ad || encoded header.

`decrypt` never changes the state it is given: it works on a copy and returns the new state
only when the message authenticates (docs/ARCHITECTURE.md, "Rules of the code"). Skipped
message keys are capped per step and in total (named constants below), as §3.5 and §6.5 ask.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

from crypto.errors import (
    DuplicateMessageError,
    MalformedMessageError,
    TooManySkippedMessagesError,
)
from crypto.primitives import (
    AES256GCM_KEY_SIZE,
    AES256GCM_NONCE_SIZE,
    SHA256_SIZE,
    X25519_KEY_SIZE,
    RandomSource,
    X25519KeyPair,
    aes256gcm_open,
    aes256gcm_seal,
    hkdf_sha256,
    hkdf_sha256_expand,
    x25519_dh,
    x25519_generate,
    x25519_keypair_from_private,
)

__all__ = [
    "MAX_SKIPPED_MESSAGES_PER_CHAIN",
    "MAX_STORED_SKIPPED_KEYS",
    "RATCHET_HEADER_SIZE",
    "RatchetHeader",
    "RatchetState",
    "decrypt",
    "encrypt",
    "initialise_initiator",
    "initialise_responder",
]

MAX_SKIPPED_MESSAGES_PER_CHAIN = 1000
"""Messages one received header may skip (§3.5 MAX_SKIP): a sender rarely has 1000 messages in
flight, and each skip costs a stored key, so a forged huge counter cannot exhaust us."""
MAX_STORED_SKIPPED_KEYS = 2000
"""Skipped keys kept per session at most (as libsignal); past it the oldest are dropped and
those late messages are refused (`DuplicateMessageError` in the current chain, otherwise
`DecryptionError`)."""
MAX_MESSAGE_NUMBER = 2**32 - 1  # Header counters are 4 bytes.

ROOT_INFO = b"cryptopass/1 ratchet root"
MESSAGE_INFO = b"cryptopass/1 message key"
_MESSAGE_KEY_CONSTANT = b"\x01"
_CHAIN_KEY_CONSTANT = b"\x02"
_ZERO_SALT = bytes(SHA256_SIZE)

_HEADER_FORMAT = struct.Struct(">32sII")  # ratchet public key, PN, N (big-endian).
RATCHET_HEADER_SIZE = _HEADER_FORMAT.size  # 40 bytes


@dataclass(frozen=True, kw_only=True)
class RatchetHeader:
    """The cleartext header of a ratchet message (§3.4)."""

    ratchet_key: bytes
    """The sender's current ratchet public key (32 bytes)."""
    previous_chain_length: int
    """PN: messages in the sender's previous sending chain."""
    message_number: int
    """N: this message's number in the current sending chain."""

    def encode(self) -> bytes:
        return _HEADER_FORMAT.pack(self.ratchet_key, self.previous_chain_length,
                                   self.message_number)

    @classmethod
    def decode(cls, data: bytes) -> RatchetHeader:
        """Raises MalformedMessageError unless `data` is exactly 40 bytes."""
        if len(data) != RATCHET_HEADER_SIZE:
            raise MalformedMessageError(f"ratchet header must be {RATCHET_HEADER_SIZE} bytes")
        ratchet_key, previous_chain_length, message_number = _HEADER_FORMAT.unpack(data)
        return cls(ratchet_key=ratchet_key, previous_chain_length=previous_chain_length,
                   message_number=message_number)


@dataclass(kw_only=True, repr=False)
class RatchetState:
    """One side of a Double Ratchet session (§3.2). Holds secrets; never log it."""

    root_key: bytes
    sending_ratchet: X25519KeyPair
    receiving_ratchet_key: bytes | None
    sending_chain_key: bytes | None
    receiving_chain_key: bytes | None
    send_count: int = 0
    receive_count: int = 0
    previous_send_count: int = 0
    skipped_keys: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    """(ratchet public key, message number) -> message key, oldest first."""

    def __repr__(self) -> str:
        return f"RatchetState(send_count={self.send_count}, receive_count={self.receive_count})"

    def copy(self) -> RatchetState:
        return replace(self, skipped_keys=dict(self.skipped_keys))

    def to_state(self) -> dict[str, Any]:
        """A msgpack-ready snapshot."""
        return {
            "root_key": self.root_key,
            "sending_ratchet_private": self.sending_ratchet.private_key,
            "receiving_ratchet_key": self.receiving_ratchet_key,
            "sending_chain_key": self.sending_chain_key,
            "receiving_chain_key": self.receiving_chain_key,
            "send_count": self.send_count,
            "receive_count": self.receive_count,
            "previous_send_count": self.previous_send_count,
            "skipped_keys": [[key, number, message_key]
                             for (key, number), message_key in self.skipped_keys.items()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RatchetState:
        """Rebuild from `to_state` output. Raises KeyError/TypeError/ValueError if corrupt."""
        return cls(
            root_key=_bytes(state["root_key"]),
            sending_ratchet=x25519_keypair_from_private(_bytes(state["sending_ratchet_private"])),
            receiving_ratchet_key=_optional_bytes(state["receiving_ratchet_key"]),
            sending_chain_key=_optional_bytes(state["sending_chain_key"]),
            receiving_chain_key=_optional_bytes(state["receiving_chain_key"]),
            send_count=int(state["send_count"]),
            receive_count=int(state["receive_count"]),
            previous_send_count=int(state["previous_send_count"]),
            skipped_keys={(_bytes(key), int(number)): _bytes(message_key)
                          for key, number, message_key in state["skipped_keys"]},
        )


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected bytes in ratchet state")
    return value


def _optional_bytes(value: Any) -> bytes | None:
    return None if value is None else _bytes(value)


def _kdf_root(root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    output = hkdf_sha256(salt=root_key, input_key_material=dh_output, info=ROOT_INFO,
                         length=2 * SHA256_SIZE)
    return output[:SHA256_SIZE], output[SHA256_SIZE:]


def _kdf_chain(chain_key: bytes) -> tuple[bytes, bytes]:
    """Return (next chain key, message key)."""
    message_key = hkdf_sha256_expand(pseudorandom_key=chain_key, info=_MESSAGE_KEY_CONSTANT,
                                     length=SHA256_SIZE)
    next_chain_key = hkdf_sha256_expand(pseudorandom_key=chain_key, info=_CHAIN_KEY_CONSTANT,
                                        length=SHA256_SIZE)
    return next_chain_key, message_key


def _aead_key_and_nonce(message_key: bytes) -> tuple[bytes, bytes]:
    output = hkdf_sha256(salt=_ZERO_SALT, input_key_material=message_key, info=MESSAGE_INFO,
                         length=AES256GCM_KEY_SIZE + AES256GCM_NONCE_SIZE)
    return output[:AES256GCM_KEY_SIZE], output[AES256GCM_KEY_SIZE:]


def initialise_initiator(shared_secret: bytes, remote_ratchet_key: bytes,
                         random: RandomSource) -> RatchetState:
    """RatchetInitAlice (§3.3): `remote_ratchet_key` is the responder's signed prekey.

    Raises:
        InvalidPublicKeyError: `remote_ratchet_key` is malformed or of small order.
    """
    sending_ratchet = x25519_generate(random)
    root_key, sending_chain_key = _kdf_root(
        shared_secret, x25519_dh(sending_ratchet.private_key, remote_ratchet_key))
    return RatchetState(root_key=root_key, sending_ratchet=sending_ratchet,
                        receiving_ratchet_key=remote_ratchet_key,
                        sending_chain_key=sending_chain_key, receiving_chain_key=None)


def initialise_responder(shared_secret: bytes, own_ratchet: X25519KeyPair) -> RatchetState:
    """RatchetInitBob (§3.3): `own_ratchet` is the signed prekey the initiator used."""
    return RatchetState(root_key=shared_secret, sending_ratchet=own_ratchet,
                        receiving_ratchet_key=None, sending_chain_key=None,
                        receiving_chain_key=None)


def encrypt(state: RatchetState, plaintext: bytes,
            associated_data: bytes) -> tuple[RatchetHeader, bytes]:
    """RatchetEncrypt (§3.4): advance `state` in place; return the header and ciphertext.

    Raises:
        ValueError: the state cannot send yet (a responder that has received nothing), or
            its sending chain is exhausted.
    """
    if state.sending_chain_key is None:
        raise ValueError("a responder cannot send before it has received a message")
    if state.send_count > MAX_MESSAGE_NUMBER:
        raise ValueError("sending chain exhausted; the peer must reply first")
    state.sending_chain_key, message_key = _kdf_chain(state.sending_chain_key)
    header = RatchetHeader(ratchet_key=state.sending_ratchet.public_key,
                           previous_chain_length=state.previous_send_count,
                           message_number=state.send_count)
    state.send_count += 1
    key, nonce = _aead_key_and_nonce(message_key)
    ciphertext = aes256gcm_seal(key=key, nonce=nonce, plaintext=plaintext,
                                associated_data=associated_data + header.encode())
    return header, ciphertext


def decrypt(state: RatchetState, header: RatchetHeader, ciphertext: bytes,
            associated_data: bytes, random: RandomSource) -> tuple[RatchetState, bytes]:
    """RatchetDecrypt (§3.5) on a copy of `state`; return (new state, plaintext).

    Raises:
        DecryptionError: the message does not authenticate.
        DuplicateMessageError: its key was already used or has been dropped.
        TooManySkippedMessagesError: it would skip more than MAX_SKIPPED_MESSAGES_PER_CHAIN.
        InvalidPublicKeyError: its ratchet key is malformed or of small order.
    """
    new_state = state.copy()
    skipped_key = new_state.skipped_keys.pop((header.ratchet_key, header.message_number), None)
    if skipped_key is not None:
        return new_state, _open(skipped_key, header, ciphertext, associated_data)
    if header.ratchet_key != new_state.receiving_ratchet_key:
        _skip_message_keys(new_state, header.previous_chain_length)
        _dh_ratchet_step(new_state, header, random)
    if header.message_number < new_state.receive_count:
        raise DuplicateMessageError("message number already received in this chain")
    _skip_message_keys(new_state, header.message_number)
    assert new_state.receiving_chain_key is not None  # set by the DH step above
    new_state.receiving_chain_key, message_key = _kdf_chain(new_state.receiving_chain_key)
    new_state.receive_count += 1
    return new_state, _open(message_key, header, ciphertext, associated_data)


def _open(message_key: bytes, header: RatchetHeader, ciphertext: bytes,
          associated_data: bytes) -> bytes:
    key, nonce = _aead_key_and_nonce(message_key)
    return aes256gcm_open(key=key, nonce=nonce, ciphertext=ciphertext,
                          associated_data=associated_data + header.encode())


def _skip_message_keys(state: RatchetState, until: int) -> None:
    if state.receiving_chain_key is None:
        return
    if until - state.receive_count > MAX_SKIPPED_MESSAGES_PER_CHAIN:
        raise TooManySkippedMessagesError(
            f"message skips {until - state.receive_count} messages; at most "
            f"{MAX_SKIPPED_MESSAGES_PER_CHAIN}")
    assert state.receiving_ratchet_key is not None  # set together with the chain key
    while state.receive_count < until:
        state.receiving_chain_key, message_key = _kdf_chain(state.receiving_chain_key)
        state.skipped_keys[(state.receiving_ratchet_key, state.receive_count)] = message_key
        state.receive_count += 1
    while len(state.skipped_keys) > MAX_STORED_SKIPPED_KEYS:
        del state.skipped_keys[next(iter(state.skipped_keys))]


def _dh_ratchet_step(state: RatchetState, header: RatchetHeader, random: RandomSource) -> None:
    if len(header.ratchet_key) != X25519_KEY_SIZE:
        raise MalformedMessageError("ratchet key must be 32 bytes")
    state.previous_send_count = state.send_count
    state.send_count = 0
    state.receive_count = 0
    state.receiving_ratchet_key = header.ratchet_key
    state.root_key, state.receiving_chain_key = _kdf_root(
        state.root_key, x25519_dh(state.sending_ratchet.private_key, header.ratchet_key))
    state.sending_ratchet = x25519_generate(random)
    state.root_key, state.sending_chain_key = _kdf_root(
        state.root_key, x25519_dh(state.sending_ratchet.private_key, header.ratchet_key))
