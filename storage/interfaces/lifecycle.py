"""``StoreLifecycle``: what every store offers whoever opened it (counting commits, closing)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["StoreLifecycle"]


class StoreLifecycle(Protocol):
    """Opening is the backend's own (``storage.store_url.open_store``); the rest is here."""

    @property
    def commit_count(self) -> int:
        """Write transactions committed since opening; several writes may share one
        (group commit), which is what lets tests and operators see it working."""
        ...

    async def close(self) -> None:
        """Finish writes already submitted, then release every resource.

        Idempotent. Afterwards every method raises RuntimeError.
        """
        ...
