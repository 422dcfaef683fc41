"""Prekeys: the public records a device publishes, and the secrets it keeps for them.

Public side: `SignedPrekey`, `OneTimePrekey` and the `PrekeyBundle` the relay hands out.
`PrekeyBundle.verify` checks every signature before an initiator uses a key (PQXDH §4.3).

Device side: `LocalPrekeys`, the private halves, keyed by key id. Key ids come from one
counter shared by all four kinds, so a key id names exactly one key of this device; the
PQXDH responder finds a KEM prekey by its id alone, whether it is one-time or last-resort.
Signatures use the shared format in `crypto.prekey_format` (the relay checks the same bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crypto.prekey_format import MAX_KEY_ID, PrekeyKind, signed_message, verify_prekey_signature
from crypto.primitives import (
    Ed25519KeyPair,
    RandomSource,
    SignatureError,
    X25519KeyPair,
    ed25519_sign,
    mlkem1024_generate,
    mlkem1024_keypair_from_seed,
    x25519_generate,
    x25519_keypair_from_private,
)

__all__ = [
    "MAX_PREKEYS_PER_UPLOAD",
    "MAX_RETAINED_ROTATED_PREKEYS",
    "MAX_UNUSED_ONE_TIME_PREKEYS",
    "LocalPrekeys",
    "OneTimePrekey",
    "PrekeyBundle",
    "SignedPrekey",
]

MAX_PREKEYS_PER_UPLOAD = 100  # Per kind per request: the relay's upload limit (issue 3).
MAX_RETAINED_ROTATED_PREKEYS = 3
"""Signed and last-resort prekeys kept after rotation (the current one included), so an initial
message built from a bundle fetched just before a rotation still opens."""
MAX_UNUSED_ONE_TIME_PREKEYS = 1000
"""One-time secrets of one kind a device keeps at most (10 full uploads); generating more
fails, so a client that refills in a loop cannot grow its state without bound."""

# The KEM label is shared by last-resort and one-time KEM prekeys (prekey_format), so either
# kind verifies a KEM prekey's signature; we name one to say "a signed ML-KEM prekey".
_KEM_SIGNATURE_KIND = PrekeyKind.KEM_ONE_TIME


@dataclass(frozen=True, kw_only=True)
class SignedPrekey:
    """A published prekey with the identity key's signature (X25519 signed or ML-KEM)."""

    key_id: int
    """Chosen by the owning device, 0 .. 2^32-1, unique among its keys."""
    public_key: bytes
    """32 bytes (X25519) or 1568 bytes (ML-KEM-1024)."""
    signature: bytes
    """64-byte Ed25519 signature over `prekey_format.signed_message`."""


@dataclass(frozen=True, kw_only=True)
class OneTimePrekey:
    """A published one-time X25519 prekey (unsigned, as in PQXDH)."""

    key_id: int
    """Chosen by the owning device, unique among its keys."""
    public_key: bytes
    """32-byte X25519 public key."""


@dataclass(frozen=True, kw_only=True)
class PrekeyBundle:
    """What the relay hands an initiator for one target device."""

    identity_key: bytes
    """The target device's 32-byte Ed25519 identity key."""
    signed_prekey: SignedPrekey
    """The current signed X25519 prekey."""
    kem_prekey: SignedPrekey
    """A signed one-time ML-KEM-1024 prekey, or the last-resort one when the pool is empty."""
    one_time_prekey: OneTimePrekey | None = None
    """A one-time X25519 prekey, if any was left."""

    def verify(self) -> None:
        """Check both signatures against `identity_key`.

        Raises:
            SignatureError: naming the prekey whose signature does not verify.
        """
        checks = (
            ("signed prekey", PrekeyKind.SIGNED, self.signed_prekey),
            ("ML-KEM prekey", _KEM_SIGNATURE_KIND, self.kem_prekey),
        )
        for name, kind, prekey in checks:
            if not verify_prekey_signature(
                self.identity_key, kind, prekey.key_id, prekey.public_key, prekey.signature
            ):
                raise SignatureError(f"bundle's {name} {prekey.key_id} has no valid signature")


