"""A device's saved end-to-end state: what it holds, and its versioned msgpack encoding.

The encoding is a msgpack map with a `version` key. `decode_device_state` upgrades older
versions step by step through `_MIGRATIONS` (version n -> n+1), so a profile saved by an older
client still loads; a newer version than this code knows is refused, never guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from crypto.prekeys import LocalPrekeys
from crypto.session import Session

__all__ = [
    "DEVICE_STATE_VERSION",
    "DeviceAddress",
    "DeviceState",
    "IdentityRecord",
    "decode_device_state",
    "encode_device_state",
]

DEVICE_STATE_VERSION = 1

_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""Version n -> a function turning a version-n map into a version n+1 map."""


@dataclass(frozen=True, order=True)
class DeviceAddress:
    """A device as the relay names it."""

    user_id: str
    device_id: int

    def __str__(self) -> str:
        return f"{self.user_id}/{self.device_id}"


@dataclass(frozen=True, kw_only=True)
class IdentityRecord:
    """The identity key on record for a peer device."""

    identity_key: bytes
    """32-byte Ed25519 key."""
    trusted: bool
    """False after the key changed, until the user accepts it (`trust_identity`)."""


@dataclass(kw_only=True, repr=False)
class DeviceState:
    """Everything `DeviceCrypto` keeps. Holds private keys; never log it."""

    identity_private_key: bytes
    prekeys: LocalPrekeys
    identities: dict[DeviceAddress, IdentityRecord] = field(default_factory=dict)
    sessions: dict[DeviceAddress, list[Session]] = field(default_factory=dict)
    """Per peer device: the current session first, then archived ones, newest first."""
    remembered_base_keys: list[bytes] = field(default_factory=list)
    """Recent base keys of initial messages that consumed no one-time prekey (replay guard)."""


def encode_device_state(state: DeviceState) -> bytes:
    """Serialise `state` (current version)."""
    snapshot = {
        "version": DEVICE_STATE_VERSION,
        "identity_private_key": state.identity_private_key,
        "prekeys": state.prekeys.to_state(),
        "identities": [[address.user_id, address.device_id, record.identity_key, record.trusted]
                       for address, record in state.identities.items()],
        "sessions": [[address.user_id, address.device_id,
                      [session.to_state() for session in sessions]]
                     for address, sessions in state.sessions.items()],
        "remembered_base_keys": state.remembered_base_keys,
    }
    packed: bytes = msgpack.packb(snapshot, use_bin_type=True)
    return packed


def decode_device_state(data: bytes) -> DeviceState:
    """Parse `encode_device_state` output of this or any older version.

    Raises:
        ValueError: the data is corrupt, or its version is unknown to this code.
    """
    try:
        snapshot = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise ValueError("device state is not valid msgpack") from error
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("version"), int):
        raise ValueError("device state has no version")
    version = snapshot["version"]
    if not 1 <= version <= DEVICE_STATE_VERSION:
        raise ValueError(f"device state version {version} is not one this code reads "
                         f"(1..{DEVICE_STATE_VERSION})")
    while version < DEVICE_STATE_VERSION:
        snapshot = _MIGRATIONS[version](snapshot)
        version += 1
    try:
        return DeviceState(
            identity_private_key=bytes(snapshot["identity_private_key"]),
            prekeys=LocalPrekeys.from_state(snapshot["prekeys"]),
            identities={
                DeviceAddress(str(user_id), int(device_id)):
                    IdentityRecord(identity_key=bytes(key), trusted=bool(trusted))
                for user_id, device_id, key, trusted in snapshot["identities"]
            },
            sessions={
                DeviceAddress(str(user_id), int(device_id)):
                    [Session.from_state(session) for session in sessions]
                for user_id, device_id, sessions in snapshot["sessions"]
            },
            remembered_base_keys=[bytes(key) for key in snapshot["remembered_base_keys"]],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"device state is corrupt ({type(error).__name__})") from error
