"""The administration methods of ``storage.base.Store``, once for both backends.

``SqliteStore`` and ``PostgresStore`` inherit ``AdminStoreMethods`` and give it what
``storage.core_store.BackendHooks`` names; the SQL itself lives in ``storage.admin_sql``.
The methods' contracts are on ``storage.interfaces.administration.AdminStore`` and
``storage.interfaces.directory.OrganisationPolicy``, ``storage.interfaces.activity.DeviceActivity``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from storage import admin_sql, last_seen_sql, login_attempt_sql
from storage.admin_records import (
    Account,
    AccountRole,
    AdminSession,
    ApiToken,
    AuditEntry,
    Licence,
    LicenceOffer,
    LoginAttempt,
    SeatReduction,
)
from storage.core_store import BackendHooks
from storage.records import Device, Organisation, User

__all__ = ["AdminStoreMethods"]


class AdminStoreMethods(BackendHooks):
    """Mixin: the backend gives what ``BackendHooks`` names (its dialect, ``_write``, ``_read``)."""

    async def list_organisations(self) -> list[Organisation]:
        return await self._read(lambda connection: admin_sql.list_organisations(
            connection, self._dialect))

    async def create_account(self, *, email: str, role: AccountRole, organisation: str | None,
                             password_hash: str, password_is_one_time: bool,
                             now: int) -> Account:
        return await self._write(lambda connection: admin_sql.create_account(
            connection, self._dialect, email=email, role=role, organisation=organisation,
            password_hash=password_hash, password_is_one_time=password_is_one_time, now=now))

    async def find_account(self, email: str) -> Account | None:
        return await self._read(lambda connection: admin_sql.find_account(
            connection, self._dialect, email))

    async def set_account_password(self, *, account_id: int, password_hash: str,
                                   keep_session_hash: bytes | None,
                                   password_is_one_time: bool = False) -> None:
        await self._write(lambda connection: admin_sql.set_account_password(
            connection, self._dialect, account_id=account_id, password_hash=password_hash,
            keep_session_hash=keep_session_hash, password_is_one_time=password_is_one_time))

    async def take_login_attempt(self, *, keys: Sequence[bytes], allowed: int,
                                 window_ms: int, now: int) -> LoginAttempt:
        keys = tuple(keys)  # a snapshot: the writer runs it later, in its thread
        return await self._write(lambda connection: login_attempt_sql.take_login_attempt(
            connection, self._dialect, keys=keys, allowed=allowed, window_ms=window_ms,
            now=now))

    async def refund_login_attempt(self, *, keys: Sequence[bytes], now: int) -> None:
        keys = tuple(keys)
        await self._write(lambda connection: login_attempt_sql.refund_login_attempt(
            connection, self._dialect, keys=keys, now=now))

    async def create_admin_session(self, *, session_hash: bytes, account_id: int,
                                   csrf_token: str, now: int, expires_at: int,
                                   spends_one_time_password: bool = False) -> bool:
        return await self._write(lambda connection: admin_sql.create_admin_session(
            connection, self._dialect, session_hash=session_hash, account_id=account_id,
            csrf_token=csrf_token, now=now, expires_at=expires_at,
            spends_one_time_password=spends_one_time_password))

    async def load_admin_session(self, *, session_hash: bytes,
                                 now: int) -> AdminSession | None:
        return await self._read(lambda connection: admin_sql.load_admin_session(
            connection, self._dialect, session_hash=session_hash, now=now))

    async def delete_admin_session(self, session_hash: bytes) -> None:
        await self._write(lambda connection: admin_sql.delete_admin_session(
            connection, self._dialect, session_hash))

    async def create_api_token(self, *, organisation: str, token_hash: bytes,
                               now: int) -> ApiToken:
        return await self._write(lambda connection: admin_sql.create_api_token(
            connection, self._dialect, organisation=organisation, token_hash=token_hash,
            now=now))

    async def find_api_token(self, token_hash: bytes) -> ApiToken | None:
        return await self._read(lambda connection: admin_sql.find_api_token(
            connection, self._dialect, token_hash))

    async def list_api_tokens(self, organisation: str) -> list[ApiToken]:
        return await self._read(lambda connection: admin_sql.list_api_tokens(
            connection, self._dialect, organisation))

    async def revoke_api_token(self, *, organisation: str, token_id: int,
                               now: int) -> ApiToken:
        return await self._write(lambda connection: admin_sql.revoke_api_token(
            connection, self._dialect, organisation=organisation, token_id=token_id,
            now=now))

    async def append_audit(self, *, organisation_id: int, actor: str, action: str,
                           subject: str, address: str, now: int) -> AuditEntry:
        return await self._write(lambda connection: admin_sql.append_audit(
            connection, self._dialect, organisation_id=organisation_id, actor=actor,
            action=action, subject=subject, address=address, now=now))

    async def list_audit(self, *, organisation_id: int, action: str | None = None,
                         subject: str | None = None, before_entry_id: int | None = None,
                         limit: int) -> list[AuditEntry]:
        return await self._read(lambda connection: admin_sql.list_audit(
            connection, self._dialect, organisation_id=organisation_id, action=action,
            subject=subject, before_entry_id=before_entry_id, limit=limit))

    async def erase_user(self, *, organisation: str, phone: str, pseudonym: str) -> User:
        return await self._write(lambda connection: admin_sql.erase_user(
            connection, self._dialect, organisation=organisation, phone=phone,
            pseudonym=pseudonym, before_delete=self._before_user_deleted))

    async def revoke_device(self, *, organisation: str, phone: str, device_id: int,
                            now: int) -> Device:
        return await self._write(lambda connection: admin_sql.revoke_device(
            connection, self._dialect, organisation=organisation, phone=phone,
            device_id=device_id, now=now, before_delete=self._before_device_deleted))

    async def suspend_organisation(self, name: str) -> list[User]:
        # The same hook as a deletion: other nodes close the users' connections on commit.
        return await self._write(lambda connection: admin_sql.suspend_organisation(
            connection, self._dialect, name, before_close=self._before_user_deleted))

    async def terminate_organisation(self, name: str) -> list[User]:
        return await self._write(lambda connection: admin_sql.remove_all_users(
            connection, self._dialect, name, before_delete=self._before_user_deleted))

    async def get_licence(self, organisation: str) -> Licence:
        return await self._read(lambda connection: admin_sql.get_licence(
            connection, self._dialect, organisation))

    async def set_licence_terms(self, *, organisation: str, offer: LicenceOffer,
                                period_start: datetime.date) -> Licence:
        return await self._write(lambda connection: admin_sql.set_licence_terms(
            connection, self._dialect, organisation=organisation, offer=offer,
            period_start=period_start))

    async def add_seats(self, *, organisation: str, added: int) -> Licence:
        return await self._write(lambda connection: admin_sql.add_seats(
            connection, self._dialect, organisation=organisation, added=added))

    async def request_seat_reduction(self, *, organisation: str, seats: int,
                                     effective_on: datetime.date, now: int) -> SeatReduction:
        return await self._write(lambda connection: admin_sql.request_seat_reduction(
            connection, self._dialect, organisation=organisation, seats=seats,
            effective_on=effective_on, now=now))

    async def list_seat_reductions(self, organisation: str) -> list[SeatReduction]:
        return await self._read(lambda connection: admin_sql.list_seat_reductions(
            connection, self._dialect, organisation))

    async def apply_due_seat_reductions(self, *, today: datetime.date) -> int:
        return await self._write(lambda connection: admin_sql.apply_due_seat_reductions(
            connection, self._dialect, today=today))

    async def cross_organisation_allowed(self, organisation_id: int) -> bool:
        return await self._read(lambda connection: admin_sql.cross_organisation_allowed(
            connection, self._dialect, organisation_id))

    async def set_cross_organisation_allowed(self, *, organisation: str,
                                             allowed: bool) -> None:
        await self._write(lambda connection: admin_sql.set_cross_organisation_allowed(
            connection, self._dialect, organisation=organisation, allowed=allowed))

    async def record_device_seen(self, *, user_id: str, device_id: int,
                                 day: datetime.date) -> bool:
        return await self._write(lambda connection: last_seen_sql.record_device_seen(
            connection, self._dialect, user_id=user_id, device_id=device_id, day=day))

    async def devices_last_seen(self, user_id: str) -> dict[int, datetime.date]:
        return await self._read(lambda connection: last_seen_sql.devices_last_seen(
            connection, self._dialect, user_id))
