"""One end-to-end session with one peer device: a Double Ratchet plus what frames its messages.

A session created by the initiator keeps sending its PQXDH header with every message until it
has received a reply (as libsignal does), so the responder can open whichever of the first
messages reaches it first. `decrypt` works on a copy and returns the new session only when the
message authenticated and its padding is canonical.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from crypto import ratchet
from crypto.message_format import (
    PrekeyMessage,
    RatchetMessage,
    associated_data,
    encode_message,
)
from crypto.padding import pad, unpad
from crypto.pqxdh import PrekeyHeader
from crypto.primitives import RandomSource

__all__ = ["Session"]


@dataclass(kw_only=True, repr=False)
class Session:
    """A session between our device and one peer device. Holds secrets; never log it."""

    local_identity_key: bytes
    remote_identity_key: bytes
    base_key: bytes
    """The initiator's PQXDH base key: names the agreement this session came from."""
    ratchet: ratchet.RatchetState
    pending_prekey_header: PrekeyHeader | None
    """Set on the initiator's side until the first reply arrives."""

    def __repr__(self) -> str:
        return f"Session(remote_identity_key={self.remote_identity_key.hex()})"

    def copy(self) -> Session:
        return replace(self, ratchet=self.ratchet.copy())

    def encrypt(self, plaintext: bytes) -> bytes:
        """Pad and encrypt `plaintext`, advancing this session; return the message bytes.

        Raises:
            ValueError: the session cannot send yet (see `ratchet.encrypt`).
        """
        header, ciphertext = ratchet.encrypt(
            self.ratchet, pad(plaintext),
            associated_data(self.local_identity_key, self.remote_identity_key))
        message = RatchetMessage(header=header, ciphertext=ciphertext)
        if self.pending_prekey_header is None:
            return encode_message(message)
        return encode_message(PrekeyMessage(prekey_header=self.pending_prekey_header,
                                            message=message))

    def decrypt(self, message: RatchetMessage, random: RandomSource) -> tuple[Session, bytes]:
        """Decrypt on a copy; return (the advanced session, the unpadded plaintext).

        Raises:
            CryptoError: any failure (`DecryptionError`, `DuplicateMessageError`, ...);
                this session is unchanged.
        """
        new_ratchet, padded = ratchet.decrypt(
            self.ratchet, message.header, message.ciphertext,
            associated_data(self.remote_identity_key, self.local_identity_key), random)
        plaintext = unpad(padded)
        return replace(self, ratchet=new_ratchet, pending_prekey_header=None), plaintext

    def to_state(self) -> dict[str, Any]:
        """A msgpack-ready snapshot."""
        header = self.pending_prekey_header
        return {
            "local_identity_key": self.local_identity_key,
            "remote_identity_key": self.remote_identity_key,
            "base_key": self.base_key,
            "ratchet": self.ratchet.to_state(),
            "pending_prekey_header": None if header is None else {
                "identity_key": header.identity_key,
                "base_key": header.base_key,
                "signed_prekey_id": header.signed_prekey_id,
                "kem_prekey_id": header.kem_prekey_id,
                "one_time_prekey_id": header.one_time_prekey_id,
                "kem_ciphertext": header.kem_ciphertext,
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Session:
        """Rebuild from `to_state` output. Raises KeyError/TypeError/ValueError if corrupt."""
        header = state["pending_prekey_header"]
        return cls(
            local_identity_key=bytes(state["local_identity_key"]),
            remote_identity_key=bytes(state["remote_identity_key"]),
            base_key=bytes(state["base_key"]),
            ratchet=ratchet.RatchetState.from_state(state["ratchet"]),
            pending_prekey_header=None if header is None else PrekeyHeader(
                identity_key=bytes(header["identity_key"]),
                base_key=bytes(header["base_key"]),
                signed_prekey_id=int(header["signed_prekey_id"]),
                kem_prekey_id=int(header["kem_prekey_id"]),
                one_time_prekey_id=(None if header["one_time_prekey_id"] is None
                                    else int(header["one_time_prekey_id"])),
                kem_ciphertext=bytes(header["kem_ciphertext"]),
            ),
        )
