"""EnrolmentService and the admin operations, over a real SQLite store (no mocks)."""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
import pytest
import trio

from crypto.device_list import sign_device_list
from crypto.primitives import Ed25519KeyPair, ed25519_keypair_from_private
from enrolment import admin
from enrolment.codes import (
    CODE_TTL_MS,
    MAX_CHECKS_PER_CODE,
    MAX_DEVICES_PER_USER,
    MAX_SENDS_PER_NUMBER_PER_DAY,
    SEND_WINDOW_MS,
    hash_code,
    phone_key,
)
from enrolment.errors import (
    InvalidPhoneNumber,
    InvalidRequest,
    OrganisationInactive,
    RateLimited,
    VerificationFailed,
)
from enrolment.service import (
    FIRST_DEVICE_LIST_VERSION,
    REENROLMENT_REVOKE_REASON,
    EnrolmentService,
)
from enrolment.sms import OutboxGateway, SmsDispatcher, SmsMessage
from storage.base import (
    AccountRecord,
    AlreadyExists,
    NotFound,
    OrganisationState,
    Registration,
    RevokedDevice,
    SeatLimitReached,
    UserState,
)
from storage.sqlite import SqliteStore, open_sqlite_store

T0 = 1_700_000_000_000
DECLARED = "+33612345678"
UNDECLARED = "+33698765432"
ORGANISATION = "acme"
ADDRESS = "192.0.2.1"
"""The source address of the tests' requests (TEST-NET-1); the limits per address have tests
of their own (test_enrolment_limits.py)."""
WAIT_S = 10  # generous bound on anything that could hang


def new_identity_key() -> bytes:
    return bytes(nacl.signing.SigningKey.generate().verify_key)


@dataclass(frozen=True)
class NewAccount:
    """What a device sends in ENROL_VERIFY: its identity key, a new account key, and that
    account's first device list (version 1, this device only)."""

    identity_key: bytes
    account: Ed25519KeyPair
    device_list: bytes

    @property
    def account_key(self) -> bytes:
        return self.account.public_key


def new_account(identity_key: bytes | None = None) -> NewAccount:
    identity_key = new_identity_key() if identity_key is None else identity_key
    account = ed25519_keypair_from_private(secrets.token_bytes(32))
    first = sign_device_list(account, version=1, devices=(identity_key,))
    return NewAccount(identity_key=identity_key, account=account, device_list=first.encoded)


@dataclass
class Relay:
    """The pieces a test drives: service, store, outbox and delivered SMS."""

    service: EnrolmentService
    secret: bytes
    store: SqliteStore
    database: Path
    outbox: Path
    dispatcher: SmsDispatcher
    delivered: trio.MemoryReceiveChannel[SmsMessage]

    async def next_sms(self) -> SmsMessage:
        with trio.fail_after(WAIT_S):
            return await self.delivered.receive()

    async def request_code(self, phone: str = DECLARED, now: int = T0, *,
                           address: str = ADDRESS) -> str:
        """Start enrolment for a declared number and return the code it received."""
        await self.service.start(phone, now, address=address)
        message = await self.next_sms()
        assert message.to == phone
        match = re.search(r"\b(\d{6})\b", message.body)
        assert match is not None
        return match.group(1)

    def outbox_lines(self) -> list[dict[str, str]]:
        if not self.outbox.exists():
            return []
        return [json.loads(line) for line in self.outbox.read_text("utf-8").splitlines()]

    def sql(self, statement: str, parameters: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.database, timeout=WAIT_S) as connection:
            return connection.execute(statement, parameters).fetchall()


async def verify(relay: Relay, phone: str, code: str, now: int, *,
                 account: NewAccount | None = None,
                 service: EnrolmentService | None = None,
                 address: str = ADDRESS) -> Registration:
    """Verify ``code`` for a new account (a fresh one unless given)."""
    account = new_account() if account is None else account
    return await (relay.service if service is None else service).verify(
        phone, code, account.identity_key, account.account_key, account.device_list, now,
        address=address)


@pytest.fixture
async def relay(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Relay]:
    database = tmp_path / "relay.db"
    outbox = tmp_path / "sms-outbox.jsonl"
    send_delivered, receive_delivered = trio.open_memory_channel[SmsMessage](1000)
    # One worker: SMS are delivered in submission order, so once a later SMS
    # arrives we know an earlier submission would have arrived before it.
    dispatcher = SmsDispatcher(OutboxGateway(outbox), workers=1,
                               on_sent=send_delivered.send_nowait)
    async with open_sqlite_store(database) as store:
        await nursery.start(dispatcher.run)
        secret = secrets.token_bytes(32)
        service = EnrolmentService(store, dispatcher, secret=secret)
        await admin.create_organisation(store, ORGANISATION, 10, T0)
        await admin.declare_user(store, ORGANISATION, DECLARED, T0)
        yield Relay(service, secret, store, database, outbox, dispatcher, receive_delivered)


