"""``PrekeyStore``: each device's prekeys, uploaded by the device and claimed by its peers.

Public keys only: the relay never holds a private key. The values are in
``storage.prekey_records``. The store's part of the prekey promises: an upload is stored whole
or not at all, and a one-time prekey is handed out at most once, ever, on any node. Checking
signatures is the caller's part (``relay.prekeys``), before ``store_prekeys``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from storage.prekey_records import ClaimedBundle, PrekeyCounts, PrekeyUpload

__all__ = ["PrekeyStore"]


class PrekeyStore(Protocol):
    """Prekey pools per device. All methods are safe to call concurrently."""

    async def store_prekeys(self, *, user_id: str, device_id: int, upload: PrekeyUpload,
                            now: int, max_pool_size: int) -> PrekeyCounts:
        """Store one device's upload, whole or not at all; return the counts after it.

        The caller has verified every signature against the device's identity key.
        Atomic: the signed and last-resort prekeys given replace the device's; the
        one-time keys join their pools (a key id already pooled is overwritten, so a
        retried upload adds nothing twice). If a pool would then hold more than
        ``max_pool_size`` keys, raises PrekeyPoolFull and changes nothing. Raises
        NotFound (changing nothing) if the device does not exist (any more).
        """
        ...

    async def prekey_counts(self, *, user_id: str, device_id: int) -> PrekeyCounts:
        """What the store holds for the device (counts and key ids, no key). Raises NotFound."""
        ...

    async def claim_bundles(self, *, user_id: str,
                            device_ids: Sequence[int] | None) -> list[ClaimedBundle]:
        """Claim a bundle from each current device of the user (only those of
        ``device_ids`` if given; unknown ids are ignored), by device id.

        A one-time prekey is handed out at most once, ever: in one transaction, each
        device that has both a signed prekey and a last-resort KEM prekey gives up its
        oldest one-time X25519 prekey and its oldest one-time KEM prekey, if any; they
        are deleted as they are returned, so concurrent callers, on any node, never
        receive the same key. When the KEM pool is empty, the last-resort KEM prekey is
        served (and kept). A device lacking a signed prekey or a last-resort prekey is
        returned with what it has and nothing is claimed from it. Deleted devices are
        absent (their prekeys went with them). A user without devices gives [].
        """
        ...
