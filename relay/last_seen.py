"""The day each device last authenticated, written at most once a day per device.

The console shows it (``devices.last_seen_on``). The first successful authentication of a
device on a UTC day writes the day; later ones that day only look it up in ``LastSeen``'s set
of devices already written today, which is emptied when the day changes, so it holds at most
the devices seen in one day. Sends and deliveries never touch it. Another node (or a restart)
may write a day again: the store only moves the day forward, so that costs one write, no error.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from storage.interfaces.activity import DeviceActivity

__all__ = ["LastSeen"]


class LastSeen:
    """Records authentications into ``store`` by the day of ``now_ms`` (UTC)."""

    def __init__(self, store: DeviceActivity, now_ms: Callable[[], int]) -> None:
        self._store = store
        self._now_ms = now_ms
        self._day: datetime.date | None = None
        self._written: set[tuple[str, int]] = set()
        self.writes = 0
        """Writes asked of the store since starting (tests check that a day costs one)."""

    async def authenticated(self, user_id: str, device_id: int) -> None:
        """The device just authenticated: write today unless already written today."""
        today = datetime.datetime.fromtimestamp(self._now_ms() / 1000, datetime.UTC).date()
        if today != self._day:
            self._day = today
            self._written.clear()
        key = (user_id, device_id)
        if key in self._written:
            return
        self._written.add(key)  # before the await: concurrent sessions write once
        self.writes += 1
        try:
            await self._store.record_device_seen(user_id=user_id, device_id=device_id,
                                                 day=today)
        except BaseException:
            self._written.discard(key)  # the next authentication tries again
            raise
