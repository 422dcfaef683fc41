"""The wake-up push methods of ``storage.base.Store``, once for both backends.

``SqliteStore`` and ``PostgresStore`` inherit ``PushStoreMethods`` and give it what
``storage.core_store.BackendHooks`` names; the SQL lives in ``storage.push_sql``. The contracts
are on ``storage.interfaces.push``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from storage import push_sql
from storage.core_store import BackendHooks
from storage.push_records import StoredPushTarget, WakeupClaims, WakeupResult, WakeupsScheduled

__all__ = ["PushStoreMethods"]


class PushStoreMethods(BackendHooks):
    """Mixin: the backend gives what ``BackendHooks`` names (its dialect, ``_write``, ``_read``)."""

    def _presence_channel(self) -> str | None:
        """The channel of the node using this store on a shared store, whose own presence
        rows scheduling ignores (it knows its connections); None without presence."""
        return None

    async def set_push_target(self, *, user_id: str, device_id: int, target: StoredPushTarget,
                              now: int) -> bool:
        return await self._write(lambda connection: push_sql.set_push_target(
            connection, self._dialect, user_id=user_id, device_id=device_id, target=target,
            now=now))

    async def clear_push_target(self, *, user_id: str, device_id: int) -> None:
        await self._write(lambda connection: push_sql.clear_push_target(
            connection, self._dialect, user_id=user_id, device_id=device_id))

    async def get_push_target(self, *, user_id: str, device_id: int) -> StoredPushTarget | None:
        return await self._read(lambda connection: push_sql.get_push_target(
            connection, self._dialect, user_id=user_id, device_id=device_id))

    async def devices_with_targets(self, devices: Iterable[tuple[str, int]],
                                   ) -> set[tuple[str, int]]:
        wanted = tuple(devices)
        return await self._read(lambda connection: push_sql.devices_with_targets(
            connection, self._dialect, wanted))

    async def push_target_devices(self) -> list[tuple[str, int]]:
        return await self._read(lambda connection: push_sql.push_target_devices(
            connection, self._dialect))

    async def schedule_wakeups(self, devices: Iterable[tuple[str, int, bool]], *, now: int,
                               interval_ms: int, urgent_interval_ms: int = 0,
                               committed_at: Mapping[tuple[str, int], int] | None = None,
                               ) -> WakeupsScheduled:
        wanted = tuple(devices)  # a snapshot: the writer runs it later, in its thread
        own_channel = self._presence_channel()
        return await self._write(lambda connection: push_sql.schedule_wakeups(
            connection, self._dialect, wanted, now=now, interval_ms=interval_ms,
            urgent_interval_ms=urgent_interval_ms, committed_at=committed_at,
            own_channel=own_channel))

    async def clear_wakeup(self, *, user_id: str, device_id: int) -> None:
        await self._write(lambda connection: push_sql.clear_wakeup(
            connection, self._dialect, user_id=user_id, device_id=device_id))

    async def claim_wakeups(self, *, now: int, limit: int, lease_ms: int,
                            claim_token: bytes) -> WakeupClaims:
        return await self._write(lambda connection: push_sql.claim_wakeups(
            connection, self._dialect, now=now, limit=limit, lease_ms=lease_ms,
            claim_token=claim_token))

    async def finish_wakeup(self, *, user_id: str, device_id: int, claim_token: bytes,
                            result: WakeupResult, now: int, retry_at: int | None = None,
                            target: StoredPushTarget | None = None,
                            sent_urgent: bool = False) -> bool:
        return await self._write(lambda connection: push_sql.finish_wakeup(
            connection, self._dialect, user_id=user_id, device_id=device_id,
            claim_token=claim_token, result=result, now=now, retry_at=retry_at, target=target,
            sent_urgent=sent_urgent))

    async def next_wakeup_due(self) -> int | None:
        return await self._read(lambda connection: push_sql.next_wakeup_due(
            connection, self._dialect))

    async def recover_wakeups(self, *, now: int) -> int:
        return await self._write(lambda connection: push_sql.recover_wakeups(
            connection, self._dialect, now=now))
