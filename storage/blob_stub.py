"""Placeholder ``BlobStore`` methods until the backends' own land (this commit only)."""

from __future__ import annotations

from storage.records import BlobInfo

__all__ = ["UnbuiltBlobMethods"]


class UnbuiltBlobMethods:
    """Every ``BlobStore`` method, raising NotImplementedError."""

    async def create_blob(self, *, organisation_id: int, user_id: str, device_id: int,
                          size: int, quota_bytes: int, now_ms: int, expires_ms: int) -> bytes:
        raise NotImplementedError

    async def blob_info(self, blob_id: bytes, now_ms: int) -> BlobInfo | None:
        raise NotImplementedError

    async def append_blob(self, blob_id: bytes, offset: int, data: bytes) -> int:
        raise NotImplementedError

    async def read_blob(self, blob_id: bytes, offset: int, length: int) -> bytes:
        raise NotImplementedError

    async def delete_expired_blobs(self, now_ms: int, limit: int) -> int:
        raise NotImplementedError

    async def delete_organisation_blobs(self, organisation_id: int) -> int:
        raise NotImplementedError

    async def organisation_blob_bytes(self, organisation_id: int, now_ms: int) -> int:
        raise NotImplementedError
