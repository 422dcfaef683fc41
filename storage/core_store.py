"""The methods of ``storage.base.Store`` that both backends share, written once.

``SqliteStore`` and ``PostgresStore`` inherit ``CoreStoreMethods`` (and
``storage.admin_store.AdminStoreMethods``, ``storage.account_store.AccountStoreMethods``) and
keep only what differs: connections, threads, how a read reaches its connection, rate limits,
and PostgreSQL's cluster wake-ups (the deletion hooks, and its own ``submit_send`` and
``expire``). The SQL lives in
``storage.enrolment_sql``, ``storage.envelope_sql`` and ``storage.prekey_sql``. The methods'
contracts are on the protocols of ``storage.interfaces`` (``StoreLifecycle``, ``Directory``,
``EnrolmentStore``, ``EnvelopeQueue``, ``PrekeyStore``, and ``AdminStore`` for creating
organisations and declaring and deleting users), which ``storage.base.Store`` composes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from storage import enrolment_sql, envelope_sql, fanout_sql, prekey_sql, send_sql
from storage.account_records import Registration
from storage.base import PendingResult
from storage.fanout_records import MultiSendOutcome, NewMultiSend
from storage.group_commit import GroupCommitWriter
from storage.prekey_records import ClaimedBundle, PrekeyCounts, PrekeyUpload
from storage.records import (
    Device,
    Envelope,
    NewSend,
    Organisation,
    OrganisationState,
    Principal,
    SendOutcome,
    User,
)
from storage.sql_dialect import Dialect

__all__ = ["BackendHooks", "CoreStoreMethods"]

T = TypeVar("T")


class BackendHooks:
    """What a backend gives the shared methods: set ``_dialect``, ``_writer`` and ``_closed``,
    define ``_read`` and ``_close_readers``; override a hook to act in the transaction that
    deletes (or suspends) users."""

    _dialect: Dialect
    _writer: GroupCommitWriter[Any]
    _closed: bool

    if TYPE_CHECKING:
        async def _read(self, work: Callable[[Any], T]) -> T: ...
        async def _close_readers(self) -> None: ...

    async def _write(self, work: Callable[[Any], T]) -> T:
        return await self._writer.submit(work).wait()

    def submit_write_for_tests(self, work: Callable[[Any], T]) -> PendingResult[T]:
        """Test hook: submit ``work`` to the group-commit writer as the store's own writes
        are (in submission order, under its own SAVEPOINT in the next batch), outside every
        ``Store`` contract. Lets tests hold the writer or fail one write of a batch."""
        return self._writer.submit(work)

    def _before_user_deleted(self, connection: Any, user_id: str) -> None:
        """Hook run in the deleting transaction before a user goes (nothing by default)."""

    def _before_device_deleted(self, connection: Any, user_id: str, device_id: int) -> None:
        """Hook run in the deleting transaction before one device goes (nothing by default)."""


class CoreStoreMethods(BackendHooks):
    """Lifecycle, directory, enrolment, envelope and prekey methods of ``Store``."""

    @property
    def commit_count(self) -> int:
        """Write transactions committed since opening (one per group-committed batch)."""
        return self._writer.commit_count

    async def close(self) -> None:
        """Commit the writes already submitted, stop the writer, close every connection."""
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled caller must still not leak the writer thread or lose writes
        # that were already submitted.
        with trio.CancelScope(shield=True):
            await self._writer.stop()
            await self._close_readers()

    async def legacy_secret(self, name: str) -> bytes | None:
        return await self._read(lambda connection: enrolment_sql.legacy_secret(
            connection, self._dialect, name))

    async def forget_legacy_secret(self, name: str) -> None:
        await self._write(lambda connection: enrolment_sql.forget_legacy_secret(
            connection, self._dialect, name))

    async def secret_fingerprint(self, name: str) -> bytes | None:
        return await self._read(lambda connection: enrolment_sql.secret_fingerprint(
            connection, self._dialect, name))

    async def keep_secret_fingerprint(self, name: str, candidate: bytes, *,
                                      replace: bool = False) -> bytes:
        return await self._write(lambda connection: enrolment_sql.keep_secret_fingerprint(
            connection, self._dialect, name, candidate, replace=replace))

    # -- organisations and users ---------------------------------------------

    async def create_organisation(self, *, name: str, seats: int, now: int) -> Organisation:
        return await self._write(lambda connection: enrolment_sql.create_organisation(
            connection, self._dialect, name=name, seats=seats, now=now))

    async def set_organisation_state(self, *, name: str,
                                     state: OrganisationState) -> Organisation:
        return await self._write(lambda connection: enrolment_sql.set_organisation_state(
            connection, self._dialect, name=name, state=state))

    async def get_organisation(self, name: str) -> Organisation | None:
        return await self._read(lambda connection: enrolment_sql.get_organisation(
            connection, self._dialect, name))

    async def declare_user(self, *, organisation: str, phone: str, user_id: str,
                           now: int) -> User:
        return await self._write(lambda connection: enrolment_sql.declare_user(
            connection, self._dialect, organisation=organisation, phone=phone,
            user_id=user_id, now=now))

    async def list_users(self, organisation: str) -> list[User]:
        return await self._read(lambda connection: enrolment_sql.list_users(
            connection, self._dialect, organisation))

    async def delete_user(self, *, organisation: str, phone: str) -> User:
        return await self._write(lambda connection: enrolment_sql.delete_user(
            connection, self._dialect, organisation=organisation, phone=phone,
            before_delete=self._before_user_deleted))

    async def find_user_by_phone(self, phone: str) -> User | None:
        return await self._read(lambda connection: enrolment_sql.find_user_by_phone(
            connection, self._dialect, phone))

    async def list_devices(self, user_id: str) -> list[Device]:
        return await self._read(lambda connection: enrolment_sql.list_devices(
            connection, self._dialect, user_id))

    async def load_principal(self, user_id: str, device_id: int) -> Principal | None:
        return await self._read(lambda connection: enrolment_sql.load_principal(
            connection, self._dialect, user_id, device_id))

    # -- SMS verification ----------------------------------------------------

    async def record_verification_code(self, *, phone_key: bytes, code_hash: bytes, now: int,
                                       expires_at: int, window_ms: int,
                                       max_sends: int) -> bool:
        return await self._write(lambda connection: enrolment_sql.record_verification_code(
            connection, self._dialect, phone_key=phone_key, code_hash=code_hash, now=now,
            expires_at=expires_at, window_ms=window_ms, max_sends=max_sends))

    async def take_verification_attempt(self, *, phone_key: bytes, now: int, max_attempts: int,
                                        guess_window_ms: int, max_guesses: int) -> bytes | None:
        return await self._write(lambda connection: enrolment_sql.take_verification_attempt(
            connection, self._dialect, phone_key=phone_key, now=now, max_attempts=max_attempts,
            guess_window_ms=guess_window_ms, max_guesses=max_guesses))

    async def forget_enrolment_records(self, *, now: int, send_window_ms: int,
                                       guess_window_ms: int, limit: int) -> int:
        return await self._write(lambda connection: enrolment_sql.forget_enrolment_records(
            connection, self._dialect, now=now, send_window_ms=send_window_ms,
            guess_window_ms=guess_window_ms, limit=limit))

    async def register_device(self, *, phone: str, phone_key: bytes, code_hash: bytes,
                              identity_key: bytes, account_key: bytes, device_list: bytes,
                              device_list_version: int, now: int, max_devices: int,
                              revoke_reason: str) -> Registration:
        return await self._write(lambda connection: enrolment_sql.register_device(
            connection, self._dialect, phone=phone, phone_key=phone_key, code_hash=code_hash,
            identity_key=identity_key, account_key=account_key, device_list=device_list,
            device_list_version=device_list_version, now=now, max_devices=max_devices,
            revoke_reason=revoke_reason, before_delete=self._before_device_deleted))

    # -- envelopes -------------------------------------------------------------
    # ``locks`` names the users whose device rows a write locks: PostgreSQL's writer locks a
    # whole batch's rows up front, in one order (SQLite's single writer has no use for it).
    # Sends and acknowledgements act only through the connection: ``replayable`` (a batch of
    # them runs without a savepoint each; storage.group_commit).

    def submit_send(self, send: NewSend) -> PendingResult[SendOutcome]:
        payloads = dict(send.payloads)  # a snapshot: the caller may reuse its mapping
        dialect = self._dialect
        return self._writer.submit(lambda connection: send_sql.commit_send(
            connection, dialect, send, payloads), locks=(send.recipient_user_id,),
            replayable=True)

    def submit_multi_send(self, send: NewMultiSend) -> PendingResult[MultiSendOutcome]:
        recipients = {user_id: dict(devices) for user_id, devices in send.recipients.items()}
        dialect = self._dialect
        return self._writer.submit(lambda connection: fanout_sql.commit_multi_send(
            connection, dialect, send, recipients), locks=tuple(sorted(recipients)),
            replayable=True)

    async def fetch_queue(self, *, user_id: str, device_id: int, after_envelope_id: int,
                          limit: int, now: int) -> list[Envelope]:
        return await self._read(lambda connection: envelope_sql.fetch_queue(
            connection, self._dialect, user_id=user_id, device_id=device_id,
            after_envelope_id=after_envelope_id, limit=limit, now=now))

    async def acknowledge(self, *, user_id: str, device_id: int,
                          envelope_ids: Sequence[int]) -> int:
        return await self.submit_acknowledge(
            user_id=user_id, device_id=device_id, envelope_ids=envelope_ids).wait()

    def submit_acknowledge(self, *, user_id: str, device_id: int,
                           envelope_ids: Sequence[int]) -> PendingResult[int]:
        unique_ids, dialect = sorted(set(envelope_ids)), self._dialect
        # Not durable: an acknowledgement lost to a power failure only means the envelopes
        # come again, with their ids, which clients deduplicate (docs/PROTOCOL.md).
        return self._writer.submit(lambda connection: envelope_sql.acknowledge(
            connection, dialect, user_id=user_id, device_id=device_id,
            envelope_ids=unique_ids), locks=(user_id,), durable=False, replayable=True)

    async def queue_depth(self, *, user_id: str, device_id: int) -> int:
        return await self._read(lambda connection: envelope_sql.queue_depth(
            connection, self._dialect, user_id=user_id, device_id=device_id))

    async def deepest_queue(self) -> int:
        return await self._read(lambda connection: envelope_sql.deepest_queue(
            connection, self._dialect))

    async def expire(self, *, now: int, limit: int) -> int:
        return await self._write(lambda connection: envelope_sql.expire(
            connection, self._dialect, now=now, limit=limit))

    # -- prekeys ---------------------------------------------------------------

    async def store_prekeys(self, *, user_id: str, device_id: int, upload: PrekeyUpload,
                            now: int, max_pool_size: int) -> PrekeyCounts:
        return await self._write(lambda connection: prekey_sql.store_prekeys(
            connection, self._dialect, user_id=user_id, device_id=device_id, upload=upload,
            now=now, max_pool_size=max_pool_size))

    async def prekey_counts(self, *, user_id: str, device_id: int) -> PrekeyCounts:
        return await self._read(lambda connection: prekey_sql.prekey_counts(
            connection, self._dialect, user_id=user_id, device_id=device_id))

    async def claim_bundles(self, *, user_id: str,
                            device_ids: Sequence[int] | None) -> list[ClaimedBundle]:
        wanted = None if device_ids is None else tuple(device_ids)
        return await self._write(lambda connection: prekey_sql.claim_bundles(
            connection, self._dialect, user_id=user_id, device_ids=wanted))
