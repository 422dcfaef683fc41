"""``BlobStore``: the ciphertext of files, uploaded once in pieces, downloaded by id.

The relay never sees a file's plaintext or key: a blob is opaque bytes with a declared size.
The store's part of the file-transfer promises:

* a blob id is 32 bytes from ``secrets``, drawn by the store, and is the capability: a lookup
  goes by id alone, and a missing, wrong, expired or deleted id all look the same (None or
  NotFound), so nothing tells "exists but not yours" apart;
* an append is durable (fsync'd file and committed row, or committed row) before it returns,
  and ``received`` only ever counts durable bytes: an upload resumes from it after any crash;
* bad input (an offset that is not ``received``, bytes past the declared size, a quota that
  would be exceeded) raises and changes nothing;
* the quota check is atomic with the creation, on every node sharing the store;
* a blob goes when it expires (``expire`` sweeps blobs with envelopes, or
  ``delete_expired_blobs`` alone), when its uploader's user is deleted or erased, and with
  every blob of its organisation when the organisation is terminated.

Memory stays flat whatever the file's size: callers append and read in pieces of at most
``MAX_BLOB_PIECE_BYTES``. The embedded store keeps the bytes in files under
``DATA_DIR/blobs/`` (``storage.blob_files``), PostgreSQL in chunk rows
(``storage.blob_postgres``); an S3-compatible store would implement this same protocol.
"""

from __future__ import annotations

from typing import Protocol

from storage.records import BlobInfo

__all__ = ["BLOB_ID_BYTES", "BLOB_MINIMUM_CHARGE_BYTES", "MAX_BLOB_PIECE_BYTES", "BlobInfo",
           "BlobStore"]

BLOB_ID_BYTES = 32
"""Length of a blob id: 256 random bits, far past guessing (the issue asks for 128 at least)."""

MAX_BLOB_PIECE_BYTES = 1024 * 1024
"""Most bytes one ``append_blob`` takes or one ``read_blob`` returns (1 MiB): what a caller
holds in memory per transfer, and the largest chunk row PostgreSQL keeps."""

BLOB_MINIMUM_CHARGE_BYTES = 4096
"""Each blob counts at least this toward its organisation's quota (bytes, one filesystem
block): so that empty or tiny blobs cannot pile up rows and files without bound."""


class BlobStore(Protocol):
    """Blobs and their metadata. All methods are safe to call concurrently."""

    async def create_blob(self, *, organisation_id: int, user_id: str, device_id: int,
                          size: int, quota_bytes: int, now_ms: int, expires_ms: int,
                          upload_deadline_ms: int | None = None) -> bytes:
        """Record a new, empty blob of ``size`` bytes uploaded by that device; return its id.

        Charges ``max(size, BLOB_MINIMUM_CHARGE_BYTES)`` to the organisation. In one
        transaction (locking the organisation against every other node): if the charges of
        its unexpired blobs plus this one would exceed ``quota_bytes``, raises
        BlobQuotaExceeded and stores nothing. ``expires_ms`` is the caller's (now plus the
        relay's blob TTL). A blob still incomplete at ``upload_deadline_ms`` (if given, and
        earlier) expires then: an abandoned upload gives its quota back sooner.

        Raises:
            BlobQuotaExceeded: nothing stored.
            NotFound: the user is not in that organisation (any more); nothing stored.
            ValueError: ``size`` is negative.
        """
        ...

    async def blob_info(self, blob_id: bytes, now_ms: int) -> BlobInfo | None:
        """The blob, or None if it is missing or expired at ``now_ms`` (``BlobInfo.live``; a
        wrong id is a missing one). The caller checks who may upload (the creating device)
        or download (anyone holding the id, once ``complete``)."""
        ...

    async def append_blob(self, blob_id: bytes, offset: int, data: bytes) -> int:
        """Add ``data`` at ``offset``; return the new ``received`` once it is durable.

        ``offset`` must equal ``received`` (the durable bytes); of two appends to one blob
        at once, on one node or several, at most one is stored and the other refused
        (BlobOffsetMismatch, even at the right offset: the caller asks again). Bytes past
        ``received`` left by a crash are dropped before writing.

        Raises:
            BlobOffsetMismatch: ``offset`` is not ``received`` (its ``received`` says where
                to resume); nothing stored.
            BlobPastSize: ``offset + len(data)`` exceeds the declared size; nothing stored.
            NotFound: no such blob (deleted meanwhile, or never); nothing stored.
            ValueError: ``data`` is longer than ``MAX_BLOB_PIECE_BYTES``.
        """
        ...

    async def read_blob(self, blob_id: bytes, offset: int, length: int) -> bytes:
        """Up to ``length`` durable bytes from ``offset``; b"" only at or past ``received``.

        May return fewer than ``length`` before ``received`` (PostgreSQL reads a bounded
        number of chunk rows): a caller reads on from ``offset + len(result)``. Never returns
        a byte that is not yet durable.

        Raises:
            NotFound: no such blob (deleted meanwhile, or never).
            ValueError: ``offset`` negative, or ``length`` not in 0..MAX_BLOB_PIECE_BYTES.
        """
        ...

    async def delete_expired_blobs(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` blobs expired at ``now_ms`` (``BlobInfo.live``), bytes and
        all; return how many. ``EnvelopeQueue.expire`` calls it too, with its own ``limit``."""
        ...

    async def delete_organisation_blobs(self, organisation_id: int) -> int:
        """Delete every blob of the organisation, bytes and all; return how many.
        ``terminate_organisation`` does this in its own transaction already."""
        ...

    async def organisation_blob_bytes(self, organisation_id: int, now_ms: int) -> int:
        """What the organisation's unexpired blobs are charged against its quota (bytes)."""
        ...
