"""The sealed-sender methods of ``storage.base.Store``, once for both backends.

``SqliteStore`` and ``PostgresStore`` inherit ``SealedStoreMethods``; the SQL lives in
``storage.sealed_sql``, the contract on ``storage.interfaces.sealed``.
"""

from __future__ import annotations

from storage import sealed_sql
from storage.core_store import BackendHooks
from storage.sealed_sql import DeliveryAccess

__all__ = ["SealedStoreMethods"]


class SealedStoreMethods(BackendHooks):
    """Mixin: the backend gives what ``BackendHooks`` names (its dialect, ``_write``, ``_read``)."""

    async def set_delivery_access(self, *, user_id: str, access: DeliveryAccess,
                                  now: int) -> bool:
        return await self._write(lambda connection: sealed_sql.set_delivery_access(
            connection, self._dialect, user_id=user_id, access=access, now=now))

    async def delivery_access(self, user_id: str) -> DeliveryAccess | None:
        return await self._read(lambda connection: sealed_sql.get_delivery_access(
            connection, self._dialect, user_id=user_id))
