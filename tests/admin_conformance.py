"""Conformance tests for the administration methods of ``storage.base.Store``.

``tests/storage_conformance.py`` star-imports this module at its end, so every backend that
runs the storage conformance suite runs these too (with the same ``store`` fixture).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Callable

import pytest
import trio

from storage.account_records import ADMIN_REVOKE_REASON
from storage.admin_records import (
    AccountRole,
    LicenceOffer,
    LoginAttempt,
    PasswordState,
    ReductionBelowDeclared,
)
from storage.admin_sql import MAX_AUDIT_PAGE, terminated_pseudonym
from storage.base import (
    AlreadyExists,
    NewSend,
    NotFound,
    OrganisationState,
    SeatLimitReached,
    SendStatus,
    Store,
    User,
)
from tests.storage_conformance import (
    DAY_MS,
    NOW,
    TIMEOUT_S,
    StoreOpener,
    _declared,
    _enrolled,
    _fetch_all,
    _fresh,
    _fresh_phone,
    _fresh_user_id,
    _organisation,
    _send,
    _send_now,
)

TODAY = datetime.date(2023, 11, 14)
"""The UTC day of NOW."""


def _hash(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def test_accounts_are_created_found_and_unique(store: Store) -> None:
    organisation = await _organisation(store)
    email = _fresh("admin") + "@example.org"
    admin = await store.create_account(email=email, role=AccountRole.ORGANISATION_ADMIN,
                                       organisation=organisation, password_is_one_time=False,
                                       password_hash="$argon2id$x",
                                       now=NOW)
    found = await store.get_organisation(organisation)
    assert found is not None
    assert admin.organisation_id == found.organisation_id
    assert await store.find_account(email) == admin
    assert await store.find_account("nobody@example.org") is None
    with pytest.raises(AlreadyExists):
        await store.create_account(email=email, role=AccountRole.OPERATOR, organisation=None,
                                   password_is_one_time=False, password_hash="h", now=NOW)
    operator = await store.create_account(email=_fresh("op") + "@example.org",
                                          role=AccountRole.OPERATOR, organisation=None,
                                          password_is_one_time=False, password_hash="h", now=NOW)
    assert operator.organisation_id is None


async def test_an_account_role_must_fit_its_organisation(store: Store) -> None:
    organisation = await _organisation(store)
    email = _fresh("bad") + "@example.org"
    with pytest.raises(ValueError, match="operator"):
        await store.create_account(email=email, role=AccountRole.OPERATOR,
                                   organisation=organisation, password_is_one_time=False,
                                   password_hash="h", now=NOW)
    with pytest.raises(ValueError, match="operator"):
        await store.create_account(email=email, role=AccountRole.ORGANISATION_ADMIN,
                                   organisation=None, password_is_one_time=False,
                                   password_hash="h", now=NOW)
    with pytest.raises(NotFound):
        await store.create_account(email=email, role=AccountRole.ORGANISATION_ADMIN,
                                   organisation="no-such-org", password_is_one_time=False,
                                   password_hash="h", now=NOW)
    assert await store.find_account(email) is None


async def test_sessions_expire_end_on_logout_and_on_password_change(store: Store) -> None:
    account = await store.create_account(email=_fresh("s") + "@example.org",
                                         role=AccountRole.OPERATOR, organisation=None,
                                         password_is_one_time=False, password_hash="old", now=NOW)
    first, second, third = _hash(_fresh("a")), _hash(_fresh("b")), _hash(_fresh("c"))
    for session_hash in (first, second, third):
        await store.create_admin_session(session_hash=session_hash,
                                         account_id=account.account_id, csrf_token="csrf",
                                         now=NOW, expires_at=NOW + DAY_MS)
    loaded = await store.load_admin_session(session_hash=first, now=NOW)
    assert loaded is not None
    assert loaded.account == account
    assert loaded.csrf_token == "csrf"
    assert await store.load_admin_session(session_hash=first, now=NOW + DAY_MS) is None
    await store.delete_admin_session(third)
    assert await store.load_admin_session(session_hash=third, now=NOW) is None
    await store.set_account_password(account_id=account.account_id, password_hash="new",
                                     keep_session_hash=first)
    assert await store.load_admin_session(session_hash=second, now=NOW) is None
    kept = await store.load_admin_session(session_hash=first, now=NOW)
    assert kept is not None
    assert kept.account.password_hash == "new"
    with pytest.raises(NotFound):
        await store.set_account_password(account_id=10**9, password_hash="x",
                                         keep_session_hash=None)
    with pytest.raises(NotFound):
        await store.create_admin_session(session_hash=_hash("x"), account_id=10**9,
                                         csrf_token="c", now=NOW, expires_at=NOW + 1)


async def test_a_one_time_password_opens_one_session_then_must_be_chosen(store: Store) -> None:
    account = await store.create_account(email=_fresh("once") + "@example.org",
                                         role=AccountRole.OPERATOR, organisation=None,
                                         password_is_one_time=True, password_hash="otp", now=NOW)
    assert account.password_state is PasswordState.ONE_TIME
    assert account.must_change_password
    first, second = _hash(_fresh("first")), _hash(_fresh("second"))
    assert await store.create_admin_session(
        session_hash=first, account_id=account.account_id, csrf_token="c", now=NOW,
        expires_at=NOW + DAY_MS, spends_one_time_password=True)
    loaded = await store.load_admin_session(session_hash=first, now=NOW)
    assert loaded is not None
    assert loaded.account.password_state is PasswordState.ONE_TIME_USED
    assert loaded.account.must_change_password
    # Spent: a second session is refused and nothing is created.
    assert not await store.create_admin_session(
        session_hash=second, account_id=account.account_id, csrf_token="c", now=NOW,
        expires_at=NOW + DAY_MS, spends_one_time_password=True)
    assert await store.load_admin_session(session_hash=second, now=NOW) is None
    # The holder chooses a password: its session goes on, free.
    await store.set_account_password(account_id=account.account_id, password_hash="mine",
                                     keep_session_hash=first)
    kept = await store.load_admin_session(session_hash=first, now=NOW)
    assert kept is not None
    assert (kept.account.password_state, kept.account.must_change_password) == (
        PasswordState.CHOSEN, False)
    assert not await store.create_admin_session(
        session_hash=second, account_id=account.account_id, csrf_token="c", now=NOW,
        expires_at=NOW + DAY_MS, spends_one_time_password=True)
    # An operator issues a new one-time password: every session ends.
    await store.set_account_password(account_id=account.account_id, password_hash="otp2",
                                     keep_session_hash=None, password_is_one_time=True)
    assert await store.load_admin_session(session_hash=first, now=NOW) is None
    found = await store.find_account(account.email)
    assert found is not None
    assert (found.password_state, found.password_hash) == (PasswordState.ONE_TIME, "otp2")


async def test_concurrent_logins_spend_a_one_time_password_once(store: Store) -> None:
    account = await store.create_account(email=_fresh("race") + "@example.org",
                                         role=AccountRole.OPERATOR, organisation=None,
                                         password_is_one_time=True, password_hash="otp", now=NOW)
    opened: list[bool] = []

    async def log_in() -> None:
        opened.append(await store.create_admin_session(
            session_hash=_hash(_fresh("s")), account_id=account.account_id, csrf_token="c",
            now=NOW, expires_at=NOW + DAY_MS, spends_one_time_password=True))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(log_in)
    assert sorted(opened) == [False, False, False, True]


async def test_api_tokens_belong_to_one_organisation_and_can_be_revoked(store: Store) -> None:
    mine, other = await _organisation(store), await _organisation(store)
    token_hash = _hash(_fresh("token"))
    token = await store.create_api_token(organisation=mine, token_hash=token_hash, now=NOW)
    assert await store.find_api_token(token_hash) == token
    assert await store.list_api_tokens(mine) == [token]
    assert await store.list_api_tokens(other) == []
    with pytest.raises(NotFound):
        await store.revoke_api_token(organisation=other, token_id=token.token_id, now=NOW)
    assert await store.find_api_token(token_hash) == token
    revoked = await store.revoke_api_token(organisation=mine, token_id=token.token_id,
                                           now=NOW + 1)
    assert revoked.revoked_at == NOW + 1
    again = await store.revoke_api_token(organisation=mine, token_id=token.token_id,
                                         now=NOW + 2)
    assert again.revoked_at == NOW + 1
    assert await store.find_api_token(token_hash) is None
    with pytest.raises(NotFound):
        await store.create_api_token(organisation="no-such-org", token_hash=_hash("y"), now=NOW)


async def test_the_audit_log_filters_pages_and_stays_per_organisation(store: Store) -> None:
    mine, other = await _organisation(store), await _organisation(store)
    mine_id = (await store.get_organisation(mine)).organisation_id  # type: ignore[union-attr]
    other_id = (await store.get_organisation(other)).organisation_id  # type: ignore[union-attr]
    entries = [await store.append_audit(organisation_id=mine_id, actor="account:a@example.org",
                                        action=action, subject=subject, address="192.0.2.1",
                                        now=NOW + index)
               for index, (action, subject) in enumerate([
                   ("user.declare", "+447000000001"), ("user.declare", "+447000000002"),
                   ("personal_data.read", "+447000000001"), ("user.delete", "+447000000001")])]
    await store.append_audit(organisation_id=other_id, actor="cli", action="user.declare",
                             subject="+447000000003", address="local", now=NOW)
    assert await store.list_audit(organisation_id=mine_id, limit=10) == entries[::-1]
    assert await store.list_audit(organisation_id=mine_id, action="user.declare",
                                  limit=10) == [entries[1], entries[0]]
    assert await store.list_audit(organisation_id=mine_id, subject="+447000000001",
                                  limit=10) == [entries[3], entries[2], entries[0]]
    page = await store.list_audit(organisation_id=mine_id, limit=2)
    assert page == [entries[3], entries[2]]
    assert await store.list_audit(organisation_id=mine_id, before_entry_id=page[-1].entry_id,
                                  limit=2) == [entries[1], entries[0]]
    for bad_limit in (0, MAX_AUDIT_PAGE + 1):
        with pytest.raises(ValueError, match="limit"):
            await store.list_audit(organisation_id=mine_id, limit=bad_limit)


async def test_erasing_a_user_pseudonymises_its_audit_entries(store: Store) -> None:
    organisation = await _organisation(store)
    user = await _declared(store, organisation)
    keep = await _declared(store, organisation)
    organisation_id = user.organisation_id
    for subject in (user.phone, keep.phone):
        await store.append_audit(organisation_id=organisation_id, actor="cli",
                                 action="user.declare", subject=subject, address="local",
                                 now=NOW)
    erased = await store.erase_user(organisation=organisation, phone=user.phone,
                                    pseudonym="erased-1")
    assert erased == user
    assert await store.find_user_by_phone(user.phone) is None
    subjects = [entry.subject
                for entry in await store.list_audit(organisation_id=organisation_id, limit=10)]
    assert subjects == [keep.phone, "erased-1"]
    with pytest.raises(NotFound):
        await store.erase_user(organisation=organisation, phone=user.phone, pseudonym="x")
    other = await _organisation(store)
    with pytest.raises(NotFound):  # a user of another organisation is not found
        await store.erase_user(organisation=other, phone=keep.phone, pseudonym="x")
    assert await store.find_user_by_phone(keep.phone) == keep


async def test_terminating_removes_every_user_and_marks_the_organisation(store: Store) -> None:
    organisation = await _organisation(store)
    user, _devices = await _enrolled(store, organisation=organisation)
    other = await _declared(store, organisation)
    bystander = await _declared(store)
    for subject in (user.phone, other.phone, "cli"):
        await store.append_audit(organisation_id=user.organisation_id, actor="cli",
                                 action="user.declare", subject=subject, address="local",
                                 now=NOW)
    removed = await store.terminate_organisation(organisation)
    assert sorted(found.user_id for found in removed) == sorted([user.user_id, other.user_id])
    assert await store.list_users(organisation) == []
    assert await store.list_devices(user.user_id) == []
    terminated = await store.get_organisation(organisation)
    assert terminated is not None
    assert terminated.state is OrganisationState.TERMINATED
    subjects = [entry.subject
                for entry in await store.list_audit(organisation_id=user.organisation_id,
                                                    limit=10)]
    assert subjects == ["cli", terminated_pseudonym(other), terminated_pseudonym(user)]
    assert user.phone not in subjects
    assert await store.find_user_by_phone(bystander.phone) == bystander
    with pytest.raises(NotFound):
        await store.terminate_organisation("no-such-org")


async def test_licence_terms_and_additions(store: Store) -> None:
    organisation = await _organisation(store, seats=2)
    licence = await store.get_licence(organisation)
    assert (licence.seats, licence.offer, licence.period_start) == (2, LicenceOffer.MONTHLY,
                                                                      TODAY)
    start = datetime.date(2024, 3, 31)
    licence = await store.set_licence_terms(organisation=organisation,
                                            offer=LicenceOffer.ANNUAL_COMMITMENT,
                                            period_start=start)
    assert (licence.offer, licence.period_start) == (LicenceOffer.ANNUAL_COMMITMENT, start)
    assert (await store.add_seats(organisation=organisation, added=3)).seats == 5
    with pytest.raises(ValueError, match="seat"):
        await store.add_seats(organisation=organisation, added=0)
    assert (await store.get_licence(organisation)).seats == 5
    with pytest.raises(NotFound):
        await store.get_licence("no-such-org")


async def test_a_reduction_below_the_declared_users_is_refused(store: Store) -> None:
    organisation = await _organisation(store, seats=5)
    for _ in range(3):
        await _declared(store, organisation)
    effective_on = datetime.date(2024, 1, 1)
    with pytest.raises(ReductionBelowDeclared, match="delete 1 of them") as refused:
        await store.request_seat_reduction(organisation=organisation, seats=2,
                                           effective_on=effective_on, now=NOW)
    assert (refused.value.seats, refused.value.declared) == (2, 3)
    for not_a_reduction in (5, 6, -1):
        with pytest.raises(ValueError, match="reduction"):
            await store.request_seat_reduction(organisation=organisation,
                                               seats=not_a_reduction,
                                               effective_on=effective_on, now=NOW)
    assert await store.list_seat_reductions(organisation) == []
    reduction = await store.request_seat_reduction(organisation=organisation, seats=3,
                                                   effective_on=effective_on, now=NOW)
    assert (reduction.seats, reduction.effective_on) == (3, effective_on)
    assert await store.list_seat_reductions(organisation) == [reduction]
    assert (await store.get_licence(organisation)).seats == 5  # pending, not in force


async def test_due_reductions_apply_on_their_day_and_the_latest_wins(store: Store) -> None:
    organisation = await _organisation(store, seats=10)
    later = await _organisation(store, seats=10)
    day = datetime.date(2024, 2, 1)
    await store.request_seat_reduction(organisation=organisation, seats=8, effective_on=day,
                                       now=NOW)
    await store.request_seat_reduction(organisation=organisation, seats=6, effective_on=day,
                                       now=NOW + 1)
    await store.request_seat_reduction(organisation=later, seats=4,
                                       effective_on=datetime.date(2024, 3, 1), now=NOW)
    await store.apply_due_seat_reductions(today=datetime.date(2024, 1, 31))
    assert (await store.get_licence(organisation)).seats == 10
    assert await store.apply_due_seat_reductions(today=day) >= 2
    assert (await store.get_licence(organisation)).seats == 6
    assert await store.list_seat_reductions(organisation) == []
    assert (await store.get_licence(later)).seats == 10
    assert len(await store.list_seat_reductions(later)) == 1
    for _ in range(6):
        await _declared(store, organisation)
    with pytest.raises(SeatLimitReached):
        await store.declare_user(organisation=organisation, phone=_fresh_phone(),
                                 user_id=_fresh_user_id(), now=NOW)


async def test_cross_organisation_policy_defaults_to_allowed(store: Store) -> None:
    organisation = await _organisation(store)
    found = await store.get_organisation(organisation)
    assert found is not None
    assert await store.cross_organisation_allowed(found.organisation_id)
    await store.set_cross_organisation_allowed(organisation=organisation, allowed=False)
    assert not await store.cross_organisation_allowed(found.organisation_id)
    await store.set_cross_organisation_allowed(organisation=organisation, allowed=True)
    assert await store.cross_organisation_allowed(found.organisation_id)
    with pytest.raises(NotFound):
        await store.set_cross_organisation_allowed(organisation="no-such-org", allowed=False)


async def test_organisations_are_listed_by_name(store: Store) -> None:
    names = {await _organisation(store), await _organisation(store)}
    listed = [found.name for found in await store.list_organisations()]
    assert names <= set(listed)
    assert listed == sorted(listed)


async def test_sends_follow_the_cross_organisation_policy(store: Store) -> None:
    mine, other = await _organisation(store), await _organisation(store)
    sender, [sender_device] = await _enrolled(store, organisation=mine)
    colleague, [colleague_device] = await _enrolled(store, organisation=mine)
    stranger, [stranger_device] = await _enrolled(store, organisation=other)

    def send(recipient: User, device_id: int, client_message_id: int) -> NewSend:
        return dataclasses.replace(
            _send(sender, recipient, [device_id], client_message_id,
                  sender_device_id=sender_device),
            sender_organisation_id=sender.organisation_id)

    assert (await _send_now(store, send(stranger, stranger_device, 1))).status \
        is SendStatus.ACCEPTED  # allowed by default, as the product promises
    await store.set_cross_organisation_allowed(organisation=other, allowed=False)
    refused = await _send_now(store, send(stranger, stranger_device, 2))
    assert refused.status is SendStatus.UNKNOWN_RECIPIENT
    assert len(await _fetch_all(store, stranger, stranger_device)) == 1  # nothing stored
    assert (await _send_now(store, send(colleague, colleague_device, 3))).status \
        is SendStatus.ACCEPTED  # inside the organisation, always
    await store.set_cross_organisation_allowed(organisation=other, allowed=True)
    await store.set_cross_organisation_allowed(organisation=mine, allowed=False)
    assert (await _send_now(store, send(stranger, stranger_device, 4))).status \
        is SendStatus.UNKNOWN_RECIPIENT  # the sender's own organisation refuses too
    unchecked = _send(sender, stranger, [stranger_device], 5, sender_device_id=sender_device)
    assert (await _send_now(store, unchecked)).status is SendStatus.ACCEPTED


def _checked_send(sender: User, sender_device: int, recipient: User, recipient_device: int,
                  client_message_id: int) -> NewSend:
    """A send the relay checks against the organisations (it carries the sender's)."""
    return dataclasses.replace(
        _send(sender, recipient, [recipient_device], client_message_id,
              sender_device_id=sender_device),
        sender_organisation_id=sender.organisation_id)


async def test_a_suspended_organisation_cannot_send_but_keeps_its_queues(store: Store) -> None:
    organisation = await _organisation(store)
    sender, [sender_device] = await _enrolled(store, organisation=organisation)
    recipient, [recipient_device] = await _enrolled(store, organisation=organisation)

    def send(client_message_id: int) -> NewSend:
        return _checked_send(sender, sender_device, recipient, recipient_device,
                             client_message_id)

    assert (await _send_now(store, send(1))).status is SendStatus.ACCEPTED
    for state in (OrganisationState.SUSPENDED, OrganisationState.TERMINATED):
        await store.set_organisation_state(name=organisation, state=state)
        assert (await _send_now(store, send(2))).status is SendStatus.ORGANISATION_SUSPENDED
    assert len(await _fetch_all(store, recipient, recipient_device)) == 1  # kept
    await store.set_organisation_state(name=organisation, state=OrganisationState.ACTIVE)
    assert (await _send_now(store, send(2))).status is SendStatus.ACCEPTED


async def test_a_user_of_a_suspended_organisation_cannot_be_sent_to(store: Store) -> None:
    """A look-up hides the users of an organisation that is not active; a send to one is refused
    the same way (UNKNOWN_RECIPIENT), and stores nothing (hardening review)."""
    mine, theirs = await _organisation(store), await _organisation(store)
    sender, [sender_device] = await _enrolled(store, organisation=mine)
    recipient, [recipient_device] = await _enrolled(store, organisation=theirs)

    def send(client_message_id: int) -> NewSend:
        return _checked_send(sender, sender_device, recipient, recipient_device,
                             client_message_id)

    assert (await _send_now(store, send(1))).status is SendStatus.ACCEPTED
    for state in (OrganisationState.SUSPENDED, OrganisationState.TERMINATED):
        await store.set_organisation_state(name=theirs, state=state)
        assert (await _send_now(store, send(2))).status is SendStatus.UNKNOWN_RECIPIENT
    assert len(await _fetch_all(store, recipient, recipient_device)) == 1  # only the first
    await store.set_organisation_state(name=theirs, state=OrganisationState.ACTIVE)
    assert (await _send_now(store, send(2))).status is SendStatus.ACCEPTED


async def test_one_device_is_revoked_with_its_queue(store: Store) -> None:
    organisation = await _organisation(store)
    user, [first, second] = await _enrolled(store, devices=2, organisation=organisation)
    sender, [sender_device] = await _enrolled(store, organisation=organisation)
    await _send_now(store, _send(sender, user, [first, second], 1,
                                 sender_device_id=sender_device))
    other = await _organisation(store)
    with pytest.raises(NotFound):  # through another organisation, nothing happens
        await store.revoke_device(organisation=other, phone=user.phone, device_id=first,
                                  now=NOW)
    revoked = await store.revoke_device(organisation=organisation, phone=user.phone,
                                        device_id=first, now=NOW)
    assert (revoked.user_id, revoked.device_id) == (user.user_id, first)
    assert [device.device_id for device in await store.list_devices(user.user_id)] == [second]
    assert await store.queue_depth(user_id=user.user_id, device_id=first) == 0
    assert len(await _fetch_all(store, user, second)) == 1
    notice = await store.revoked_device(user.user_id, first)  # the device is told why
    assert notice is not None and notice.reason == ADMIN_REVOKE_REASON
    with pytest.raises(NotFound):
        await store.revoke_device(organisation=organisation, phone=user.phone, device_id=first,
                                  now=NOW)


async def test_suspending_keeps_users_and_returns_them(store: Store) -> None:
    organisation = await _organisation(store)
    user, [device] = await _enrolled(store, organisation=organisation)
    declared = await _declared(store, organisation)
    suspended = await store.suspend_organisation(organisation)
    assert sorted(found.user_id for found in suspended) == sorted([user.user_id,
                                                                   declared.user_id])
    found = await store.get_organisation(organisation)
    assert found is not None
    assert found.state is OrganisationState.SUSPENDED
    assert [found.device_id for found in await store.list_devices(user.user_id)] == [device]
    with pytest.raises(NotFound):
        await store.suspend_organisation("no-such-org")


# -- the console's password-guess budget ---------------------------------------------

GUESSES = 3
GUESS_WINDOW_MS = 60_000


def _guess_key() -> bytes:
    return _hash(_fresh("guess-key"))


async def _guess(store: Store, *keys: bytes, now: int = NOW) -> LoginAttempt:
    return await store.take_login_attempt(keys=keys, allowed=GUESSES,
                                          window_ms=GUESS_WINDOW_MS, now=now)


async def test_the_guess_budget_refuses_past_its_limit_per_key_and_recovers(
        store: Store) -> None:
    email, address, other_email, other_address = (_guess_key() for _ in range(4))
    for _ in range(GUESSES):
        assert await _guess(store, email, address) == LoginAttempt(granted=True,
                                                                   retry_after_ms=0)
    # Refused until the window of the first counted guess ends, whichever key is shared.
    later = NOW + 1_000
    refused = LoginAttempt(granted=False, retry_after_ms=GUESS_WINDOW_MS - 1_000)
    assert await _guess(store, email, address, now=later) == refused
    assert await _guess(store, other_email, address, now=later) == refused
    assert await _guess(store, email, other_address, now=later) == refused
    for _ in range(GUESSES):
        assert (await _guess(store, email, address, now=NOW + GUESS_WINDOW_MS)).granted
    assert not (await _guess(store, email, address, now=NOW + GUESS_WINDOW_MS)).granted


async def test_a_refused_guess_is_counted_on_no_key(store: Store) -> None:
    spent, fresh = _guess_key(), _guess_key()
    for _ in range(GUESSES):
        assert (await _guess(store, spent)).granted
    for _ in range(5):
        assert not (await _guess(store, spent, fresh)).granted
    for _ in range(GUESSES):
        assert (await _guess(store, fresh)).granted
    assert not (await _guess(store, fresh)).granted


async def test_a_refunded_guess_comes_back_within_its_window_only(store: Store) -> None:
    key, unused = _guess_key(), _guess_key()
    for _ in range(GUESSES):
        assert (await _guess(store, key)).granted
    await store.refund_login_attempt(keys=[key], now=NOW + 1)
    assert (await _guess(store, key, now=NOW + 2)).granted
    assert not (await _guess(store, key, now=NOW + 3)).granted
    await store.refund_login_attempt(keys=[key], now=NOW + GUESS_WINDOW_MS)  # ended: nothing
    for _ in range(GUESSES + 2):  # more refunds than guesses never make a budget bigger
        await store.refund_login_attempt(keys=[unused], now=NOW)
    for fresh_key in (key, unused):
        for _ in range(GUESSES):
            assert (await _guess(store, fresh_key, now=NOW + GUESS_WINDOW_MS)).granted
        assert not (await _guess(store, fresh_key, now=NOW + GUESS_WINDOW_MS)).granted


async def test_a_guess_budget_needs_keys_and_a_positive_limit(store: Store) -> None:
    for keys, allowed, window_ms in (((), 1, 1), ((_guess_key(),), 0, 1),
                                     ((_guess_key(),), 1, 0)):
        with pytest.raises(ValueError, match="budget"):
            await store.take_login_attempt(keys=keys, allowed=allowed, window_ms=window_ms,
                                           now=NOW)


async def test_concurrent_guesses_on_two_stores_share_one_budget(
        store_opener: StoreOpener) -> None:
    # Two stores on one file or database: two relay nodes (or processes) guessing at once,
    # at one email from one address, then at a new email each time from another address.
    email, address, sprayed_address = _guess_key(), _guess_key(), _guess_key()
    rounds: tuple[Callable[[], tuple[bytes, bytes]], ...] = (
        lambda: (email, address), lambda: (_guess_key(), sprayed_address))

    async def guess(store: Store, keys: tuple[bytes, bytes], granted: list[bool]) -> None:
        granted.append((await _guess(store, *keys)).granted)

    async with store_opener() as first, store_opener() as second:
        for keys_of_a_guess in rounds:
            granted: list[bool] = []
            with trio.fail_after(TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    for index in range(20):
                        nursery.start_soon(guess, (first, second)[index % 2],
                                           keys_of_a_guess(), granted)
            assert sorted(granted) == [False] * (20 - GUESSES) + [True] * GUESSES


async def test_last_seen_moves_forward_once_a_day_per_device(store: Store) -> None:
    user, (first, second) = await _enrolled(store, devices=2)
    assert await store.devices_last_seen(user.user_id) == {}  # never authenticated yet
    assert await store.record_device_seen(user_id=user.user_id, device_id=first, day=TODAY)
    # The same day again writes nothing; an earlier day never takes it back.
    assert not await store.record_device_seen(user_id=user.user_id, device_id=first, day=TODAY)
    yesterday = TODAY - datetime.timedelta(days=1)
    assert not await store.record_device_seen(user_id=user.user_id, device_id=first,
                                              day=yesterday)
    assert await store.devices_last_seen(user.user_id) == {first: TODAY}
    later = TODAY + datetime.timedelta(days=40)  # across a month: compared as dates
    assert await store.record_device_seen(user_id=user.user_id, device_id=first, day=later)
    assert await store.record_device_seen(user_id=user.user_id, device_id=second, day=TODAY)
    assert await store.devices_last_seen(user.user_id) == {first: later, second: TODAY}
    # A device that is gone records nothing and raises nothing.
    assert not await store.record_device_seen(user_id=user.user_id, device_id=99, day=later)
    assert not await store.record_device_seen(user_id=_fresh_user_id(), device_id=1, day=later)
    other, _ = await _enrolled(store)
    assert await store.devices_last_seen(other.user_id) == {}
