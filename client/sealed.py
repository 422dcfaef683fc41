"""The client's side of sealed sender: its profile key, its delivery token, the relay keys it
pinned, its sender certificate, and the sealing and opening of envelopes.

- **Profile key** (`SealedSettings.profile_key`): 32 random bytes per account, made on first
  use and shared end to end with the account's own devices and with every contact written to
  (`client.message_content`, kind ``profile_key``). Its delivery token
  (`crypto.delivery_token`) lets a contact send sealed; the relay holds only the token's hash.
  Rotating makes a new key (a higher ``generation``); the account's devices adopt the highest
  generation, and at one generation the oldest key (so a newly linked device adopts the key
  its account already gave out).
- **Relay keys**: the keys that sign sender certificates, fetched over the relay's
  TLS-authenticated connection at enrolment (the first connection) and compared with the
  relay's list daily, or at once when a certificate names a key not pinned; a pinned key keeps
  the earliest end announced for it (a relay cannot extend a retired key), and a key the relay
  no longer publishes is dropped. A certificate signed by any other key is refused
  (docs/PRIVACY.md).
- **Sender certificate**: asked of the relay on the authenticated connection, cached in the
  state, renewed `CERTIFICATE_RENEWAL_MARGIN_MS` before it expires.
- **Sending sealed**: the inner ratchet messages are sealed one per device
  (`crypto.sealed_sender.seal`) and sent on a connection of their own that never authenticates
  (`send_sealed`), so that the relay cannot tie the envelope to this device's connection.

No state is written here: the messenger saves `SealedSettings` with the rest of its state.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from client.connection import (
    ConnectionClosed,
    HandshakeFailed,
    RelayClient,
    RelayError,
    RelayUnreachable,
    connect_anonymous,
)
from crypto.delivery_token import delivery_token, delivery_token_hash, new_profile_key
from crypto.primitives import Ed25519KeyPair, SystemRandom
from crypto.sealed_sender import seal
from crypto.sender_certificate import RelayCertificateKey

__all__ = ["CERTIFICATE_RENEWAL_MARGIN_MS", "RELAY_KEYS_REFRESH_MS", "SEALED_MESSAGE_ID_SIZE",
           "SealedSettings", "current_certificate", "refresh_relay_keys", "register_token",
           "seal_payloads", "send_sealed"]

CERTIFICATE_RENEWAL_MARGIN_MS = 3_600_000
"""A cached sender certificate is renewed an hour before it expires, so that an envelope
sealed now is still within its certificate's life when the relay accepts it."""
RELAY_KEYS_REFRESH_MS = 86_400_000
"""How often the pinned relay keys are compared with the relay's list (daily): a new
certificate key is learnt within a day of its rotation, well inside the overlap."""
SEALED_MESSAGE_ID_SIZE = 16
"""Bytes of a sealed send's random idempotency id (PROTOCOL.md "Sealed sender")."""
SEALED_SEND_ATTEMPTS = 2
"""A sealed send whose connection closed before the answer is made again once, with the same
id and envelopes: the relay stores it once (a lost answer is not a lost message)."""
_FOREVER_MS = 2**63 - 1  # the relay's current signing key has no end until it rotates
MODES = ("token", "organisation")


