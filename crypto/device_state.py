"""A device's saved end-to-end state: what it holds, and its versioned msgpack encoding.

The encoding is a msgpack map with a `version` key. `decode_device_state` upgrades older
versions step by step through `_MIGRATIONS` (version n -> n+1), so a profile saved by an older
client still loads; a newer version than this code knows is refused, never guessed at, and so
is a version that cannot be upgraded (`_NOT_MIGRATABLE` says why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from crypto.address import DeviceAddress
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

DEVICE_STATE_VERSION = 2
"""2 since a device knows its own address, sessions know both addresses, and prekeys rotate
with a replay memory per pair (issue 13)."""

_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""Version n -> a function turning a version-n map into a version n+1 map."""
_NOT_MIGRATABLE = {
    1: "device state version 1 predates account identities: this device must be enrolled "
       "again (its sessions have no addresses and its messages the old format)",
}
"""Versions that no migration can bring forward, with the reason to show."""


@dataclass(frozen=True, kw_only=True)
class IdentityRecord:
    """The identity key the client trusts for a peer device (`DeviceCrypto.trust_identity`)."""

    identity_key: bytes
    """32-byte Ed25519 key."""


@dataclass(kw_only=True, repr=False)
class DeviceState:
    """Everything `DeviceCrypto` keeps. Holds private keys; never log it."""

    address: DeviceAddress
    """This device's own (user id, device id), given by enrolment or linking."""
    identity_private_key: bytes
    prekeys: LocalPrekeys
    identities: dict[DeviceAddress, IdentityRecord] = field(default_factory=dict)
    sessions: dict[DeviceAddress, list[Session]] = field(default_factory=dict)
    """Per peer device: the current session first, then archived ones, newest first."""


def encode_device_state(state: DeviceState) -> bytes:
    """Serialise `state` (current version)."""
    snapshot = {
        "version": DEVICE_STATE_VERSION,
        "address": [state.address.user_id, state.address.device_id],
        "identity_private_key": state.identity_private_key,
        "prekeys": state.prekeys.to_state(),
        "identities": [[address.user_id, address.device_id, record.identity_key]
                       for address, record in state.identities.items()],
        "sessions": [[address.user_id, address.device_id,
                      [session.to_state() for session in sessions]]
                     for address, sessions in state.sessions.items()],
    }
    packed: bytes = msgpack.packb(snapshot, use_bin_type=True)
    return packed


def decode_device_state(data: bytes) -> DeviceState:
    """Parse `encode_device_state` output of this version, or of an older one that migrates.

    Raises:
        ValueError: the data is corrupt, or its version is unknown to this code or cannot be
            upgraded (version 1: the device must be enrolled again).
    """
    try:
        snapshot = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise ValueError("device state is not valid msgpack") from error
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("version"), int):
        raise ValueError("device state has no version")
    version = snapshot["version"]
    if version in _NOT_MIGRATABLE:
        raise ValueError(_NOT_MIGRATABLE[version])
    if not 1 <= version <= DEVICE_STATE_VERSION:
        raise ValueError(f"device state version {version} is not one this code reads "
                         f"(up to {DEVICE_STATE_VERSION})")
    while version < DEVICE_STATE_VERSION:
        snapshot = _MIGRATIONS[version](snapshot)
        version += 1
    try:
        user_id, device_id = snapshot["address"]
        return DeviceState(
            address=DeviceAddress(str(user_id), int(device_id)),
            identity_private_key=bytes(snapshot["identity_private_key"]),
            prekeys=LocalPrekeys.from_state(snapshot["prekeys"]),
            identities={
                DeviceAddress(str(peer_user_id), int(peer_device_id)):
                    IdentityRecord(identity_key=bytes(key))
                for peer_user_id, peer_device_id, key in snapshot["identities"]
            },
            sessions={
                DeviceAddress(str(peer_user_id), int(peer_device_id)):
                    [Session.from_state(session) for session in sessions]
                for peer_user_id, peer_device_id, sessions in snapshot["sessions"]
            },
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"device state is corrupt ({type(error).__name__})") from error
