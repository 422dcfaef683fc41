"""``DeviceActivity``: the day each device last authenticated, for its administrators."""

from __future__ import annotations

import datetime
from typing import Protocol

__all__ = ["DeviceActivity"]


class DeviceActivity(Protocol):
    """When devices were last seen, by the day (UTC). Safe to call concurrently."""

    async def record_device_seen(self, *, user_id: str, device_id: int,
                                 day: datetime.date) -> bool:
        """Record that the device authenticated on ``day``: its ``last_seen_on`` becomes
        ``day`` unless it is already that day or later. Returns whether it changed (False
        too for a device that no longer exists: nothing to record)."""
        ...

    async def devices_last_seen(self, user_id: str) -> dict[int, datetime.date]:
        """Device id -> the day it last authenticated, for the user's devices that have
        authenticated since the relay began recording it (others are absent)."""
        ...
