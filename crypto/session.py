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
from crypto.address import DeviceAddress
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

    local_address: DeviceAddress
    remote_address: DeviceAddress
    local_identity_key: bytes
    remote_identity_key: bytes
    """The peer device's Ed25519 identity key, as the PQXDH agreement authenticated it."""
    base_key: bytes
    """The initiator's PQXDH base key: names the agreement this session came from."""
    ratchet: ratchet.RatchetState
    pending_prekey_header: PrekeyHeader | None
    """Set on the initiator's side until the first reply arrives."""

    def __repr__(self) -> str:
        return (f"Session(remote_address={self.remote_address}, "
                f"remote_identity_key={self.remote_identity_key.hex()})")

    def copy(self) -> Session:
        return replace(self, ratchet=self.ratchet.copy())

    def encrypt(self, plaintext: bytes) -> bytes:
        """Pad and encrypt `plaintext`, advancing this session; return the message bytes.

        Raises:
            ValueError: the session cannot send yet (see `ratchet.encrypt`).
        """
        prekey_header = self.pending_prekey_header
        header, ciphertext = ratchet.encrypt(
            self.ratchet, pad(plaintext),
            associated_data(sender_identity_key=self.local_identity_key,
                            recipient_identity_key=self.remote_identity_key,
                            sender=self.local_address, recipient=self.remote_address,
                            prekey_header=prekey_header))
        message = RatchetMessage(header=header, ciphertext=ciphertext)
        if prekey_header is None:
            return encode_message(message)
        return encode_message(PrekeyMessage(prekey_header=prekey_header, message=message))

    def decrypt(self, message: PrekeyMessage | RatchetMessage,
                random: RandomSource) -> tuple[Session, bytes]:
        """Decrypt on a copy; return (the advanced session, the unpadded plaintext).

        Raises:
            CryptoError: any failure (`DecryptionError`, `DuplicateMessageError`, ...);
                this session is unchanged.
        """
        prekey_header = message.prekey_header if isinstance(message, PrekeyMessage) else None
        inner = message.message if isinstance(message, PrekeyMessage) else message
        new_ratchet, padded = ratchet.decrypt(
            self.ratchet, inner.header, inner.ciphertext,
            associated_data(sender_identity_key=self.remote_identity_key,
                            recipient_identity_key=self.local_identity_key,
                            sender=self.remote_address, recipient=self.local_address,
                            prekey_header=prekey_header),
            random)
        plaintext = unpad(padded)
        return replace(self, ratchet=new_ratchet, pending_prekey_header=None), plaintext

    def to_state(self) -> dict[str, Any]:
        """A msgpack-ready snapshot."""
        header = self.pending_prekey_header
        return {
            "local_address": [self.local_address.user_id, self.local_address.device_id],
            "remote_address": [self.remote_address.user_id, self.remote_address.device_id],
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
        local_user_id, local_device_id = state["local_address"]
        remote_user_id, remote_device_id = state["remote_address"]
        return cls(
            local_address=DeviceAddress(str(local_user_id), int(local_device_id)),
            remote_address=DeviceAddress(str(remote_user_id), int(remote_device_id)),
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