# -- happy path and single use -------------------------------------------------


async def test_happy_path_registers_a_device(relay: Relay) -> None:
    code = await relay.request_code()
    [line] = relay.outbox_lines()
    assert set(line) == {"to", "body", "sent_at"}
    assert line["to"] == DECLARED
    assert "expires in 10 minutes" in line["body"]

    account = new_account()
    registration = await verify(relay, DECLARED, code, T0 + 1_000, account=account)
    device = registration.device

    assert registration.revoked == ()
    assert device.device_id == 1
    identity_key = account.identity_key
    assert device.identity_key == identity_key
    assert device.registered_at == T0 + 1_000
    user = await relay.store.find_user_by_phone(DECLARED)
    assert user is not None
    assert user.state is UserState.ENROLLED
    assert device.user_id == user.user_id
    assert await relay.store.list_devices(user.user_id) == [device]
    assert await relay.store.account(user.user_id) == AccountRecord(
        account_key=account.account_key, device_list=account.device_list,
        device_list_version=FIRST_DEVICE_LIST_VERSION)


async def test_phone_may_be_written_in_any_international_form(relay: Relay) -> None:
    code = await relay.request_code()
    registration = await verify(relay, "+33 6 12 34 56 78", code, T0)
    assert registration.device.device_id == 1


async def test_code_is_single_use(relay: Relay) -> None:
    code = await relay.request_code()
    await verify(relay, DECLARED, code, T0 + 1)
    with pytest.raises(VerificationFailed):
        await verify(relay, DECLARED, code, T0 + 2)


async def test_a_new_code_replaces_the_previous_one(relay: Relay) -> None:
    first = await relay.request_code(now=T0)
    second = await relay.request_code(now=T0 + 1)
    if first != second:
        with pytest.raises(VerificationFailed):
            await verify(relay, DECLARED, first, T0 + 2)
    await verify(relay, DECLARED, second, T0 + 3)


# -- failures --------------------------------------------------------------------


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_wrong_code_fails_and_right_code_still_works(relay: Relay) -> None:
    code = await relay.request_code()
    with pytest.raises(VerificationFailed):
        await verify(relay, DECLARED, other_code(code), T0 + 1)
    registration = await verify(relay, DECLARED, code, T0 + 2)
    assert registration.device.device_id == 1


async def test_expired_code_fails(relay: Relay) -> None:
    code = await relay.request_code()
    with pytest.raises(VerificationFailed):
        await verify(relay, DECLARED, code, T0 + CODE_TTL_MS)
    # The last millisecond of validity still works (fresh code: the check above used one).
    code = await relay.request_code(now=T0 + CODE_TTL_MS)
    await verify(relay, DECLARED, code, T0 + 2 * CODE_TTL_MS - 1)


async def test_check_after_the_limit_is_refused_even_with_the_right_code(relay: Relay) -> None:
    code = await relay.request_code()
    for attempt in range(MAX_CHECKS_PER_CODE):
        with pytest.raises(VerificationFailed):
            await verify(relay, DECLARED, other_code(code), T0 + attempt)
    # From another address: the limit of this code is reached, not the address's.
    with pytest.raises(VerificationFailed):
        await verify(relay, DECLARED, code, T0 + 10, address="192.0.2.2")


async def test_unknown_number_fails_like_a_wrong_code(relay: Relay) -> None:
    with pytest.raises(VerificationFailed) as unknown:
        await verify(relay, UNDECLARED, "123456", T0)
    code = await relay.request_code()
    with pytest.raises(VerificationFailed) as wrong:
        await verify(relay, DECLARED, other_code(code), T0)
    assert str(unknown.value) == str(wrong.value)