def _sign(identity: Ed25519KeyPair, kind: PrekeyKind, key_id: int, public_key: bytes) -> bytes:
    return ed25519_sign(identity.private_key, signed_message(kind, key_id, public_key))


@dataclass(kw_only=True)
class LocalPrekeys:
    """A device's prekey secrets. Mutable: the owning `DeviceCrypto` copies before changing."""

    next_key_id: int = 1
    signed: dict[int, bytes] = field(default_factory=dict)
    """Key id -> X25519 private key; the highest id is the current one."""
    kem_last_resort: dict[int, bytes] = field(default_factory=dict)
    """Key id -> ML-KEM-1024 seed; the highest id is the current one."""
    one_time: dict[int, bytes] = field(default_factory=dict)
    """Key id -> X25519 private key, deleted when used."""
    kem_one_time: dict[int, bytes] = field(default_factory=dict)
    """Key id -> ML-KEM-1024 seed, deleted when used."""

    # --- generation -----------------------------------------------------------------------

    def _allocate_key_id(self) -> int:
        if self.next_key_id > MAX_KEY_ID:
            raise ValueError("this device has used every prekey id; enrol it again")
        key_id = self.next_key_id
        self.next_key_id += 1
        return key_id

    def rotate_signed_prekey(self, identity: Ed25519KeyPair, random: RandomSource) -> SignedPrekey:
        """Make a new current signed X25519 prekey; forget the oldest beyond the retention cap."""
        key_id = self._allocate_key_id()
        self.signed[key_id] = x25519_generate(random).private_key
        _drop_oldest(self.signed, MAX_RETAINED_ROTATED_PREKEYS)
        return self.current_signed_prekey(identity)

    def rotate_kem_last_resort(self, identity: Ed25519KeyPair,
                               random: RandomSource) -> SignedPrekey:
        """Make a new current last-resort ML-KEM prekey; forget the oldest beyond the cap."""
        key_id = self._allocate_key_id()
        self.kem_last_resort[key_id] = mlkem1024_generate(random).seed
        _drop_oldest(self.kem_last_resort, MAX_RETAINED_ROTATED_PREKEYS)
        return self.current_kem_last_resort(identity)

    def generate_one_time_prekeys(self, count: int, random: RandomSource) -> list[OneTimePrekey]:
        """Make `count` one-time X25519 prekeys to upload.

        Raises:
            ValueError: `count` is not 1..100, or the device would hold over 1000 unused.
        """
        _check_batch(count, len(self.one_time))
        prekeys = []
        for _ in range(count):
            key_pair = x25519_generate(random)
            key_id = self._allocate_key_id()
            self.one_time[key_id] = key_pair.private_key
            prekeys.append(OneTimePrekey(key_id=key_id, public_key=key_pair.public_key))
        return prekeys

    def generate_kem_one_time_prekeys(
        self, identity: Ed25519KeyPair, count: int, random: RandomSource
    ) -> list[SignedPrekey]:
        """Make `count` signed one-time ML-KEM-1024 prekeys to upload.

        Raises:
            ValueError: `count` is not 1..100, or the device would hold over 1000 unused.
        """
        _check_batch(count, len(self.kem_one_time))
        prekeys = []
        for _ in range(count):
            key_pair = mlkem1024_generate(random)
            key_id = self._allocate_key_id()
            self.kem_one_time[key_id] = key_pair.seed
            signature = _sign(identity, PrekeyKind.KEM_ONE_TIME, key_id, key_pair.public_key)
            prekeys.append(
                SignedPrekey(key_id=key_id, public_key=key_pair.public_key, signature=signature)
            )
        return prekeys

    # --- the current public records -------------------------------------------------------

    def current_signed_prekey(self, identity: Ed25519KeyPair) -> SignedPrekey:
        """The signed X25519 prekey to publish now (signature recomputed: Ed25519 is
        deterministic, so it is the same bytes every time)."""
        key_id = max(self.signed)
        public_key = x25519_keypair_from_private(self.signed[key_id]).public_key
        signature = _sign(identity, PrekeyKind.SIGNED, key_id, public_key)
        return SignedPrekey(key_id=key_id, public_key=public_key, signature=signature)

    def current_kem_last_resort(self, identity: Ed25519KeyPair) -> SignedPrekey:
        """The last-resort ML-KEM-1024 prekey to publish now."""
        key_id = max(self.kem_last_resort)
        public_key = mlkem1024_keypair_from_seed(self.kem_last_resort[key_id]).public_key
        signature = _sign(identity, PrekeyKind.KEM_LAST_RESORT, key_id, public_key)
        return SignedPrekey(key_id=key_id, public_key=public_key, signature=signature)

    # --- responder look-ups ---------------------------------------------------------------

    def signed_prekey_pair(self, key_id: int) -> X25519KeyPair | None:
        """The signed prekey `key_id`, if still retained."""
        private_key = self.signed.get(key_id)
        return None if private_key is None else x25519_keypair_from_private(private_key)

    def kem_seed(self, key_id: int) -> bytes | None:
        """The ML-KEM seed of one-time or last-resort prekey `key_id`, if held."""
        return self.kem_one_time.get(key_id, self.kem_last_resort.get(key_id))

    def one_time_private_key(self, key_id: int) -> bytes | None:
        """The one-time X25519 private key `key_id`, if not used yet."""
        return self.one_time.get(key_id)

    def consume(self, *, one_time_prekey_id: int | None, kem_prekey_id: int) -> None:
        """Delete the one-time secrets an authenticated initial message used (PQXDH §4.4).
        A last-resort KEM key is kept."""
        if one_time_prekey_id is not None:
            self.one_time.pop(one_time_prekey_id, None)
        self.kem_one_time.pop(kem_prekey_id, None)

    # --- state ----------------------------------------------------------------------------

    def copy(self) -> LocalPrekeys:
        return LocalPrekeys(
            next_key_id=self.next_key_id,
            signed=dict(self.signed),
            kem_last_resort=dict(self.kem_last_resort),
            one_time=dict(self.one_time),
            kem_one_time=dict(self.kem_one_time),
        )

    def to_state(self) -> dict[str, Any]:
        """A msgpack-ready snapshot (holds secrets: store it as you store the identity key)."""
        return {
            "next_key_id": self.next_key_id,
            "signed": self.signed,
            "kem_last_resort": self.kem_last_resort,
            "one_time": self.one_time,
            "kem_one_time": self.kem_one_time,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LocalPrekeys:
        """Rebuild from `to_state` output. Raises KeyError/TypeError on a corrupt snapshot."""
        return cls(
            next_key_id=int(state["next_key_id"]),
            signed=_int_bytes_map(state["signed"]),
            kem_last_resort=_int_bytes_map(state["kem_last_resort"]),
            one_time=_int_bytes_map(state["one_time"]),
            kem_one_time=_int_bytes_map(state["kem_one_time"]),
        )


def _check_batch(count: int, held: int) -> None:
    if not 1 <= count <= MAX_PREKEYS_PER_UPLOAD:
        raise ValueError(f"generate 1..{MAX_PREKEYS_PER_UPLOAD} prekeys at a time, not {count}")
    if held + count > MAX_UNUSED_ONE_TIME_PREKEYS:
        raise ValueError(
            f"{held} unused one-time prekeys held; at most {MAX_UNUSED_ONE_TIME_PREKEYS}"
        )


def _drop_oldest(keys: dict[int, bytes], keep: int) -> None:
    for key_id in sorted(keys)[:-keep]:
        del keys[key_id]


def _int_bytes_map(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict):
        raise TypeError("expected a map of key id to key")
    result: dict[int, bytes] = {}
    for key_id, secret in value.items():
        if not isinstance(key_id, int) or not isinstance(secret, bytes):
            raise TypeError("expected a map of key id to key")
        result[key_id] = secret
    return result
