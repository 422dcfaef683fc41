"""Sample frames of accounts and linking, one per type, shared by the codec and state-table
tests. The device lists are opaque bytes to the codec: it only bounds their size."""

from __future__ import annotations

from wire.account_frames import (
    AddedDevice,
    DeviceListPublished,
    LinkFetch,
    LinkMessages,
    LinkOpen,
    LinkOpened,
    LinkPost,
    LinkPosted,
    PublishDeviceList,
)
from wire.frames import Frame, FrameType

CHANNEL_ID = bytes(range(16))

ACCOUNT_SAMPLE_FRAMES: dict[FrameType, Frame] = {
    FrameType.PUBLISH_DEVICE_LIST: PublishDeviceList(device_list=b"l" * 200),
    FrameType.LINK_OPEN: LinkOpen(),
    FrameType.LINK_POST: LinkPost(channel_id=CHANNEL_ID, payload=b"sealed"),
    FrameType.LINK_FETCH: LinkFetch(channel_id=CHANNEL_ID),
    FrameType.DEVICE_LIST_PUBLISHED: DeviceListPublished(
        version=2, added=(AddedDevice(device_id=3, identity_key=b"n" * 32),), revoked=(1,)),
    FrameType.LINK_OPENED: LinkOpened(channel_id=CHANNEL_ID, expires_at=1_700_000_600_000),
    FrameType.LINK_POSTED: LinkPosted(),
    FrameType.LINK_MESSAGES: LinkMessages(payloads=(b"first", b"second")),
}