@pytest.mark.parametrize("bad_code", ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", " 123456"])
async def test_malformed_code_is_an_invalid_request_and_counts_nothing(
    relay: Relay, bad_code: str
) -> None:
    code = await relay.request_code()
    for _ in range(MAX_CHECKS_PER_CODE + 1):
        with pytest.raises(InvalidRequest):
            await verify(relay, DECLARED, bad_code, T0)
    await verify(relay, DECLARED, code, T0)


@pytest.mark.parametrize(
    "identity_key",
    [
        b"",
        bytes(31),
        bytes(33),
        bytes(32),  # small-order point: any signature would verify against it
        bytes([1]) + bytes(31),  # the identity point
        b"\xff" * 32,  # not a point encoding
    ],
)
async def test_bad_identity_key_is_an_invalid_request(relay: Relay, identity_key: bytes) -> None:
    code = await relay.request_code()
    valid = new_account()
    with pytest.raises(InvalidRequest):
        await relay.service.verify(DECLARED, code, identity_key, valid.account_key,
                                   valid.device_list, T0, address=ADDRESS)
    await verify(relay, DECLARED, code, T0, account=valid)


async def test_invalid_phone_number_propagates(relay: Relay) -> None:
    with pytest.raises(InvalidPhoneNumber):
        await relay.service.start("06 12 34 56 78", T0, address=ADDRESS)
    with pytest.raises(InvalidPhoneNumber):
        await verify(relay, "+33 1", "123456", T0)


# -- rate limit, and undeclared numbers -------------------------------------------


def address(index: int) -> str:
    """Another source address per index: the limits per number, not per address, are tested."""
    return f"198.51.100.{index}"


async def test_sends_are_rate_limited_over_a_rolling_window(relay: Relay) -> None:
    for index in range(MAX_SENDS_PER_NUMBER_PER_DAY):
        await relay.request_code(now=T0 + index, address=address(index))
    with pytest.raises(RateLimited, match="for this number; retry after 86400 s"):
        await relay.service.start(DECLARED, T0 + MAX_SENDS_PER_NUMBER_PER_DAY,
                                  address=address(50))
    with pytest.raises(RateLimited):
        await relay.service.start(DECLARED, T0 + SEND_WINDOW_MS - 1, address=address(51))
    # The first send leaves the window: exactly one more is allowed.
    await relay.request_code(now=T0 + SEND_WINDOW_MS, address=address(52))
    with pytest.raises(RateLimited):
        await relay.service.start(DECLARED, T0 + SEND_WINDOW_MS, address=address(53))
    assert len(relay.outbox_lines()) == MAX_SENDS_PER_NUMBER_PER_DAY + 1


async def test_undeclared_number_is_answered_like_a_declared_one(relay: Relay) -> None:
    for index in range(MAX_SENDS_PER_NUMBER_PER_DAY):
        now = T0 + index
        # Same answer: both return normally (start returns None by signature).
        await relay.service.start(UNDECLARED, now, address=address(index))
        await relay.service.start(DECLARED, now, address=address(index))
        # Delivery is in submission order: had the undeclared number been
        # submitted, it would arrive before this one.
        assert (await relay.next_sms()).to == DECLARED

    later = T0 + MAX_SENDS_PER_NUMBER_PER_DAY
    with pytest.raises(RateLimited) as undeclared_refusal:
        await relay.service.start(UNDECLARED, later, address=address(50))
    with pytest.raises(RateLimited) as declared_refusal:
        await relay.service.start(DECLARED, later, address=address(50))
    assert str(undeclared_refusal.value) == str(declared_refusal.value)

    # The same store work happened for both numbers...
    for phone in (DECLARED, UNDECLARED):
        key = phone_key(relay.secret, phone)
        [(sends,)] = relay.sql("SELECT COUNT(*) FROM sms_sends WHERE phone_key = ?", (key,))
        assert sends == MAX_SENDS_PER_NUMBER_PER_DAY
    # ...but only the declared one got SMS.
    assert {line["to"] for line in relay.outbox_lines()} == {DECLARED}
    assert len(relay.outbox_lines()) == MAX_SENDS_PER_NUMBER_PER_DAY
    assert relay.dispatcher.outcomes.sent == MAX_SENDS_PER_NUMBER_PER_DAY
    assert relay.dispatcher.outcomes.dropped == 0


# -- secrets at rest ---------------------------------------------------------------


def _text_values(relay: Relay) -> list[str]:
    tables = [name for (name,) in relay.sql("SELECT name FROM sqlite_master WHERE type='table'")]
    values: list[str] = []
    for table in tables:
        # Table names come from sqlite_master, not from input.
        for row in relay.sql(f'SELECT * FROM "{table}"'):
            values.extend(str(value) for value in row if not isinstance(value, bytes))
    return values


async def test_code_is_stored_as_a_keyed_hash(relay: Relay) -> None:
    code = await relay.request_code()
    key = phone_key(relay.secret, DECLARED)

    [(stored_hash,)] = relay.sql("SELECT code_hash FROM verification_codes WHERE phone_key = ?",
                                 (key,))
    assert isinstance(stored_hash, bytes)
    assert stored_hash == hash_code(relay.secret, key, code)
    assert code.encode() not in stored_hash
    assert not any(code in value for value in _text_values(relay))


async def test_undeclared_numbers_are_not_kept_in_clear(relay: Relay) -> None:
    await relay.service.start(UNDECLARED, T0, address=ADDRESS)
    assert not any(UNDECLARED[1:] in value for value in _text_values(relay))
    for path in relay.database.parent.glob(relay.database.name + "*"):  # with -wal and -shm
        assert UNDECLARED[1:].encode() not in path.read_bytes()


async def test_services_given_the_same_secret_verify_each_others_codes(relay: Relay) -> None:
    code = await relay.request_code()
    other_node = EnrolmentService(relay.store, relay.dispatcher, secret=relay.secret)
    await verify(relay, DECLARED, code, T0, service=other_node)


async def test_a_service_with_another_secret_verifies_no_code(relay: Relay) -> None:
    code = await relay.request_code()
    stranger = EnrolmentService(relay.store, relay.dispatcher, secret=secrets.token_bytes(32))
    with pytest.raises(VerificationFailed):
        await verify(relay, DECLARED, code, T0, service=stranger)
    await verify(relay, DECLARED, code, T0)


async def test_the_secret_is_not_in_the_store(relay: Relay) -> None:
    await relay.request_code()
    for path in relay.database.parent.glob(relay.database.name + "*"):  # with -wal and -shm
        data = path.read_bytes()
        assert relay.secret not in data
        assert relay.secret.hex().encode() not in data


# -- device limit and organisation state ---------------------------------------------


async def test_each_enrolment_revokes_the_previous_account_identity(relay: Relay) -> None:
    # More enrolments than MAX_DEVICES_PER_USER: each one replaces the devices, so the limit
    # never refuses one. One round per window, so the send limit never interferes.
    previous: NewAccount | None = None
    for index in range(MAX_DEVICES_PER_USER + 1):
        now = T0 + index * SEND_WINDOW_MS
        code = await relay.request_code(now=now)
        account = new_account()
        registration = await verify(relay, DECLARED, code, now, account=account)
        assert registration.device.device_id == index + 1
        assert registration.revoked == (() if index == 0 else (index,))
        user = await relay.store.find_user_by_phone(DECLARED)
        assert user is not None
        assert await relay.store.list_devices(user.user_id) == [registration.device]
        stored = await relay.store.account(user.user_id)
        assert stored is not None and stored.account_key == account.account_key
        if previous is not None:
            notice = await relay.store.revoked_device(user.user_id, index)
            assert notice == RevokedDevice(identity_key=previous.identity_key,
                                           reason=REENROLMENT_REVOKE_REASON,
                                           revoked_at=now)
        previous = account


async def test_an_enrolment_under_the_account_key_in_use_is_refused(relay: Relay) -> None:
    first = new_account()
    await verify(relay, DECLARED, await relay.request_code(), T0, account=first)
    code = await relay.request_code(now=T0 + 1)
    identity_key = new_identity_key()
    same_key = NewAccount(identity_key=identity_key, account=first.account,
                          device_list=sign_device_list(first.account, version=1,
                                                       devices=(identity_key,)).encoded)
    with pytest.raises(InvalidRequest, match="new account key"):
        await verify(relay, DECLARED, code, T0 + 2, account=same_key)
    user = await relay.store.find_user_by_phone(DECLARED)
    assert user is not None
    [device] = await relay.store.list_devices(user.user_id)
    assert device.identity_key == first.identity_key
    # The code is still pending: a new account key enrols.
    registration = await verify(relay, DECLARED, code, T0 + 3)
    assert registration.revoked == (1,)


def _other_list(account: NewAccount, case: str) -> tuple[bytes, bytes]:
    """(account key, device list) sent with ``account.identity_key``, wrong as ``case`` says."""
    other = ed25519_keypair_from_private(secrets.token_bytes(32))
    key, identity = account.account_key, account.identity_key
    lists = {
        "another account's list": (key, sign_device_list(
            other, version=1, devices=(identity,)).encoded),
        "version 2": (key, sign_device_list(account.account, version=2,
                                            devices=(identity,)).encoded),
        "another device": (key, sign_device_list(account.account, version=1,
                                                 devices=(new_identity_key(),)).encoded),
        "a second device": (key, sign_device_list(
            account.account, version=1, devices=(identity, new_identity_key())).encoded),
        "a bad signature": (key, account.device_list[:-1] + bytes([account.device_list[-1] ^ 1])),
        "truncated": (key, account.device_list[:-1]),
        "empty": (key, b""),
        "a small-order account key": (bytes(32), account.device_list),
        "a short account key": (key[:31], account.device_list),
    }
    return lists[case]


@pytest.mark.parametrize("case", [
    "another account's list", "version 2", "another device", "a second device",
    "a bad signature", "truncated", "empty", "a small-order account key",
    "a short account key"])
async def test_a_wrong_first_device_list_is_an_invalid_request_and_counts_nothing(
        relay: Relay, case: str) -> None:
    code = await relay.request_code()
    account = new_account()
    account_key, device_list = _other_list(account, case)
    for _ in range(MAX_CHECKS_PER_CODE + 1):
        with pytest.raises(InvalidRequest):
            await relay.service.verify(DECLARED, code, account.identity_key, account_key,
                                       device_list, T0, address=ADDRESS)
    user = await relay.store.find_user_by_phone(DECLARED)
    assert user is not None and user.state is UserState.DECLARED
    await verify(relay, DECLARED, code, T0, account=account)


@pytest.mark.parametrize("state", ["suspended", "terminated"])
async def test_inactive_organisation_cannot_register_devices(relay: Relay, state: str) -> None:
    code = await relay.request_code()
    await relay.store.set_organisation_state(name=ORGANISATION,
                                             state=OrganisationState(state))
    with pytest.raises(OrganisationInactive):
        await verify(relay, DECLARED, code, T0)
    user = await relay.store.find_user_by_phone(DECLARED)
    assert user is not None
    assert user.state is UserState.DECLARED


async def test_deleted_user_cannot_register(relay: Relay) -> None:
    code = await relay.request_code()
    await admin.delete_user(relay.store, ORGANISATION, DECLARED)
    with pytest.raises(VerificationFailed):
        await verify(relay, DECLARED, code, T0)


# -- admin operations ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Acme", "acme corp", "acme_corp", "é", "a" * 65, "acme\n"])
async def test_create_organisation_rejects_bad_names(relay: Relay, name: str) -> None:
    with pytest.raises(InvalidRequest):
        await admin.create_organisation(relay.store, name, 5, T0)


@pytest.mark.parametrize("seats", [0, -1, 1_000_001])
async def test_create_organisation_rejects_bad_seat_counts(relay: Relay, seats: int) -> None:
    with pytest.raises(InvalidRequest):
        await admin.create_organisation(relay.store, "beta", seats, T0)


async def test_admin_operations(relay: Relay) -> None:
    organisation = await admin.create_organisation(relay.store, "beta-2", 2, T0)
    assert organisation.name == "beta-2"
    assert organisation.seats == 2
    with pytest.raises(AlreadyExists):
        await admin.create_organisation(relay.store, "beta-2", 2, T0)
    assert (await admin.create_organisation(relay.store, "b" * 64, 1_000_000, T0)).seats == 10**6

    first = await admin.declare_user(relay.store, "beta-2", "+33 6 11 11 11 02", T0,
                                     new_user_id=lambda: "ab" * 16)
    assert first.user_id == "ab" * 16
    assert first.phone == "+33611111102"
    await admin.declare_user(relay.store, "beta-2", "+33611111101", T0)
    with pytest.raises(SeatLimitReached):
        await admin.declare_user(relay.store, "beta-2", "+33611111103", T0)
    with pytest.raises(AlreadyExists):
        await admin.declare_user(relay.store, ORGANISATION, "+33611111101", T0)
    with pytest.raises(InvalidPhoneNumber):
        await admin.declare_user(relay.store, "beta-2", "0611111104", T0)

    users = await admin.list_users(relay.store, "beta-2")
    assert [user.phone for user in users] == ["+33611111101", "+33611111102"]

    deleted = await admin.delete_user(relay.store, "beta-2", "+33 6 11 11 11 02")
    assert deleted == first
    with pytest.raises(NotFound):
        await admin.delete_user(relay.store, "beta-2", "+33611111102")
    with pytest.raises(InvalidPhoneNumber):
        await admin.delete_user(relay.store, "beta-2", "garbage")
    assert [user.phone for user in await admin.list_users(relay.store, "beta-2")] == [
        "+33611111101"
    ]
