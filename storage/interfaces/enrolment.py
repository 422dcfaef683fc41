"""``EnrolmentStore``: SMS verification codes, device registration, and what the store knows
of the enrolment secret.

Codes reach the store only as keyed hashes (``enrolment.codes``), and phone numbers that were
never declared only as ``phone_key`` values (keyed hashes of the number), so that what the
store keeps about an undeclared number tells nothing about it. The key of those hashes, the
enrolment secret, is never in the store: a stolen database or backup must not give it (the
relay keeps it in a file, ``relay.enrolment_secret``). The store keeps only its fingerprint, so
that the nodes of a cluster can tell that they read the same one; an earlier version kept the
secret itself, which the relay moves out once (``legacy_secret``, ``forget_legacy_secret``).

Every check of a code costs one of its attempts and one of its number's guesses, which a new
code does not give back; a code registers at most one device. An enrolment creates a new
account identity (``storage.interfaces.accounts``): the number's earlier devices are revoked.
"""

from __future__ import annotations

from typing import Protocol

from storage.account_records import Registration

__all__ = ["EnrolmentStore"]


class EnrolmentStore(Protocol):
    """What enrolment by SMS code needs. All methods are safe to call concurrently."""

    async def legacy_secret(self, name: str) -> bytes | None:
        """The secret an earlier version kept in the store under ``name``, if still there."""
        ...

    async def forget_legacy_secret(self, name: str) -> None:
        """Delete the secret kept under ``name`` (once it is safe elsewhere); nothing if none."""
        ...

    async def secret_fingerprint(self, name: str) -> bytes | None:
        """The fingerprint of a secret kept under ``name``, if one is."""
        ...

    async def keep_secret_fingerprint(self, name: str, candidate: bytes, *,
                                      replace: bool = False) -> bytes:
        """Return the fingerprint kept under ``name``: ``candidate`` if none was kept (or if
        ``replace``), which is kept from then on.

        Atomic: concurrent callers (on any node) all receive the same value, so that a node
        whose secret differs from the others' finds out.
        """
        ...

    async def record_verification_code(self, *, phone_key: bytes, code_hash: bytes, now: int,
                                       expires_at: int, window_ms: int,
                                       max_sends: int) -> bool:
        """Record one code sent to ``phone_key``, unless the sending limit is reached.

        Atomic: if fewer than ``max_sends`` codes were recorded for the key in
        ``(now - window_ms, now]``, record this send and make ``code_hash`` the
        key's only pending code (its attempt count starts at 0, the key's guesses stay as
        they are); return True. Otherwise change nothing and return False.
        """
        ...

    async def take_verification_attempt(self, *, phone_key: bytes, now: int, max_attempts: int,
                                        guess_window_ms: int, max_guesses: int) -> bytes | None:
        """Count one check of the pending code, and one guess of its number; return its hash.

        Atomic: if the key's guesses in its current window (which starts at the first guess
        counted and lasts ``guess_window_ms``) already number ``max_guesses``, raise
        ``GuessBudgetSpent`` with the window's end, changing nothing. Otherwise, if the key
        has a pending code with ``expires_at > now`` and fewer than ``max_attempts`` attempts,
        increment its attempts and the key's guesses (a new window if the last one is over)
        and return the code's hash; otherwise change nothing and return None. Recording a new
        code resets its attempts, never the guesses. The caller compares hashes in constant
        time.
        """
        ...

    async def forget_enrolment_records(self, *, now: int, send_window_ms: int,
                                       guess_window_ms: int, limit: int) -> int:
        """Delete what can no longer count: codes expired by ``now``, sends older than
        ``send_window_ms`` and guess windows older than ``guess_window_ms``, up to ``limit``
        rows of each (the sweeper calls it in short transactions). Returns the rows deleted.
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
