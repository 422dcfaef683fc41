"""What the store keeps about prekeys: the values ``Store``'s prekey methods take and return.

Public keys only: the relay never holds a private key. Signatures are kept so that every peer
can check them itself; the relay verified them before calling ``Store.store_prekeys``.
Kinds are ``crypto.prekey_format.PrekeyKind`` (its values name the kinds in the tables).
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.records import Device, StoreError

__all__ = ["ClaimedBundle", "Prekey", "PrekeyCounts", "PrekeyPoolFull", "PrekeyUpload"]


class PrekeyPoolFull(StoreError):
    """``store_prekeys`` would leave more than ``max_pool_size`` one-time keys of a kind."""

    def __init__(self, *, kind: str, max_pool_size: int) -> None:
        super().__init__(f"the {kind} pool would exceed {max_pool_size} keys")
        self.kind = kind
        self.max_pool_size = max_pool_size


@dataclass(frozen=True, kw_only=True, slots=True)
class Prekey:
    key_id: int
    """Chosen by the device (0 .. 2**32-1), unique per device and kind."""
    public_key: bytes
    """32 bytes (X25519) or 1568 bytes (ML-KEM-1024)."""
    signature: bytes | None
    """The identity key's Ed25519 signature; None for one-time X25519 prekeys."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PrekeyUpload:
    """One upload by one device; the relay has verified every signature."""

    signed_prekey: Prekey | None = None
    """Replaces the device's signed X25519 prekey."""
    kem_last_resort_prekey: Prekey | None = None
    """Replaces the device's last-resort ML-KEM prekey."""
    one_time_prekeys: tuple[Prekey, ...] = ()
    """Added to the one-time X25519 pool (a key id already there is overwritten)."""
    kem_one_time_prekeys: tuple[Prekey, ...] = ()
    """Added to the one-time ML-KEM pool (a key id already there is overwritten)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PrekeyCounts:
    one_time: int
    """One-time X25519 prekeys held for the device."""
    kem_one_time: int
    """One-time ML-KEM prekeys held for the device."""
    signed_prekey_id: int | None = None
    """Key id of the current signed prekey, None if none was uploaded."""
    kem_last_resort_prekey_id: int | None = None
    """Key id of the current last-resort KEM prekey, None if none was uploaded."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimedBundle:
    """One device's bundle, with the one-time keys claimed for this caller alone."""

    device: Device
    """The device (its identity key signs the prekeys)."""
    signed_prekey: Prekey | None
    """None if the device never uploaded one (then nothing was claimed from it)."""
    one_time_prekey: Prekey | None
    """Claimed: deleted from the pool in the same transaction. None if the pool was empty."""
    kem_prekey: Prekey | None
    """A claimed one-time KEM prekey, else the last-resort one; None if neither exists."""
    kem_one_time: bool
    """True if ``kem_prekey`` is a claimed one-time key."""
    remaining: PrekeyCounts
    """The device's counts after this claim (to warn it when a pool runs low)."""
