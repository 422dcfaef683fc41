"""The number catalogue: every assigned number sits in its range, and reserved blocks stay free.

Features built side by side (linked devices, attachments, groups, calls, sealed sender, pushes)
each take numbers only from their own block; these tests fail the moment two of them collide or a
number lands outside its block.
"""

from __future__ import annotations

import itertools

import msgpack
import pytest

from wire import frames
from wire.account_frames import ACCOUNT_FRAME_CLASSES
from wire.blob_frames import BLOB_FRAME_CLASSES
from wire.call_frames import CALL_FRAME_CLASSES
from wire.catalogue import (
    ERROR_CODE_RANGE,
    PUSH_RANGE,
    REQUEST_RANGE,
    RESERVED_BLOCKS,
    RESPONSE_RANGE,
    ErrorCode,
    FeatureBlock,
    FrameType,
)
from wire.codec import decode_body
from wire.group_frames import GROUP_FRAME_CLASSES
from wire.prekey_frames import PREKEY_FRAME_CLASSES
from wire.push_frames import PUSH_FRAME_CLASSES
from wire.sealed_frames import SEALED_FRAME_CLASSES

KINDS = ("requests", "responses", "pushes", "errors")
RANGE_OF_KIND = {"requests": REQUEST_RANGE, "responses": RESPONSE_RANGE, "pushes": PUSH_RANGE,
                 "errors": ERROR_CODE_RANGE}


def _numbers(block: FeatureBlock, kind: str) -> range:
    numbers: range = getattr(block, kind)
    return numbers


def test_every_block_lies_inside_its_kinds_range() -> None:
    for block, kind in itertools.product(RESERVED_BLOCKS, KINDS):
        numbers = _numbers(block, kind)
        assert len(numbers) > 0, (block.feature, kind)
        assert numbers.start in RANGE_OF_KIND[kind] and numbers[-1] in RANGE_OF_KIND[kind], (
            block.feature, kind)


def test_no_two_blocks_share_a_number() -> None:
    for kind in KINDS:
        for first, second in itertools.combinations(RESERVED_BLOCKS, 2):
            shared = set(_numbers(first, kind)) & set(_numbers(second, kind))
            assert not shared, (kind, first.feature, second.feature, sorted(shared))


def test_assigned_frame_types_sit_in_their_range_and_outside_every_block() -> None:
    reserved = {number for block in RESERVED_BLOCKS
                for kind in ("requests", "responses", "pushes") for number in _numbers(block, kind)}
    requests = {frame_type for frame_type in FrameType if frame_type in REQUEST_RANGE}
    responses = {frame_type for frame_type in FrameType if frame_type in RESPONSE_RANGE}
    pushes = {frame_type for frame_type in FrameType if frame_type in PUSH_RANGE}
    assert requests | responses | pushes == set(FrameType)
    assert not reserved & {int(frame_type) for frame_type in FrameType}


def test_assigned_error_codes_sit_outside_every_block() -> None:
    reserved = {number for block in RESERVED_BLOCKS for number in block.errors}
    assert all(code in ERROR_CODE_RANGE for code in ErrorCode)
    assert not reserved & {int(code) for code in ErrorCode}


def test_every_frame_class_has_a_distinct_assigned_type() -> None:
    classes = [*PREKEY_FRAME_CLASSES, *ACCOUNT_FRAME_CLASSES, *PUSH_FRAME_CLASSES,
               *BLOB_FRAME_CLASSES, *GROUP_FRAME_CLASSES, *CALL_FRAME_CLASSES,
               *SEALED_FRAME_CLASSES,
               *(getattr(frames, name) for name in frames.__all__
                                        if hasattr(getattr(frames, name), "frame_type"))]
    types = [cls.frame_type for cls in classes]
    assert len(types) == len(set(types))
    assert set(types) == set(FrameType)


@pytest.mark.parametrize("block", RESERVED_BLOCKS, ids=lambda block: block.feature)
def test_a_reserved_frame_type_is_refused_as_unknown(block: FeatureBlock) -> None:
    # A version 1 peer meeting a number a later feature assigns refuses it on that stream only.
    for number in (*block.requests, *block.responses, *block.pushes):
        body = msgpack.packb([frames.PROTOCOL_VERSION, number, {}])
        with pytest.raises(frames.RemoteProtocolError) as refused:
            decode_body(body)
        assert refused.value.code is ErrorCode.UNKNOWN_FRAME_TYPE, number
