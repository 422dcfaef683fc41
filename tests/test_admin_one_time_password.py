"""The one-time password an operator's CLI prints logs in once; the session it opens may do
nothing but choose the account's own password (the console sends it to the Account page, the
API answers ``password_change_required``); afterwards it works like any session. A second
login with it is refused, and ``admin account reset-password`` issues a new one."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import psycopg
import pytest
import trio

from storage import postgres_schema, sqlite_schema
from storage.admin_records import RELAY_WIDE_AUDIT, PasswordState
from storage.postgres import open_postgres_store
from storage.sqlite import open_sqlite_store
from tests.admin_support import AdminSite, admin_site, csrf_of, log_in

__all__ = ["admin_site"]  # the fixture, used by name

RELAY = str(Path(sys.executable).parent / "cryptopass-relay")
NEW_PASSWORD = "my own long passphrase"
NEW_PHONE = "+33622222222"
TIMEOUT_S = 60


async def _cli(site: AdminSite, *arguments: str) -> dict[str, str]:
    """Run ``cryptopass-relay admin --json ARGUMENTS`` on the relay's data directory."""
    with trio.fail_after(TIMEOUT_S):
        done = await trio.run_process(
            [RELAY, "admin", "--data-dir", str(site.relay.data_dir), "--json", *arguments],
            capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    answer: dict[str, str] = json.loads(done.stdout)
    return answer


async def test_a_one_time_password_logs_in_once_and_must_be_changed(
        admin_site: AdminSite) -> None:
    site = admin_site
    email = "new@acme.example"
    password = (await _cli(site, "org", "admin-add", "--org", "acme",
                           "--email", email))["one_time_password"]
    async with site.client() as browser:
        first = await log_in(site, browser, email, password)
        assert (first.status_code, first.headers["location"]) == (303, "/account")
        page = await browser.get("/account")
        assert page.status_code == 200
        assert "You logged in with a one-time password" in page.text
        csrf = csrf_of(page.text)

        # Until the password is changed, this session can do nothing else.
        for path in ("/", "/orgs/acme", "/orgs/acme/users", "/orgs/acme/audit"):
            sent = await browser.get(path)
            assert (sent.status_code, sent.headers["location"]) == (303, "/account"), path
        read = await browser.get("/api/v1/orgs/acme/users")
        assert read.status_code == 403
        assert read.json() == {
            "error": "password_change_required",
            "message": "change your one-time password first, on the console's Account page "
                       "(/account); until then this session may do nothing else"}
        change = await browser.post("/api/v1/orgs/acme/users", json={"phone": NEW_PHONE},
                                    headers={"x-csrf-token": csrf})
        assert (change.status_code, change.json()["error"]) == (403, "password_change_required")
        form = await browser.post("/orgs/acme/users", data={"csrf_token": csrf,
                                                             "phone": NEW_PHONE})
        assert (form.status_code, form.headers["location"]) == (303, "/account")
        assert await site.store.find_user_by_phone(NEW_PHONE) is None

        # A second login with it is refused, even while its session lives.
        async with site.client() as other:
            again = await log_in(site, other, email, password)
            assert again.status_code == 401
            assert "this one-time password was already used" in again.text

        same = await browser.post("/account/password", data={
            "csrf_token": csrf, "current": password, "new": password})
        assert same.status_code == 422
        assert "choose a password other than the one-time password" in same.text
        changed = await browser.post("/account/password", data={
            "csrf_token": csrf, "current": password, "new": NEW_PASSWORD})
        assert changed.status_code == 200
        assert "password changed" in changed.text
        assert "You logged in with a one-time password" not in changed.text

        # The same session may now do everything.
        assert (await browser.get("/orgs/acme/users")).status_code == 200
        declared = await browser.post("/api/v1/orgs/acme/users", json={"phone": NEW_PHONE},
                                      headers={"x-csrf-token": csrf})
        assert declared.status_code == 201

    account = await site.store.find_account(email)
    assert account is not None
    assert account.password_state is PasswordState.CHOSEN
    async with site.client() as later:
        again = await log_in(site, later, email, NEW_PASSWORD)
        assert (again.status_code, again.headers["location"]) == (303, "/")
    async with site.client() as later:
        refused = await log_in(site, later, email, password)
        assert refused.status_code == 401
        assert "wrong email or password" in refused.text
    found = await site.store.get_organisation("acme")
    assert found is not None
    entries = await site.store.list_audit(organisation_id=found.organisation_id,
                                          subject=email, limit=10)
    assert [(entry.actor, entry.action) for entry in entries] == [
        (f"account:{email}", "account.password"), ("cli", "account.create")]


async def test_two_logins_racing_with_one_one_time_password_open_one_session(
        admin_site: AdminSite) -> None:
    site = admin_site
    email = "race@acme.example"
    password = (await _cli(site, "org", "admin-add", "--org", "acme",
                           "--email", email))["one_time_password"]
    statuses: list[int] = []

    async def attempt() -> None:
        async with site.client() as browser:
            statuses.append((await log_in(site, browser, email, password)).status_code)

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt)
            nursery.start_soon(attempt)
    assert sorted(statuses) == [303, 401]


