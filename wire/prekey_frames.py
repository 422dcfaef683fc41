"""The prekey service's frames: upload, bundle fetch, counts, device list, and the low-pool push.

Sans-IO like :mod:`wire.frames`, whose field checks (:mod:`wire.checks`) and numbering
(:mod:`wire.catalogue`) these frames share; :mod:`wire.codec` encodes and decodes them like every
other frame. Key sizes and the signed message are fixed by :mod:`crypto.prekey_format`.
PROTOCOL.md "Prekeys" is the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crypto.prekey_format import KEM_PUBLIC_KEY_SIZE, MAX_KEY_ID, X25519_PUBLIC_KEY_SIZE
from wire.catalogue import ErrorCode, FrameType
from wire.checks import check_bytes, check_int, check_int_tuple, check_str, field_error
from wire.limits import (
    IDENTITY_KEY_SIZE,
    MAX_DEVICE_ID,
    MAX_DEVICE_LIST_SIZE,
    MAX_DEVICES_PER_USER,
    MAX_TIMESTAMP_MS,
    MAX_USER_ID_LENGTH,
    SIGNATURE_SIZE,
)

__all__ = [
    "MAX_PREKEYS_PER_UPLOAD",
    "MAX_REPORTED_PREKEY_COUNT",
    "PREKEY_FRAME_CLASSES",
    "Bundle",
    "DeviceBundle",
    "DeviceInfo",
    "DeviceList",
    "FetchBundle",
    "GetPrekeyCounts",
    "KemPrekey",
    "ListDevices",
    "OneTimePrekey",
    "PrekeyCounts",
    "PrekeyFrame",
    "PrekeyRequest",
    "PrekeysLow",
    "PrekeysUploaded",
    "SignedPrekey",
    "UploadPrekeys",
]

MAX_PREKEYS_PER_UPLOAD = 100  # keys of each one-time kind per UPLOAD_PREKEYS: ~170 KB of KEM keys
MAX_REPORTED_PREKEY_COUNT = 2**31 - 1  # bound of a count field; the relay caps its pools far lower


def _check_key(owner: object, key_size: int, *, signed: bool) -> None:
    check_int(owner, "key_id", 0, MAX_KEY_ID)
    check_bytes(owner, "public_key", key_size, key_size, ErrorCode.MALFORMED_FRAME)
    if signed:
        check_bytes(owner, "signature", SIGNATURE_SIZE, SIGNATURE_SIZE, ErrorCode.MALFORMED_FRAME)


def _check_optional(owner: object, name: str, kind: type) -> None:
    value = getattr(owner, name)
    if value is not None and type(value) is not kind:
        raise field_error(owner, name, f"a {kind.__name__} or absent")


def _check_keys(owner: object, name: str, kind: type) -> None:
    """A tuple of at most MAX_PREKEYS_PER_UPLOAD keys of one kind, key ids distinct."""
    values = getattr(owner, name)
    if (type(values) is not tuple or len(values) > MAX_PREKEYS_PER_UPLOAD
            or any(type(value) is not kind for value in values)):
        raise field_error(owner, name, f"at most {MAX_PREKEYS_PER_UPLOAD} {kind.__name__} values")
    if len({value.key_id for value in values}) != len(values):
        raise field_error(owner, name, "keys with distinct key ids")


# --- Nested values (not frames) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class SignedPrekey:
    """The medium-term X25519 prekey, signed by the device identity key."""

    key_id: int  #: chosen by the device, 0 .. 2^32-1
    public_key: bytes  #: 32-byte X25519 public key
    signature: bytes  #: Ed25519 signature over crypto.prekey_format.signed_message(SIGNED, ...)

    def __post_init__(self) -> None:
        _check_key(self, X25519_PUBLIC_KEY_SIZE, signed=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class OneTimePrekey:
    """A one-time X25519 prekey (unsigned, as in Signal's PQXDH)."""

    key_id: int  #: chosen by the device, 0 .. 2^32-1
    public_key: bytes  #: 32-byte X25519 public key

    def __post_init__(self) -> None:
        _check_key(self, X25519_PUBLIC_KEY_SIZE, signed=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class KemPrekey:
    """An ML-KEM-1024 prekey (last-resort or one-time), signed by the device identity key."""

    key_id: int  #: chosen by the device, 0 .. 2^32-1
    public_key: bytes  #: 1568-byte ML-KEM-1024 encapsulation key
    signature: bytes  #: Ed25519 signature over crypto.prekey_format.signed_message(KEM_..., ...)

    def __post_init__(self) -> None:
        _check_key(self, KEM_PUBLIC_KEY_SIZE, signed=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceBundle:
    """One device's public keys, as handed to a peer that starts a session with it."""

    device_id: int  #: the device these keys belong to
    identity_key: bytes  #: its Ed25519 identity key (verify every signature below with it)
    signed_prekey: SignedPrekey | None = None  #: absent if the device never uploaded one
    one_time_prekey: OneTimePrekey | None = None  #: claimed for this fetch only; absent if none
    kem_prekey: KemPrekey | None = None  #: a one-time KEM prekey, else the last-resort one
    kem_one_time: bool = False  #: true if kem_prekey is a one-time key (claimed for this fetch)

    def __post_init__(self) -> None:
        check_int(self, "device_id", 1, MAX_DEVICE_ID)
        check_bytes(self, "identity_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE,
                     ErrorCode.MALFORMED_FRAME)
        _check_optional(self, "signed_prekey", SignedPrekey)
        _check_optional(self, "one_time_prekey", OneTimePrekey)
        _check_optional(self, "kem_prekey", KemPrekey)
        if type(self.kem_one_time) is not bool:
            raise field_error(self, "kem_one_time", "a bool")
        if self.kem_one_time and self.kem_prekey is None:
            raise field_error(self, "kem_one_time", "false when kem_prekey is absent")


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceInfo:
    """One current device in a DEVICE_LIST."""

    device_id: int  #: the device id (a SEND addresses it)
    registered_at: int  #: when it enrolled, milliseconds since the Unix epoch
    identity_key: bytes  #: its Ed25519 identity key: address it only if the signed list has it

    def __post_init__(self) -> None:
        check_int(self, "device_id", 1, MAX_DEVICE_ID)
        check_int(self, "registered_at", 0, MAX_TIMESTAMP_MS)
        check_bytes(self, "identity_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE,
                    ErrorCode.MALFORMED_FRAME)


# --- Requests (client -> relay) -------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class UploadPrekeys:
    """Publish this device's prekeys: replace the signed ones, add to the one-time pools."""

    frame_type: ClassVar[FrameType] = FrameType.UPLOAD_PREKEYS
    signed_prekey: SignedPrekey | None = None  #: replaces the current one if present
    kem_last_resort_prekey: KemPrekey | None = None  #: replaces the current one if present
    one_time_prekeys: tuple[OneTimePrekey, ...] = ()  #: 0 to MAX_PREKEYS_PER_UPLOAD, added
    kem_one_time_prekeys: tuple[KemPrekey, ...] = ()  #: 0 to MAX_PREKEYS_PER_UPLOAD, added

    def __post_init__(self) -> None:
        _check_optional(self, "signed_prekey", SignedPrekey)
        _check_optional(self, "kem_last_resort_prekey", KemPrekey)
        _check_keys(self, "one_time_prekeys", OneTimePrekey)
        _check_keys(self, "kem_one_time_prekeys", KemPrekey)
        if (self.signed_prekey is None and self.kem_last_resort_prekey is None
                and not self.one_time_prekeys and not self.kem_one_time_prekeys):
            raise field_error(self, "signed_prekey", "present when no other key is uploaded")


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchBundle:
    """Claim a prekey bundle for each (or each listed) current device of a user."""

    frame_type: ClassVar[FrameType] = FrameType.FETCH_BUNDLE
    user_id: str  #: the user to start sessions with (one's own, for one's other devices)
    device_ids: tuple[int, ...] = ()  #: only these devices; empty means every current device

    def __post_init__(self) -> None:
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        check_int_tuple(self, "device_ids", min_items=0, max_items=MAX_DEVICES_PER_USER,
                         minimum=1, maximum=MAX_DEVICE_ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class GetPrekeyCounts:
    """Ask how many prekeys this device has left on the relay."""

    frame_type: ClassVar[FrameType] = FrameType.GET_PREKEY_COUNTS


@dataclass(frozen=True, kw_only=True, slots=True)
class ListDevices:
    """List the current devices of a user (by default one's own)."""

    frame_type: ClassVar[FrameType] = FrameType.LIST_DEVICES
    user_id: str | None = None  #: the user, or absent for the caller's own user

    def __post_init__(self) -> None:
        if self.user_id is not None:
            check_str(self, "user_id", MAX_USER_ID_LENGTH)


# --- Responses (relay -> client) ------------------------------------------------------------------
def _check_counts(owner: object) -> None:
    check_int(owner, "one_time", 0, MAX_REPORTED_PREKEY_COUNT)
    check_int(owner, "kem_one_time", 0, MAX_REPORTED_PREKEY_COUNT)


def _check_optional_key_id(owner: object, name: str) -> None:
    if getattr(owner, name) is not None:
        check_int(owner, name, 0, MAX_KEY_ID)


@dataclass(frozen=True, kw_only=True, slots=True)
class PrekeyCounts:
    """What the relay holds for this device (answer to GET_PREKEY_COUNTS)."""

    frame_type: ClassVar[FrameType] = FrameType.PREKEY_COUNTS
    one_time: int  #: one-time X25519 prekeys left
    kem_one_time: int  #: one-time ML-KEM prekeys left
    signed_prekey_id: int | None = None  #: key id of the signed prekey, absent if none
    kem_last_resort_prekey_id: int | None = None  #: key id of the last-resort KEM prekey

    def __post_init__(self) -> None:
        _check_counts(self)
        _check_optional_key_id(self, "signed_prekey_id")
        _check_optional_key_id(self, "kem_last_resort_prekey_id")


@dataclass(frozen=True, kw_only=True, slots=True)
class PrekeysUploaded:
    """The upload is stored; the counts after it, with the same fields as PREKEY_COUNTS."""

    frame_type: ClassVar[FrameType] = FrameType.PREKEYS_UPLOADED
    one_time: int  #: one-time X25519 prekeys now held
    kem_one_time: int  #: one-time ML-KEM prekeys now held
    signed_prekey_id: int | None = None  #: key id of the signed prekey now held
    kem_last_resort_prekey_id: int | None = None  #: key id of the last-resort KEM prekey now held

    def __post_init__(self) -> None:
        _check_counts(self)
        _check_optional_key_id(self, "signed_prekey_id")
        _check_optional_key_id(self, "kem_last_resort_prekey_id")


def _check_values(owner: object, name: str, kind: type, maximum: int) -> None:
    values = getattr(owner, name)
    if (type(values) is not tuple or len(values) > maximum
            or any(type(value) is not kind for value in values)):
        raise field_error(owner, name, f"at most {maximum} {kind.__name__} values")
    if len({value.device_id for value in values}) != len(values):
        raise field_error(owner, name, "one entry per device")


@dataclass(frozen=True, kw_only=True, slots=True)
class Bundle:
    """The answer to FETCH_BUNDLE: one entry per current device asked for, by device id."""

    frame_type: ClassVar[FrameType] = FrameType.BUNDLE
    user_id: str  #: the user the bundles belong to
    bundles: tuple[DeviceBundle, ...]  #: 0 to MAX_DEVICES_PER_USER entries

    def __post_init__(self) -> None:
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        _check_values(self, "bundles", DeviceBundle, MAX_DEVICES_PER_USER)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceList:
    """The answer to LIST_DEVICES: the user's current devices, by device id, with the account
    key and the signed device list that vouch for them."""

    frame_type: ClassVar[FrameType] = FrameType.DEVICE_LIST
    user_id: str  #: the user listed
    devices: tuple[DeviceInfo, ...]  #: 0 to MAX_DEVICES_PER_USER entries
    account_key: bytes | None = None  #: the account's Ed25519 key; absent if it has none
    signed_list: bytes | None = None  #: the latest crypto.device_list encoding it signed

    def __post_init__(self) -> None:
        check_str(self, "user_id", MAX_USER_ID_LENGTH)
        _check_values(self, "devices", DeviceInfo, MAX_DEVICES_PER_USER)
        if self.account_key is not None:
            check_bytes(self, "account_key", IDENTITY_KEY_SIZE, IDENTITY_KEY_SIZE,
                        ErrorCode.MALFORMED_FRAME)
        if self.signed_list is not None:
            check_bytes(self, "signed_list", 1, MAX_DEVICE_LIST_SIZE, ErrorCode.MALFORMED_FRAME)


# --- Push (relay -> client, on the push stream) ---------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class PrekeysLow:
    """A one-time pool of this device fell below the relay's threshold: upload more."""

    frame_type: ClassVar[FrameType] = FrameType.PREKEYS_LOW
    one_time: int  #: one-time X25519 prekeys left
    kem_one_time: int  #: one-time ML-KEM prekeys left

    def __post_init__(self) -> None:
        _check_counts(self)


PrekeyRequest = UploadPrekeys | FetchBundle | GetPrekeyCounts | ListDevices
"""The prekey service's requests, which an authenticated device sends."""

PrekeyFrame = (
    UploadPrekeys
    | FetchBundle
    | GetPrekeyCounts
    | ListDevices
    | PrekeysUploaded
    | Bundle
    | PrekeyCounts
    | DeviceList
    | PrekeysLow
)

PREKEY_FRAME_CLASSES: tuple[type[PrekeyFrame], ...] = (
    UploadPrekeys, FetchBundle, GetPrekeyCounts, ListDevices,
    PrekeysUploaded, Bundle, PrekeyCounts, DeviceList, PrekeysLow,
)
"""Every frame class of this module, for the codec's catalogue."""
