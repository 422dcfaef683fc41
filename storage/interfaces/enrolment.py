"""``EnrolmentStore``: SMS verification codes, device registration and the store's secrets.

Codes reach the store only as keyed hashes (``enrolment.codes``), and phone numbers that were
never declared only as ``phone_key`` values (keyed hashes of the number), so that what the
store keeps about an undeclared number tells nothing about it. Every check of a code costs
one of its attempts, and a code registers at most one device. An enrolment creates a new
account identity (``storage.interfaces.accounts``): the number's earlier devices are revoked.
"""

from __future__ import annotations

from typing import Protocol

from storage.account_records import Registration

__all__ = ["EnrolmentStore"]


class EnrolmentStore(Protocol):
    """What enrolment by SMS code needs. All methods are safe to call concurrently."""

    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        """Return the secret stored under ``name``; store ``candidate`` first if none is.

        Atomic: concurrent callers (on any node) all receive the same value, so a code sent
        by one node verifies on another.
        """
        ...

    async def record_verification_code(self, *, phone_key: bytes, code_hash: bytes, now: int,
                                       expires_at: int, window_ms: int,
                                       max_sends: int) -> bool:
        """Record one code sent to ``phone_key``, unless the sending limit is reached.

        Atomic: if fewer than ``max_sends`` codes were recorded for the key in
        ``(now - window_ms, now]``, record this send and make ``code_hash`` the
        key's only pending code (its attempt count starts at 0); return True.
        Otherwise change nothing and return False.
        """
        ...

    async def take_verification_attempt(self, *, phone_key: bytes, now: int,
                                        max_attempts: int) -> bytes | None:
        """Count one check of the pending code and return its hash.

        Atomic: if the key has a pending code with ``expires_at > now`` and fewer
        than ``max_attempts`` attempts, increment its attempts and return its
        hash; otherwise change nothing and return None. The caller compares hashes
        in constant time.
        """
        ...

    async def register_device(self, *, phone: str, phone_key: bytes, code_hash: bytes,
                              identity_key: bytes, account_key: bytes, device_list: bytes,
                              device_list_version: int, now: int, max_devices: int,
                              revoke_reason: str) -> Registration:
        """Consume the pending code and make a new account identity for the user of ``phone``,
        with one device.

        Atomic and single-use: the pending code of ``phone_key`` is deleted only if it still
        equals ``code_hash``. In the same transaction: every device the user already has (the
        number was enrolled before: a lost phone, a SIM swap) is revoked, as by
        ``AccountKeyStore.publish_device_list`` (row, queued envelopes and prekeys deleted, a
        notice with ``revoke_reason`` kept); ``account_key``, ``device_list`` (already checked
        by the caller: signed by ``account_key``, listing only ``identity_key``) and
        ``device_list_version`` replace the user's; the device is created (next unused device
        id of the user: ids are never reused) and the user becomes ENROLLED.

        Raises RegistrationRefused (changing nothing) otherwise: CODE_CONSUMED (used,
        replaced, or sent before the number's current declaration), NOT_DECLARED,
        ORGANISATION_INACTIVE, SAME_ACCOUNT_KEY (``account_key`` is already the user's: an
        enrolment always creates a new account identity), TOO_MANY_DEVICES (counted after
        the revocation, so a re-enrolment always fits unless ``max_devices`` is 0).
        """
        ...
