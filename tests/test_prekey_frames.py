"""Prekey frames: limits, nested values and every way to get them wrong, byte by byte.

Round trips of one sample per type run in test_frames.py (PREKEY_SAMPLE_FRAMES joins its
catalogue); here are the limits specific to prekeys.
"""

from __future__ import annotations

from typing import Any

import pytest

from crypto.prekey_format import KEM_PUBLIC_KEY_SIZE, MAX_KEY_ID
from tests.prekey_samples import KEM, ONE_TIME, SIGNED
from tests.test_frames import assert_rejected_every_way, body_of, decode_every_way, raw_frame
from wire.codec import encode_frame
from wire.frames import (
    MAX_DEVICES_PER_USER,
    MAX_FRAME_SIZE,
    ErrorCode,
    FrameType,
)
from wire.prekey_frames import (
    MAX_PREKEYS_PER_UPLOAD,
    Bundle,
    DeviceBundle,
    FetchBundle,
    KemPrekey,
    OneTimePrekey,
    SignedPrekey,
    UploadPrekeys,
)


def _one_time(count: int) -> tuple[OneTimePrekey, ...]:
    return tuple(OneTimePrekey(key_id=key_id, public_key=bytes(32)) for key_id in range(count))


def _kem(count: int) -> tuple[KemPrekey, ...]:
    return tuple(KemPrekey(key_id=key_id, public_key=bytes(KEM_PUBLIC_KEY_SIZE),
                           signature=bytes(64)) for key_id in range(count))


def test_the_largest_upload_fits_in_a_frame_and_survives_byte_by_byte() -> None:
    frame = UploadPrekeys(signed_prekey=SIGNED, kem_last_resort_prekey=KEM,
                          one_time_prekeys=_one_time(MAX_PREKEYS_PER_UPLOAD),
                          kem_one_time_prekeys=_kem(MAX_PREKEYS_PER_UPLOAD))
    encoded = encode_frame(frame)
    assert len(encoded) < MAX_FRAME_SIZE
    assert decode_every_way(encoded) == [frame]


@pytest.mark.parametrize("field", ["one_time_prekeys", "kem_one_time_prekeys"])
def test_one_key_over_the_upload_limit_is_refused_by_name(field: str) -> None:
    keys: Any = (_one_time if field == "one_time_prekeys" else _kem)(MAX_PREKEYS_PER_UPLOAD + 1)
    body = {field: [body_of_nested(key) for key in keys]}
    reason = assert_rejected_every_way(raw_frame(FrameType.UPLOAD_PREKEYS, body),
                                       ErrorCode.MALFORMED_FRAME)
    assert f"UploadPrekeys.{field}" in reason
    assert f"at most {MAX_PREKEYS_PER_UPLOAD}" in reason


def body_of_nested(key: OneTimePrekey | KemPrekey | SignedPrekey) -> dict[str, object]:
    return {name: getattr(key, name) for name in type(key).__dataclass_fields__}


@pytest.mark.parametrize(("field", "value", "named"), [
    ("signed_prekey", {"key_id": 1, "public_key": bytes(31), "signature": bytes(64)},
     "SignedPrekey.public_key"),
    ("signed_prekey", {"key_id": 1, "public_key": bytes(32), "signature": bytes(63)},
     "SignedPrekey.signature"),
    ("signed_prekey", {"key_id": 1, "public_key": bytes(32)}, "SignedPrekey.signature"),
    ("signed_prekey", {"key_id": MAX_KEY_ID + 1, "public_key": bytes(32),
                       "signature": bytes(64)}, "SignedPrekey.key_id"),
    ("signed_prekey", {"key_id": True, "public_key": bytes(32), "signature": bytes(64)},
     "SignedPrekey.key_id"),
    ("signed_prekey", [1, bytes(32), bytes(64)], "UploadPrekeys.signed_prekey"),
    ("kem_last_resort_prekey", {"key_id": 1, "public_key": bytes(32), "signature": bytes(64)},
     "KemPrekey.public_key"),
    ("one_time_prekeys", [{"key_id": 1, "public_key": bytes(KEM_PUBLIC_KEY_SIZE)}],
     "OneTimePrekey.public_key"),
    ("one_time_prekeys", [{"key_id": 1, "public_key": bytes(32)}] * 2,
     "UploadPrekeys.one_time_prekeys must be keys with distinct key ids"),
    ("one_time_prekeys", {"key_id": 1}, "UploadPrekeys.one_time_prekeys"),
])
def test_bad_keys_are_refused_by_name(field: str, value: object, named: str) -> None:
    reason = assert_rejected_every_way(raw_frame(FrameType.UPLOAD_PREKEYS, {field: value}),
                                       ErrorCode.MALFORMED_FRAME)
    assert named in reason


def test_an_upload_of_nothing_is_refused() -> None:
    reason = assert_rejected_every_way(raw_frame(FrameType.UPLOAD_PREKEYS, {}),
                                       ErrorCode.MALFORMED_FRAME)
    assert "present when no other key is uploaded" in reason


def test_absent_and_nil_optional_fields_mean_the_same() -> None:
    only_one_time = UploadPrekeys(one_time_prekeys=(ONE_TIME,))
    absent = raw_frame(FrameType.UPLOAD_PREKEYS,
                       {"one_time_prekeys": [body_of_nested(ONE_TIME)]})
    assert decode_every_way(absent) == [only_one_time]
    assert decode_every_way(encode_frame(only_one_time)) == [only_one_time]
    assert body_of(only_one_time)["signed_prekey"] is None


def test_fetch_bundle_device_ids_are_bounded() -> None:
    too_many = list(range(1, MAX_DEVICES_PER_USER + 2))
    reason = assert_rejected_every_way(
        raw_frame(FrameType.FETCH_BUNDLE, {"user_id": "u", "device_ids": too_many}),
        ErrorCode.MALFORMED_FRAME)
    assert "FetchBundle.device_ids" in reason
    assert decode_every_way(encode_frame(FetchBundle(user_id="u"))) == [FetchBundle(user_id="u")]


def test_a_bundle_lists_each_device_once_and_within_the_cap() -> None:
    entry = DeviceBundle(device_id=1, identity_key=bytes(32))
    with pytest.raises(Exception, match="one entry per device"):
        Bundle(user_id="u", bundles=(entry, entry))
    entries = tuple(DeviceBundle(device_id=device_id, identity_key=bytes(32))
                    for device_id in range(1, MAX_DEVICES_PER_USER + 2))
    with pytest.raises(Exception, match=f"at most {MAX_DEVICES_PER_USER}"):
        Bundle(user_id="u", bundles=entries)


def test_a_bundle_cannot_call_a_missing_kem_key_one_time() -> None:
    reason = assert_rejected_every_way(
        raw_frame(FrameType.BUNDLE, {"user_id": "u", "bundles": [
            {"device_id": 1, "identity_key": bytes(32), "kem_one_time": True}]}),
        ErrorCode.MALFORMED_FRAME)
    assert "DeviceBundle.kem_one_time" in reason


def test_a_full_bundle_fits_in_a_frame() -> None:
    entries = tuple(DeviceBundle(device_id=device_id, identity_key=bytes(32), signed_prekey=SIGNED,
                                 one_time_prekey=ONE_TIME, kem_prekey=KEM, kem_one_time=True)
                    for device_id in range(1, MAX_DEVICES_PER_USER + 1))
    frame = Bundle(user_id="u" * 64, bundles=entries)
    assert decode_every_way(encode_frame(frame)) == [frame]