async def test_an_operator_resets_a_spent_one_time_password(admin_site: AdminSite) -> None:
    site = admin_site
    email = "op2@example.net"
    first = (await _cli(site, "operator", "create", "--email", email))["one_time_password"]
    async with site.client() as lost:
        assert (await log_in(site, lost, email, first)).status_code == 303
        # The browser is closed before the password is changed: the session is lost, and
        # the one-time password spent.
        async with site.client() as browser:
            assert (await log_in(site, browser, email, first)).status_code == 401
            second = (await _cli(site, "account", "reset-password",
                                  "--email", email))["one_time_password"]
            assert second != first
            # The reset ended every session of the account.
            assert (await lost.get("/account")).headers["location"] == "/login"
            opened = await log_in(site, browser, email, second)
            assert (opened.status_code, opened.headers["location"]) == (303, "/account")
            csrf = csrf_of((await browser.get("/account")).text)
            assert (await browser.post("/account/password", data={
                "csrf_token": csrf, "current": second, "new": NEW_PASSWORD})).status_code == 200
            # An operator: every organisation, now.
            listed = await browser.get("/")
            assert listed.status_code == 200 and "acme" in listed.text
            added = await browser.post("/api/v1/orgs/acme/licence/additions",
                                       json={"seats": 1}, headers={"x-csrf-token": csrf})
            assert added.status_code == 200
    entries = await site.store.list_audit(organisation_id=RELAY_WIDE_AUDIT, subject=email,
                                          limit=10)
    assert [(entry.actor, entry.action) for entry in entries] == [
        (f"account:{email}", "account.password"), ("cli", "account.password_reset"),
        ("cli", "account.create")]



async def test_accounts_made_before_one_time_passwords_keep_theirs_sqlite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrating a file of schema version 3: its accounts' passwords count as chosen (nothing
    tells which were still one-time), so no one is locked out."""
    database = tmp_path / "relay.db"
    with monkeypatch.context() as older:
        older.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:3])
        older.setattr(sqlite_schema, "LATEST_SCHEMA_VERSION", 3)
        async with open_sqlite_store(database):
            pass
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT version FROM schema_meta").fetchone() == (3,)
        connection.execute(_OLD_ACCOUNT)
    async with open_sqlite_store(database) as store:
        account = await store.find_account("old@example.net")
    assert account is not None
    assert (account.password_state, account.password_hash) == (PasswordState.CHOSEN, "h")
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT version FROM schema_meta").fetchone() == (
            sqlite_schema.LATEST_SCHEMA_VERSION,)


async def test_accounts_made_before_one_time_passwords_keep_theirs_postgresql(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.postgres_schemas import conninfo, fresh_schema

    with fresh_schema() as schema:
        with monkeypatch.context() as older:
            older.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS[:5])
            older.setattr(postgres_schema, "LATEST_SCHEMA_VERSION", 5)
            async with open_postgres_store(conninfo(schema)):
                pass
        with psycopg.connect(conninfo(schema), autocommit=True) as connection:
            assert connection.execute("SELECT version FROM schema_meta").fetchone() == (5,)
            connection.execute(_OLD_ACCOUNT)
        async with open_postgres_store(conninfo(schema)) as store:
            account = await store.find_account("old@example.net")
        assert account is not None
        assert account.password_state is PasswordState.CHOSEN
        with psycopg.connect(conninfo(schema), autocommit=True) as connection:
            assert connection.execute("SELECT version FROM schema_meta").fetchone() == (
                postgres_schema.LATEST_SCHEMA_VERSION,)


_OLD_ACCOUNT = ("INSERT INTO accounts (email, role, organisation_id, password_hash, created_at)"
                " VALUES ('old@example.net', 'operator', NULL, 'h', 0)")
