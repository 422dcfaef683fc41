"""A device as the relay names it, and the bytes that name it in a message's associated data.

Sessions know both ends' addresses and bind them into every message (`crypto.message_format`),
so a relay that delivers a message under another sender's name makes it fail to decrypt.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["MAX_DEVICE_ID", "DeviceAddress", "encode_address"]

MAX_DEVICE_ID = 2**32 - 1
"""Device ids are encoded in 4 bytes (the relay's own limit is lower)."""
_U32 = struct.Struct(">I")


@dataclass(frozen=True, order=True)
class DeviceAddress:
    """A device as the relay names it: its user's id and its device id.

    Raises:
        ValueError: the user id is empty or not valid Unicode text, or the device id does not
            fit in 4 bytes.
    """

    user_id: str
    device_id: int

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not self.user_id:
            raise ValueError("a device address needs a non-empty user id")
        try:
            self.user_id.encode()
        except UnicodeEncodeError as error:
            raise ValueError("a user id must be encodable as UTF-8") from error
        if (not isinstance(self.device_id, int) or isinstance(self.device_id, bool)
                or not 0 <= self.device_id <= MAX_DEVICE_ID):
            raise ValueError(f"device id must be an integer in 0..{MAX_DEVICE_ID}")

    def __str__(self) -> str:
        return f"{self.user_id}/{self.device_id}"


def encode_address(address: DeviceAddress) -> bytes:
    """u32 byte length || UTF-8 user id || u32 device id (all big-endian): unambiguous when
    concatenated, since the user id's length comes first."""
    user_id = address.user_id.encode()
    return _U32.pack(len(user_id)) + user_id + _U32.pack(address.device_id)
