"""Prekeys: the public records a device publishes, and the secrets it keeps for them.

Public side: `SignedPrekey`, `OneTimePrekey` and the `PrekeyBundle` the relay hands out.
`PrekeyBundle.verify` checks every signature before an initiator uses a key (PQXDH §4.3).

Device side: `LocalPrekeys`, the private halves, keyed by key id. Key ids come from one
counter shared by all four kinds, so a key id names exactly one key of this device; the
PQXDH responder finds a KEM prekey by its id alone, whether it is one-time or last-resort.
Signatures use the shared format in `crypto.prekey_format` (the relay checks the same bytes).

The signed prekey and the last-resort ML-KEM key are reusable, so they are rotated together
every `PREKEY_ROTATION_INTERVAL_MS` (sessions started without a one-time key get forward
secrecy once the retired secrets are deleted) and kept `PREKEY_GRACE_MS` after being replaced,
for messages still queued at the relay. Their replay memory (`crypto.base_key_memory`) lives
and dies with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from crypto.base_key_memory import BaseKeyMemory
from crypto.errors import UnknownPrekeyError
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
    "PREKEY_GRACE_MS",
    "PREKEY_ROTATION_INTERVAL_MS",
    "LocalPrekeys",
    "OneTimePrekey",
    "PrekeyBundle",
    "ReusablePrekey",
    "SignedPrekey",
]

MAX_PREKEYS_PER_UPLOAD = 100  # Per kind per request: the relay's upload limit (issue 3).
_DAY_MS = 24 * 60 * 60 * 1000
PREKEY_ROTATION_INTERVAL_MS = 7 * _DAY_MS
"""Age at which the signed and last-resort prekeys are replaced: a week, as Signal's clients
do. It bounds how long a session started without a one-time key lacks forward secrecy (until
the retired secret is deleted, `PREKEY_GRACE_MS` later) against the cost of re-uploading."""
PREKEY_GRACE_MS = 31 * _DAY_MS
"""How long a replaced prekey is kept: the relay keeps an undelivered envelope 30 days by
default (`relay.settings.DEFAULT_ENVELOPE_TTL_MS`), plus a day for the clocks' skew, so an
initial message queued just before a rotation still opens."""
MAX_RETAINED_ROTATED_PREKEYS = 8
"""Signed (and, separately, last-resort) prekeys kept at most, the current one included,
whatever the clock says: a weekly rotation and a 31-day grace need 6; the rest absorbs early
rotations (a full replay memory). Past it the oldest are deleted even within their grace."""
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


@dataclass(frozen=True, kw_only=True)
class ReusablePrekey:
    """A signed X25519 prekey or a last-resort ML-KEM key, kept while a message may name it."""

    secret: bytes
    """The X25519 private key, or the 64-byte ML-KEM-1024 seed."""
    generation: int
    """The rotation that made it (1 for the first); a rotation makes one key of each kind."""
    created_ms: int
    """When it was made (Unix milliseconds, the caller's clock)."""
    replaced_ms: int | None = None
    """When the next rotation replaced it; None while it is the current one."""

    def to_state(self) -> list[Any]:
        return [self.secret, self.generation, self.created_ms, self.replaced_ms]

    @classmethod
    def from_state(cls, state: Any) -> ReusablePrekey:
        secret, generation, created_ms, replaced_ms = state
        if not isinstance(secret, bytes):
            raise TypeError("expected a prekey secret as bytes")
        return cls(secret=secret, generation=int(generation), created_ms=int(created_ms),
                   replaced_ms=None if replaced_ms is None else int(replaced_ms))


@dataclass(kw_only=True)
class LocalPrekeys:
    """A device's prekey secrets, their rotation, and the replay memory tied to them.

    Mutable: `DeviceCrypto` changes it only once a step has succeeded.
    """

    next_key_id: int = 1
    generation: int = 0
    """Rotations made so far; the current signed and last-resort keys carry this number."""
    signed: dict[int, ReusablePrekey] = field(default_factory=dict)
    """Key id -> signed X25519 prekey; the highest id is the current one."""
    kem_last_resort: dict[int, ReusablePrekey] = field(default_factory=dict)
    """Key id -> last-resort ML-KEM-1024 prekey; the highest id is the current one."""
    one_time: dict[int, bytes] = field(default_factory=dict)
    """Key id -> X25519 private key, deleted when used."""
    kem_one_time: dict[int, bytes] = field(default_factory=dict)
    """Key id -> ML-KEM-1024 seed, deleted when used."""
    used_base_keys: BaseKeyMemory = field(default_factory=BaseKeyMemory)
    """Base keys of accepted initial messages that used only reusable prekeys, per pair."""

    # --- generation and rotation ----------------------------------------------------------

    def _allocate_key_id(self) -> int:
        if self.next_key_id > MAX_KEY_ID:
            raise ValueError("this device has used every prekey id; enrol it again")
        key_id = self.next_key_id
        self.next_key_id += 1
        return key_id

    def rotate(self, random: RandomSource, now_ms: int) -> None:
        """Make a new current signed X25519 prekey and last-resort ML-KEM key (one generation);
        the previous ones are retired as of `now_ms` and kept for `PREKEY_GRACE_MS`, and at
        most `MAX_RETAINED_ROTATED_PREKEYS` of each kind are kept whatever the clock says.
        The public records are signed when asked for (`current_signed_prekey`)."""
        self.generation += 1
        for keys in (self.signed, self.kem_last_resort):
            if keys:
                current_id = max(keys)
                keys[current_id] = replace(keys[current_id], replaced_ms=now_ms)
        self.signed[self._allocate_key_id()] = ReusablePrekey(
            secret=x25519_generate(random).private_key, generation=self.generation,
            created_ms=now_ms)
        self.kem_last_resort[self._allocate_key_id()] = ReusablePrekey(
            secret=mlkem1024_generate(random).seed, generation=self.generation,
            created_ms=now_ms)
        for keys in (self.signed, self.kem_last_resort):
            for key_id in sorted(keys)[:-MAX_RETAINED_ROTATED_PREKEYS]:
                self._delete_reusable(keys, key_id)

    def rotation_due(self, now_ms: int) -> bool:
        """True if the current keys are `PREKEY_ROTATION_INTERVAL_MS` old (or were made
        "after" `now_ms`: the clock went back, so their age is unknown), or if the current
        pair can accept no more initial messages (its base-key memory is full)."""
        for keys in (self.signed, self.kem_last_resort):
            age_ms = now_ms - keys[max(keys)].created_ms
            if not 0 <= age_ms < PREKEY_ROTATION_INTERVAL_MS:
                return True
        return self.used_base_keys.is_full((max(self.signed), max(self.kem_last_resort)))

    def delete_expired(self, now_ms: int) -> None:
        """Delete retired keys replaced more than `PREKEY_GRACE_MS` before `now_ms`, with the
        replay memory of every pair that used them."""
        for keys in (self.signed, self.kem_last_resort):
            for key_id, key in list(keys.items()):
                if key.replaced_ms is not None and now_ms - key.replaced_ms > PREKEY_GRACE_MS:
                    self._delete_reusable(keys, key_id)

    def _delete_reusable(self, keys: dict[int, ReusablePrekey], key_id: int) -> None:
        del keys[key_id]
        self.used_base_keys.forget_prekey(key_id)

    # --- one-time keys --------------------------------------------------------------------

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
        public_key = x25519_keypair_from_private(self.signed[key_id].secret).public_key
        signature = _sign(identity, PrekeyKind.SIGNED, key_id, public_key)
        return SignedPrekey(key_id=key_id, public_key=public_key, signature=signature)

    def current_kem_last_resort(self, identity: Ed25519KeyPair) -> SignedPrekey:
        """The last-resort ML-KEM-1024 prekey to publish now."""
        key_id = max(self.kem_last_resort)
        public_key = mlkem1024_keypair_from_seed(self.kem_last_resort[key_id].secret).public_key
        signature = _sign(identity, PrekeyKind.KEM_LAST_RESORT, key_id, public_key)
        return SignedPrekey(key_id=key_id, public_key=public_key, signature=signature)

    # --- responder look-ups ---------------------------------------------------------------

    def signed_prekey_pair(self, key_id: int) -> X25519KeyPair | None:
        """The signed prekey `key_id`, if still retained."""
        prekey = self.signed.get(key_id)
        return None if prekey is None else x25519_keypair_from_private(prekey.secret)

    def kem_seed(self, key_id: int) -> bytes | None:
        """The ML-KEM seed of one-time or last-resort prekey `key_id`, if held."""
        last_resort = self.kem_last_resort.get(key_id)
        return self.kem_one_time.get(key_id, None if last_resort is None else last_resort.secret)

    def one_time_private_key(self, key_id: int) -> bytes | None:
        """The one-time X25519 private key `key_id`, if not used yet."""
        return self.one_time.get(key_id)

    def check_not_replayed(self, *, signed_prekey_id: int, kem_prekey_id: int,
                           one_time_prekey_id: int | None, base_key: bytes) -> None:
        """Refuse an initial message that used only reusable prekeys if its base key was
        already accepted on its pair, or the pair can remember no more, or its two keys are
        not of the same or consecutive rotations (the only pairs a bundle can hold, which
        bounds the pairs remembered to 3 x MAX_RETAINED_ROTATED_PREKEYS).

        Raises:
            UnknownPrekeyError: saying which.
        """
        signed = self.signed.get(signed_prekey_id)
        last_resort = self.kem_last_resort.get(kem_prekey_id)
        if one_time_prekey_id is not None or signed is None or last_resort is None:
            return  # A one-time key is consumed instead; an unknown key is refused elsewhere.
        pair = (signed_prekey_id, kem_prekey_id)
        if abs(signed.generation - last_resort.generation) > 1:
            raise UnknownPrekeyError("initial message pairs prekeys never published together")
        if self.used_base_keys.has_used(pair, base_key):
            raise UnknownPrekeyError("initial message replayed")
        if self.used_base_keys.is_full(pair):
            raise UnknownPrekeyError("these prekeys accept no more initial messages")

    def record_agreement(self, *, signed_prekey_id: int, kem_prekey_id: int,
                         one_time_prekey_id: int | None, base_key: bytes) -> None:
        """After an initial message authenticated: delete the one-time secrets it used
        (PQXDH §4.4), or, if it used only reusable prekeys, remember its base key. Call
        `check_not_replayed` first."""
        if one_time_prekey_id is not None:
            self.one_time.pop(one_time_prekey_id, None)
        if kem_prekey_id in self.kem_one_time:
            del self.kem_one_time[kem_prekey_id]
        elif one_time_prekey_id is None:
            self.used_base_keys.remember((signed_prekey_id, kem_prekey_id), base_key)

    # --- state ----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A msgpack-ready snapshot (holds secrets: store it as you store the identity key)."""
        return {
            "next_key_id": self.next_key_id,
            "generation": self.generation,
            "signed": {key_id: key.to_state() for key_id, key in self.signed.items()},
            "kem_last_resort": {key_id: key.to_state()
                                for key_id, key in self.kem_last_resort.items()},
            "one_time": self.one_time,
            "kem_one_time": self.kem_one_time,
            "used_base_keys": self.used_base_keys.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LocalPrekeys:
        """Rebuild from `to_state` output. Raises KeyError/TypeError/ValueError if corrupt."""
        prekeys = cls(
            next_key_id=int(state["next_key_id"]),
            generation=int(state["generation"]),
            signed=_reusable_map(state["signed"]),
            kem_last_resort=_reusable_map(state["kem_last_resort"]),
            one_time=_int_bytes_map(state["one_time"]),
            kem_one_time=_int_bytes_map(state["kem_one_time"]),
            used_base_keys=BaseKeyMemory.from_state(state["used_base_keys"]),
        )
        if not prekeys.signed or not prekeys.kem_last_resort:
            raise ValueError("saved prekeys lack a current signed or last-resort prekey")
        return prekeys


def _check_batch(count: int, held: int) -> None:
    if not 1 <= count <= MAX_PREKEYS_PER_UPLOAD:
        raise ValueError(f"generate 1..{MAX_PREKEYS_PER_UPLOAD} prekeys at a time, not {count}")
    if held + count > MAX_UNUSED_ONE_TIME_PREKEYS:
        raise ValueError(
            f"{held} unused one-time prekeys held; at most {MAX_UNUSED_ONE_TIME_PREKEYS}"
        )


def _reusable_map(value: Any) -> dict[int, ReusablePrekey]:
    if not isinstance(value, dict) or not all(isinstance(key_id, int) for key_id in value):
        raise TypeError("expected a map of key id to prekey")
    return {key_id: ReusablePrekey.from_state(key) for key_id, key in value.items()}


def _int_bytes_map(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict):
        raise TypeError("expected a map of key id to key")
    result: dict[int, bytes] = {}
    for key_id, secret in value.items():
        if not isinstance(key_id, int) or not isinstance(secret, bytes):
            raise TypeError("expected a map of key id to key")
        result[key_id] = secret
    return result
