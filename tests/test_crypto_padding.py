"""crypto.padding: known lengths, then malformed paddings, then properties over all inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.padding import PADDING_BUCKET_SIZE, PaddingError, pad, padded_length, unpad
from crypto.primitives import CryptoError

# Signal's rule (getPaddedMessageLength), without its CBC-era "-1": the message plus its
# 0x80 terminator, rounded up to 160-byte parts.
# https://github.com/signalapp/libsignal-service-java/blob/master/java/src/main/java/org/whispersystems/signalservice/internal/push/PushTransportDetails.java


@pytest.mark.parametrize(
    ("plaintext_length", "expected"),
    [(0, 160), (1, 160), (159, 160), (160, 320), (319, 320), (320, 480), (1000, 1120)],
)
def test_padded_length_rounds_message_plus_marker_up_to_a_bucket(
    plaintext_length: int, expected: int
) -> None:
    assert padded_length(plaintext_length) == expected
    assert len(pad(bytes(plaintext_length))) == expected


def test_pad_layout_is_plaintext_marker_then_zeros() -> None:
    assert pad(b"hi") == b"hi\x80" + bytes(157)
    assert pad(b"") == b"\x80" + bytes(159)
    assert pad(b"\x80" * 159) == b"\x80" * 160


def test_unpad_keeps_trailing_zeros_and_markers_that_belong_to_the_message() -> None:
    for plaintext in (b"\x00", b"text\x00\x00", b"\x80", b"\x80\x00", bytes(159), bytes(160)):
        assert unpad(pad(plaintext)) == plaintext


def test_padded_length_refuses_negative_length() -> None:
    with pytest.raises(ValueError, match="negative"):
        padded_length(-1)


@pytest.mark.parametrize(
    "padded",
    [
        pytest.param(b"", id="empty"),
        pytest.param(pad(b"hi")[:-1], id="short-of-a-bucket"),
        pytest.param(pad(b"hi") + b"\x00", id="past-a-bucket"),
        pytest.param(bytes(160), id="all-zero-no-marker"),
        pytest.param(b"hi\x81" + bytes(157), id="wrong-marker"),
        pytest.param(b"x" * 160, id="no-padding-at-all"),
        pytest.param(b"hi\x80" + bytes(317), id="more-than-a-bucket-of-padding"),
        pytest.param(b"\x80" + bytes(319), id="empty-message-padded-twice-over"),
    ],
)
def test_unpad_refuses_malformed_padding(padded: bytes) -> None:
    with pytest.raises(PaddingError):
        unpad(padded)


def test_padding_error_is_a_crypto_error() -> None:
    # Callers catch one family for "the peer's message failed a check".
    assert issubclass(PaddingError, CryptoError)


@given(st.binary(max_size=4 * PADDING_BUCKET_SIZE))
def test_unpad_inverts_pad_and_pad_fills_whole_buckets(plaintext: bytes) -> None:
    padded = pad(plaintext)
    assert unpad(padded) == plaintext
    assert len(padded) % PADDING_BUCKET_SIZE == 0
    # Padding never costs more than one bucket, and always at least the marker byte.
    assert len(plaintext) < len(padded) <= len(plaintext) + PADDING_BUCKET_SIZE


@given(st.binary(max_size=3 * PADDING_BUCKET_SIZE))
def test_unpad_accepts_only_what_pad_produces(candidate: bytes) -> None:
    # Canonical: anything unpad accepts re-pads to exactly the same bytes.
    try:
        plaintext = unpad(candidate)
    except PaddingError:
        return
    assert pad(plaintext) == candidate


# Plaintexts shorter than one bucket, so no truncation can land on an inner bucket boundary
# (which would be a different, well-formed padded message).
@given(st.binary(max_size=PADDING_BUCKET_SIZE - 1), st.integers(min_value=0, max_value=159))
def test_unpad_refuses_any_truncation_of_the_padding(plaintext: bytes, cut: int) -> None:
    padded = pad(plaintext)
    truncated = padded[: len(padded) - cut - 1]
    with pytest.raises(PaddingError):
        unpad(truncated)
