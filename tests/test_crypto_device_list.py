"""crypto.device_list: one encoding, signed by the account key, and versions that only go up.

The relay stores and serves these lists and cannot be trusted with them: every test is a list it
could forge, truncate, extend, reorder or replay, and the decoder must refuse it. Lists with a
valid signature over bad contents are built here by hand (`signed_body`), so the content checks
are tested, not only the signature.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.device_list import (
    DEVICE_LIST_LABEL,
    MAX_DEVICE_LIST_SIZE,
    MAX_LISTED_DEVICES,
    DeviceListError,
    SignedDeviceList,
    StaleDeviceListError,
    check_successor,
    decode_device_list,
    sign_device_list,
)
from crypto.primitives import Ed25519KeyPair, SeededRandom, ed25519_generate, ed25519_sign

RANDOM = SeededRandom(b"device list tests")
ACCOUNT = ed25519_generate(RANDOM)
OTHER_ACCOUNT = ed25519_generate(RANDOM)
DEVICES = sorted(ed25519_generate(RANDOM).public_key for _ in range(MAX_LISTED_DEVICES + 1))
FIRST, SECOND, THIRD = DEVICES[:3]
# Not points of the prime-order group: y = 2 (no x on the curve) and the order-4 point (0, -1).
NOT_A_POINT = bytes([2]) + bytes(31)
SMALL_ORDER = bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
NON_CANONICAL = (2**255 - 19 + 1).to_bytes(32, "little")  # y = p + 1: the identity, re-encoded.
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


def signed_body(version: int, keys: list[bytes], *, account: Ed25519KeyPair = ACCOUNT,
                account_key: bytes | None = None, count: int | None = None,
                label: bytes = DEVICE_LIST_LABEL) -> bytes:
    """Any body, in the documented layout, with a valid signature by ``account``."""
    body = (label + struct.pack(">Q", version) + (account_key or account.public_key)
            + bytes([len(keys) if count is None else count]) + b"".join(keys))
    return body + ed25519_sign(account.private_key, body)


LIST = sign_device_list(ACCOUNT, version=3, devices=[SECOND, FIRST])


def test_a_signed_list_reads_back_with_the_same_contents() -> None:
    decoded = decode_device_list(LIST.encoded, account_key=ACCOUNT.public_key)
    assert decoded == LIST
    assert decoded.devices == frozenset({FIRST, SECOND})
    assert (decoded.version, decoded.account_key) == (3, ACCOUNT.public_key)
    assert decode_device_list(LIST.encoded) == LIST  # No pinned key yet: first sight.


def test_the_encoding_is_the_documented_layout() -> None:
    """Sorted keys, big-endian version, the signature over everything before it."""
    assert LIST.encoded == signed_body(3, [FIRST, SECOND])
    assert len(LIST.encoded) == len(DEVICE_LIST_LABEL) + 8 + 32 + 1 + 2 * 32 + 64


def test_the_largest_list_is_the_documented_bound() -> None:
    largest = sign_device_list(ACCOUNT, version=2**63 - 1, devices=DEVICES[:MAX_LISTED_DEVICES])
    assert len(largest.encoded) == MAX_DEVICE_LIST_SIZE == 642
    assert decode_device_list(largest.encoded) == largest


def test_the_next_list_has_the_next_version() -> None:
    following = LIST.with_devices(ACCOUNT, [FIRST, SECOND, THIRD])
    assert following.version == 4 and THIRD in following.devices
    assert check_successor(LIST, following) is True


def test_every_truncation_and_every_trailing_byte_is_refused() -> None:
    for size in range(len(LIST.encoded)):
        with pytest.raises(DeviceListError):
            decode_device_list(LIST.encoded[:size])
    for extra in (b"\x00", b"\xff", LIST.encoded[-1:], bytes(64)):
        with pytest.raises(DeviceListError, match="trailing bytes"):
            decode_device_list(LIST.encoded + extra)
    with pytest.raises(DeviceListError, match=f"at most {MAX_DEVICE_LIST_SIZE}"):
        decode_device_list(bytes(MAX_DEVICE_LIST_SIZE + 1))


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, len(LIST.encoded) - 1), bit=st.integers(0, 7))
def test_a_flipped_bit_anywhere_is_refused(index: int, bit: int) -> None:
    changed = bytearray(LIST.encoded)
    changed[index] ^= 1 << bit
    with pytest.raises(DeviceListError):
        decode_device_list(bytes(changed))


def test_a_list_of_another_account_is_refused_where_a_key_is_pinned() -> None:
    other = sign_device_list(OTHER_ACCOUNT, version=3, devices=[FIRST, SECOND])
    with pytest.raises(DeviceListError, match="another account key"):
        decode_device_list(other.encoded, account_key=ACCOUNT.public_key)
    # Claiming the pinned key with another key's signature does not verify either.
    forged = signed_body(3, [FIRST, SECOND], account=OTHER_ACCOUNT,
                         account_key=ACCOUNT.public_key)
    with pytest.raises(DeviceListError, match="signature does not verify"):
        decode_device_list(forged, account_key=ACCOUNT.public_key)


def test_a_malleated_signature_is_refused() -> None:
    """S + L verifies under a lax check; one list must have one encoding (check_successor)."""
    signature = LIST.encoded[-64:]
    s_value = int.from_bytes(signature[32:], "little") + ED25519_ORDER
    malleated = LIST.encoded[:-32] + s_value.to_bytes(32, "little")
    with pytest.raises(DeviceListError, match="signature does not verify"):
        decode_device_list(malleated)


@pytest.mark.parametrize(("keys", "reason"), [
    ([SECOND, FIRST], "strictly ascending"),
    ([FIRST, FIRST], "strictly ascending"),
    ([FIRST, SECOND, SECOND], "strictly ascending"),
    ([FIRST, THIRD, SECOND], "strictly ascending"),
])
def test_unsorted_or_duplicate_keys_are_refused_even_when_signed(keys: list[bytes],
                                                                 reason: str) -> None:
    with pytest.raises(DeviceListError, match=reason):
        decode_device_list(signed_body(3, keys))


@pytest.mark.parametrize("point", [NOT_A_POINT, SMALL_ORDER, NON_CANONICAL, bytes(32)])
def test_invalid_points_are_refused(point: bytes) -> None:
    keys = sorted([FIRST, point])
    with pytest.raises(DeviceListError, match="listed identity key is not a valid"):
        decode_device_list(signed_body(3, keys))
    with pytest.raises(DeviceListError, match="listed identity key is not a valid"):
        sign_device_list(ACCOUNT, version=3, devices=[FIRST, point])
    with pytest.raises(DeviceListError, match="account key is not a valid"):
        decode_device_list(signed_body(3, [FIRST], account_key=point))


@pytest.mark.parametrize(("body", "reason"), [
    (signed_body(0, [FIRST]), "version"),
    (signed_body(2**63, [FIRST]), "version"),
    (signed_body(3, []), r"1\.\.16 devices"),
    (signed_body(3, [FIRST], count=2), "truncated"),
    (signed_body(3, [FIRST, SECOND], count=1), "trailing bytes"),
    (signed_body(3, [FIRST], label=b"cryptopass/1 device lisT\x00"), "wrong label"),
    (signed_body(3, [FIRST], label=b"cryptopass/2 device list\x00"), "wrong label"),
])
def test_out_of_range_fields_are_refused_even_when_signed(body: bytes, reason: str) -> None:
    with pytest.raises(DeviceListError, match=reason):
        decode_device_list(body)


def test_more_than_sixteen_devices_are_refused() -> None:
    with pytest.raises(DeviceListError, match=r"1\.\.16 devices"):
        sign_device_list(ACCOUNT, version=1, devices=DEVICES)
    with pytest.raises(DeviceListError):
        decode_device_list(signed_body(1, DEVICES))
    with pytest.raises(DeviceListError, match=r"1\.\.16 devices"):
        sign_device_list(ACCOUNT, version=1, devices=[])


def test_signing_refuses_versions_out_of_range() -> None:
    for version in (0, -1, 2**63):
        with pytest.raises(DeviceListError, match="version"):
            sign_device_list(ACCOUNT, version=version, devices=[FIRST])


# --- check_successor -------------------------------------------------------------------------


def list_of(version: int, devices: list[bytes], account: Ed25519KeyPair = ACCOUNT
            ) -> SignedDeviceList:
    return sign_device_list(account, version=version, devices=devices)


def test_the_first_list_and_newer_lists_are_accepted() -> None:
    assert check_successor(None, LIST) is True
    assert check_successor(LIST, list_of(4, [FIRST])) is True
    assert check_successor(LIST, list_of(2**63 - 1, [FIRST, SECOND])) is True


def test_the_same_list_again_is_accepted_without_change() -> None:
    again = decode_device_list(LIST.encoded)
    assert check_successor(LIST, again) is False


def test_an_older_list_is_a_replay() -> None:
    with pytest.raises(StaleDeviceListError, match="version 2 is not newer than version 3"):
        check_successor(LIST, list_of(2, [FIRST, SECOND]))
    with pytest.raises(StaleDeviceListError):
        check_successor(LIST, list_of(1, [FIRST]))


def test_the_same_version_with_other_contents_is_a_fork() -> None:
    with pytest.raises(StaleDeviceListError, match="version 3 is not newer than version 3"):
        check_successor(LIST, list_of(3, [FIRST, SECOND, THIRD]))
    with pytest.raises(StaleDeviceListError):
        check_successor(LIST, list_of(3, [FIRST]))
    assert issubclass(StaleDeviceListError, DeviceListError)


def test_another_account_key_starts_over() -> None:
    """A new account for the user (re-enrolment): its version 1 replaces any old list; the
    safety number changes, which is how contacts notice."""
    assert check_successor(LIST, list_of(1, [THIRD], OTHER_ACCOUNT)) is True
