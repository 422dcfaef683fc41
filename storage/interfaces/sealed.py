"""``DeliveryAccessStore``: how each user admits sealed sends (``storage.sealed_sql``)."""

from __future__ import annotations

from typing import Protocol

from storage.sealed_sql import DeliveryAccess

__all__ = ["DeliveryAccessStore"]


class DeliveryAccessStore(Protocol):
    """Each user's delivery-token registration; a row names one user only."""

    async def set_delivery_access(self, *, user_id: str, access: DeliveryAccess,
                                  now: int) -> bool:
        """Replace the user's registration; False (nothing stored) if the user is gone."""
        ...

    async def delivery_access(self, user_id: str) -> DeliveryAccess | None:
        """The user's registration; None if it has none or there is no such user."""
        ...