@dataclass
class SealedSettings:
    """This device's sealed-sender state (saved inside the end-to-end state)."""

    profile_key: bytes | None = None  #: the account's profile key (None until first use)
    generation: int = 0  #: bumped at each rotation; the account's devices adopt the highest
    created_ms: int = 0  #: when the profile key was made
    mode: str = "token"  #: "token", or "organisation" (tokens switched off)
    registered: bytes | None = None  #: the token hash (or mode marker) last registered
    relay_keys: list[RelayCertificateKey] = field(default_factory=list)  #: pinned
    relay_keys_checked_ms: int = 0  #: when the relay's list was last compared
    certificate: bytes | None = None  #: the cached sender certificate
    certificate_expires_ms: int = 0  #: its expiry
    shared_with: list[int] = field(default_factory=list)  #: own devices given the current key

    def ensure_profile_key(self, now_ms: int) -> bool:
        """Make the account's profile key if there is none yet; True if one was made."""
        if self.profile_key is not None:
            return False
        self.profile_key, self.created_ms = new_profile_key(SystemRandom()), now_ms
        return True

    def rotate(self, now_ms: int) -> None:
        """A new profile key: contacts holding the old one can no longer send sealed."""
        self.profile_key, self.created_ms = new_profile_key(SystemRandom()), now_ms
        self.generation += 1
        self.shared_with = []

    def adopt(self, profile_key: bytes, generation: int, created_ms: int) -> bool:
        """Take a profile key another device of this account shared, if it wins (a higher
        generation; at one generation, the older key). True if adopted."""
        if self.profile_key is not None and (
                generation < self.generation or (generation == self.generation
                                                 and created_ms >= self.created_ms)):
            return False
        self.profile_key, self.generation, self.created_ms = profile_key, generation, created_ms
        self.shared_with = []
        return True

    @property
    def token(self) -> bytes | None:
        """This account's delivery token (what contacts show to send sealed)."""
        return None if self.profile_key is None else delivery_token(self.profile_key)

    def wanted_registration(self) -> bytes:
        """What the relay should hold: the token's hash, or a marker of organisation mode."""
        if self.mode == "organisation" or self.token is None:
            return b"organisation" if self.mode == "organisation" else b""
        return delivery_token_hash(self.token)

    def to_state(self) -> dict[str, Any]:
        return {"profile_key": self.profile_key, "generation": self.generation,
                "created_ms": self.created_ms, "mode": self.mode,
                "registered": self.registered,
                "relay_keys": [[key.key_id, key.public_key, key.not_after_ms]
                               for key in self.relay_keys],
                "relay_keys_checked_ms": self.relay_keys_checked_ms,
                "certificate": self.certificate,
                "certificate_expires_ms": self.certificate_expires_ms,
                "shared_with": self.shared_with}

    @classmethod
    def from_state(cls, value: object) -> SealedSettings:
        """Read `to_state`'s form (None: a state saved before sealed sender).

        Raises:
            ValueError: the value is damaged.
        """
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError("the sealed-sender settings are damaged")
        try:
            settings = cls(
                profile_key=value["profile_key"], generation=int(value["generation"]),
                created_ms=int(value["created_ms"]), mode=str(value["mode"]),
                registered=value["registered"],
                relay_keys=[RelayCertificateKey(key_id=int(key_id), public_key=bytes(key),
                                                not_after_ms=int(not_after))
                            for key_id, key, not_after in value["relay_keys"]],
                relay_keys_checked_ms=int(value["relay_keys_checked_ms"]),
                certificate=value["certificate"],
                certificate_expires_ms=int(value["certificate_expires_ms"]),
                shared_with=[int(device_id) for device_id in value.get("shared_with", [])])
        except (KeyError, TypeError) as error:
            raise ValueError(f"the sealed-sender settings are damaged: {error}") from error
        if settings.mode not in MODES:
            raise ValueError("the sealed-sender settings are damaged: unknown mode")
        return settings


async def register_token(client: RelayClient, settings: SealedSettings) -> bool:
    """Tell the relay this account's current token hash (or organisation mode) if it does
    not have it yet; True if it was sent."""
    if settings.mode == "token" and settings.token is None:
        return False  # another device of the account registers its key's token
    wanted = settings.wanted_registration()
    if settings.registered is not None and secrets.compare_digest(settings.registered, wanted):
        return False
    if settings.mode == "organisation":
        await client.set_delivery_token(None, mode="organisation")
    else:
        token = settings.token
        await client.set_delivery_token(None if token is None else delivery_token_hash(token))
    settings.registered = wanted
    return True


