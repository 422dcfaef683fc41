"""An account's device list, signed with the account key: which devices speak for a user.

A user's account has one Ed25519 identity key (the *account key*). The first device creates
it at SMS enrolment; a linked device receives it from the device that approved it. The list of
the account's devices, with each device's own identity key, is signed with that key, so that
neither the relay nor whoever holds an SMS code can add a device unnoticed: contacts pin the
account key and encrypt only to devices whose identity key is on a list it signed. The relay
stores the latest list and serves it; it cannot forge one, and cannot replay an older one to a
client that has seen a newer one, because the version only increases (`check_successor`).

Encoding (all integers big-endian; the signature covers everything before it)::

    label                b"cryptopass/1 device list\\x00"   (25 bytes)
    u64 version          1 .. 2^63-1, strictly increasing for one account key
    account_key          32 bytes, Ed25519
    u8  count            1 .. 16
    count x identity_key 32 bytes each, Ed25519, strictly ascending (bytewise)
    signature            64 bytes, Ed25519 by account_key over all of the above

The list names devices by their identity keys, not by the relay's ids: a device signs the
first list of a new account in its enrolment request, before the relay has given it a user id
or a device id, and the relay maps ids to keys (a client addresses device N only if the key
the relay gives for N is listed). The account key itself is what binds the list to one
account: contacts pin (user id, account key), and the safety number covers both.

Pure: no I/O, no clock. Used by the client (to sign and to check) and by the relay (to check
before storing).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from nacl.bindings import crypto_core_ed25519_is_valid_point

from crypto.primitives import (
    ED25519_PUBLIC_KEY_SIZE,
    CryptoError,
    Ed25519KeyPair,
    SignatureError,
    ed25519_sign,
    ed25519_verify,
)

__all__ = [
    "DEVICE_LIST_LABEL",
    "MAX_DEVICE_LIST_SIZE",
    "MAX_LISTED_DEVICES",
    "DeviceListError",
    "SignedDeviceList",
    "StaleDeviceListError",
    "check_successor",
    "decode_device_list",
    "sign_device_list",
]

DEVICE_LIST_LABEL = b"cryptopass/1 device list\x00"
MAX_LISTED_DEVICES = 16
"""Devices one account holds at most (the relay's TOO_MANY_DEVICES, PROTOCOL.md)."""
MAX_VERSION = 2**63 - 1
_SIGNATURE_SIZE = 64
MAX_DEVICE_LIST_SIZE = (len(DEVICE_LIST_LABEL) + 8
                        + ED25519_PUBLIC_KEY_SIZE + 1 + MAX_LISTED_DEVICES * ED25519_PUBLIC_KEY_SIZE
                        + _SIGNATURE_SIZE)
"""Bytes of the largest valid encoding (642): a bound for the frames that carry one."""


class DeviceListError(CryptoError):
    """A device list is malformed, badly signed, or not the one expected."""


class StaleDeviceListError(DeviceListError):
    """A device list is older than one already seen for the same account key: a replay."""


@dataclass(frozen=True, kw_only=True)
class SignedDeviceList:
    """A checked device list (only `decode_device_list` and `sign_device_list` make one)."""

    version: int
    account_key: bytes
    devices: frozenset[bytes]
    """The listed devices' 32-byte Ed25519 identity keys."""
    encoded: bytes
    """The exact signed bytes, signature included: what the relay stores and serves."""

    def with_devices(self, account: Ed25519KeyPair,
                     devices: Iterable[bytes]) -> SignedDeviceList:
        """The next list of this account: ``devices``, version + 1, signed by ``account``."""
        return sign_device_list(account, version=self.version + 1, devices=devices)


def _body(version: int, account_key: bytes, devices: frozenset[bytes]) -> bytes:
    _check_contents(version, account_key, devices)
    entries = b"".join(sorted(devices))
    return (DEVICE_LIST_LABEL + struct.pack(">Q", version) + account_key + bytes([len(devices)])
            + entries)


def _check_contents(version: int, account_key: bytes, devices: frozenset[bytes]) -> None:
    if not 1 <= version <= MAX_VERSION:
        raise DeviceListError("a device list version is 1 .. 2^63-1")
    if len(account_key) != ED25519_PUBLIC_KEY_SIZE or not crypto_core_ed25519_is_valid_point(
            account_key):
        raise DeviceListError("the account key is not a valid Ed25519 public key")
    if not 1 <= len(devices) <= MAX_LISTED_DEVICES:
        raise DeviceListError(f"a device list holds 1..{MAX_LISTED_DEVICES} devices")
    for key in devices:
        if len(key) != ED25519_PUBLIC_KEY_SIZE or not crypto_core_ed25519_is_valid_point(key):
            raise DeviceListError("a listed identity key is not a valid Ed25519 public key")


def sign_device_list(account: Ed25519KeyPair, *, version: int,
                     devices: Iterable[bytes]) -> SignedDeviceList:
    """Sign a device list (the listed devices' identity keys) with the account key.

    Raises:
        DeviceListError: a field is out of its limits (see the module docstring).
    """
    keys = frozenset(devices)
    body = _body(version, account.public_key, keys)
    encoded = body + ed25519_sign(account.private_key, body)
    return SignedDeviceList(version=version, account_key=account.public_key,
                            devices=keys, encoded=encoded)


def decode_device_list(data: bytes, *, account_key: bytes | None = None) -> SignedDeviceList:
    """Parse and check a signed device list.

    Args:
        account_key: if given, the list must be signed by exactly this key (the pinned one).

    Raises:
        DeviceListError: malformed, a bad signature, or another account key.
    """
    if len(data) > MAX_DEVICE_LIST_SIZE:
        raise DeviceListError(f"a device list is at most {MAX_DEVICE_LIST_SIZE} bytes")
    try:
        return _decode(data, account_key)
    except (struct.error, IndexError) as error:
        raise DeviceListError("the device list is truncated or malformed") from error


def _decode(data: bytes, account_key: bytes | None) -> SignedDeviceList:
    offset = len(DEVICE_LIST_LABEL)
    if data[:offset] != DEVICE_LIST_LABEL:
        raise DeviceListError("not a device list (wrong label)")
    (version,) = struct.unpack_from(">Q", data, offset)
    offset += 8
    listed_key = data[offset:offset + ED25519_PUBLIC_KEY_SIZE]
    offset += ED25519_PUBLIC_KEY_SIZE
    count = data[offset]
    offset += 1
    keys = [data[offset + index * ED25519_PUBLIC_KEY_SIZE:
                 offset + (index + 1) * ED25519_PUBLIC_KEY_SIZE] for index in range(count)]
    offset += count * ED25519_PUBLIC_KEY_SIZE
    if len(data) != offset + _SIGNATURE_SIZE:
        raise DeviceListError("the device list is truncated or has trailing bytes")
    if any(earlier >= later for earlier, later in itertools.pairwise(keys)):
        raise DeviceListError("listed identity keys must be strictly ascending")
    devices = frozenset(keys)
    _check_contents(version, listed_key, devices)
    if account_key is not None and listed_key != account_key:
        raise DeviceListError("the device list is signed by another account key")
    try:
        ed25519_verify(listed_key, data[:offset], data[offset:])
    except SignatureError as error:
        raise DeviceListError("the device list's signature does not verify") from error
    return SignedDeviceList(version=version, account_key=listed_key,
                            devices=devices, encoded=bytes(data))


def check_successor(seen: SignedDeviceList | None, offered: SignedDeviceList) -> bool:
    """Decide whether ``offered`` may replace ``seen`` (the newest list seen for the account).

    Returns True if ``offered`` is newer, False if it is the very list already seen.

    Raises:
        StaleDeviceListError: same account key, lower version, or the same version with other
            contents (a replay or a fork): refuse it and keep ``seen``.
    """
    if seen is None or seen.account_key != offered.account_key:
        return True
    if offered.version > seen.version:
        return True
    if offered.version == seen.version and offered.encoded == seen.encoded:
        return False
    raise StaleDeviceListError(
        f"device list version {offered.version} is not newer than version {seen.version}")