async def refresh_relay_keys(client: RelayClient, settings: SealedSettings, *, now_ms: int,
                             force: bool = False) -> bool:
    """Compare the pinned relay keys with the relay's list when due (or ``force``): new keys
    are pinned, a pinned key keeps the end first seen for it, a key past its end is dropped.
    True if the list was asked."""
    if not force and now_ms - settings.relay_keys_checked_ms < RELAY_KEYS_REFRESH_MS:
        return False
    announced = await client.get_sender_keys()
    known = {key.key_id: key for key in settings.relay_keys}
    pinned: dict[int, RelayCertificateKey] = {}
    for key in announced:  # a key the relay no longer publishes is no longer accepted
        end = _FOREVER_MS if key.not_after_ms is None else key.not_after_ms
        earlier = known.get(key.key_id)
        if earlier is not None and earlier.public_key == key.public_key:
            # Retired: the end first seen stands, never extended.
            pinned[key.key_id] = replace(earlier, not_after_ms=min(end, earlier.not_after_ms))
        else:
            pinned[key.key_id] = RelayCertificateKey(key_id=key.key_id,
                                                     public_key=key.public_key,
                                                     not_after_ms=end)
    settings.relay_keys = sorted((key for key in pinned.values() if key.not_after_ms > now_ms),
                                 key=lambda key: key.key_id)
    settings.relay_keys_checked_ms = now_ms
    return True


async def current_certificate(client: RelayClient, settings: SealedSettings, *,
                              now_ms: int) -> bytes:
    """The cached sender certificate, renewed first if it expires within the margin."""
    if (settings.certificate is None
            or settings.certificate_expires_ms - now_ms < CERTIFICATE_RENEWAL_MARGIN_MS):
        issued = await client.get_sender_certificate()
        settings.certificate, settings.certificate_expires_ms = (issued.certificate,
                                                                 issued.expires_ms)
    return settings.certificate


def seal_payloads(messages: Mapping[int, bytes], recipient_keys: Mapping[int, bytes], *,
                  certificate: bytes, identity: Ed25519KeyPair) -> dict[int, bytes]:
    """One sealed envelope per recipient device, from its ratchet message and identity key."""
    return {device_id: seal(message=message, certificate=certificate, sender_identity=identity,
                            recipient_identity_key=recipient_keys[device_id],
                            random=SystemRandom())
            for device_id, message in messages.items()}


async def send_sealed(addresses: list[tuple[str, int]], ca: Path | None, recipient_user_id: str,
                      payloads: Mapping[int, bytes], *, token: bytes | None,
                      client_message_id: bytes, urgent: bool = False) -> None:
    """SEALED_SEND on a fresh connection that never authenticates (the first address that
    answers), closed once the relay accepted.

    Raises:
        RelayError: the relay refused (DELIVERY_TOKEN_REFUSED, MISMATCHED_DEVICES, ...).
        RelayUnreachable, HandshakeFailed: no address opened.
    """
    failure: RelayUnreachable | HandshakeFailed | None = None
    for attempt in range(1, SEALED_SEND_ATTEMPTS + 1):
        for host, port in addresses:
            try:
                async with connect_anonymous(host, port, ca=ca) as anonymous:
                    await anonymous.sealed_send(recipient_user_id, payloads,
                                                client_message_id=client_message_id,
                                                delivery_token=token, urgent=urgent)
                    return
            except BaseException as error:  # re-raised unless it never reached the relay
                refusal = _never_opened(error)
                if refusal is not None:
                    failure = refusal
                    continue
                if attempt < SEALED_SEND_ATTEMPTS and _closed_before_answer(error):
                    break  # the answer was lost: the same send again, stored once
                sole = _sole(error)
                if isinstance(sole, RelayError):
                    raise sole from None  # the relay's answer, out of the connection's nurseries
                raise
    if failure is None:
        raise ValueError("no relay address to send to")
    raise failure


def _sole(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _closed_before_answer(error: BaseException) -> bool:
    error = _sole(error)
    return isinstance(error, ConnectionClosed) and not isinstance(
        error, RelayUnreachable | HandshakeFailed)


def _never_opened(error: BaseException) -> RelayUnreachable | HandshakeFailed | None:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, RelayUnreachable | HandshakeFailed) else None
