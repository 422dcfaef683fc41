"""Every administrative change leaves an audit entry, whichever way an operator or an
administrator makes it.

The mutating methods are enumerated from the administration and directory protocols (every
public method that is not listed read-only below), so that a new one fails this walk until
a path that makes it is added here (or it is listed as read-only, or as not an administrative
change, with the reason). Each is made through the path that makes it in production: an
operator CLI command (``cryptopass-relay admin ...``, in-process, its store wrapped), or a
request to the admin API or the console (over ASGI, on an ``AdminService`` over the wrapped
store). The wrapper records every successful mutation and every audit entry appended; each
mutation must be followed, on the same path, by an entry of its action by that caller.

Problems are collected over the whole walk and reported together.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from typer.testing import CliRunner

import relay.cli
from enrolment.web.app import admin_app
from enrolment.web.auth import new_api_token, secret_hash
from enrolment.web.service import AdminService
from storage.base import AdminStore, Directory, OrganisationPolicy
from storage.sqlite import open_sqlite_store
from storage.store_url import open_store
from tests.storage_conformance import _register

PROTOCOLS: tuple[type, ...] = (AdminStore, Directory, OrganisationPolicy)
"""The administration protocols (``AdminStore`` holds ``AccountStore`` and ``AuditLog``) and
the directory they act on."""

READ_ONLY = frozenset({
    "cross_organisation_allowed", "find_account", "find_api_token", "find_user_by_phone",
    "get_licence", "get_organisation", "list_api_tokens", "list_audit", "list_devices",
    "list_organisations", "list_seat_reductions", "list_users", "load_admin_session",
    "load_principal",
})
"""Methods that change nothing. Every other public method of ``PROTOCOLS`` is a mutation."""

NOT_ADMINISTRATIVE_CHANGES = {
    "append_audit": "it is the audit log",
    "create_admin_session": "logging in (console session bookkeeping)",
    "delete_admin_session": "logging out",
    "take_login_attempt": "counting a password guess (the guess budget of logins)",
    "refund_login_attempt": "giving back the guess of a right password",
    "apply_due_seat_reductions": "applies reductions audited as licence.reduce when requested",
}

AUDITED_AS: dict[str, frozenset[str]] = {
    "create_organisation": frozenset({"organisation.create"}),
    "set_licence_terms": frozenset({"licence.terms"}),
    "set_organisation_state": frozenset({"organisation.active", "organisation.suspended",
                                         "organisation.terminated"}),
    "suspend_organisation": frozenset({"organisation.suspended"}),
    "terminate_organisation": frozenset({"organisation.terminated"}),
    "declare_user": frozenset({"user.declare"}),
    "delete_user": frozenset({"user.delete"}),
    "erase_user": frozenset({"user.erase"}),
    "revoke_device": frozenset({"device.revoke"}),
    "add_seats": frozenset({"licence.add"}),
    "request_seat_reduction": frozenset({"licence.reduce"}),
    "set_cross_organisation_allowed": frozenset({"policy.cross_organisation"}),
    "create_account": frozenset({"account.create"}),
    "set_account_password": frozenset({"account.password", "account.password_reset"}),
    "create_api_token": frozenset({"token.create"}),
    "revoke_api_token": frozenset({"token.revoke"}),
}
"""The audit action(s) each administrative change is recorded as."""

ORG = "acme"
PHONES = ("+33612340001", "+33612340002", "+33612340003", "+33612340004")
NEW_PASSWORD = "a passphrase of my own"


def _protocol_methods() -> set[str]:
    names: set[str] = set()
    for protocol in PROTOCOLS:
        for klass in protocol.__mro__:
            if klass.__module__.startswith("storage."):
                names.update(name for name, value in vars(klass).items()
                             if not name.startswith("_") and callable(value))
    return names


def _mutations() -> set[str]:
    return _protocol_methods() - READ_ONLY


@dataclass
class Walk:
    """What the wrapped store saw during the current step, and every problem found."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    performed: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def check(self, path: str, *, actor: str, actions: list[str]) -> None:
        """Each mutation of the step was followed by an entry of its action by ``actor``;
        the step appended ``actions``, in order."""
        pending: list[str] = []
        appended: list[str] = []
        for method, arguments in self.calls:
            if method == "append_audit":
                appended.append(arguments["action"])
                if arguments["actor"] != actor:
                    self.problems.append(f"{path}: audited as {arguments['actor']!r}, "
                                         f"not {actor!r}")
                for waiting in pending:
                    if arguments["action"] in AUDITED_AS[waiting]:
                        pending.remove(waiting)
                        break
            elif method not in NOT_ADMINISTRATIVE_CHANGES:
                self.performed.add(method)
                pending.append(method)
        self.problems.extend(f"{path}: {method} left no audit entry" for method in pending)
        if appended != actions:
            self.problems.append(f"{path}: audited {appended}, expected {actions}")
        self.calls.clear()


class RecordingStore:
    """A store whose successful mutations (and audit entries) are recorded in a ``Walk``."""

    def __init__(self, store: Any, walk: Walk) -> None:
        self._store = store
        self._walk = walk

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in _mutations():
            return attribute

        async def recorded(*arguments: Any, **keywords: Any) -> Any:
            result = await attribute(*arguments, **keywords)
            self._walk.calls.append((name, keywords))
            return result

        return recorded


class NoConnections:
    def user_deleted(self, user_id: str) -> int:
        return 0

    def device_revoked(self, user_id: str, device_id: int) -> int:
        return 0

    def organisation_suspended(self, user_id: str) -> int:
        return 0


def test_the_walk_knows_every_method_of_the_protocols() -> None:
    methods = _protocol_methods()
    assert methods >= READ_ONLY
    assert methods >= set(NOT_ADMINISTRATIVE_CHANGES)
    assert set(AUDITED_AS) == _mutations() - set(NOT_ADMINISTRATIVE_CHANGES), (
        "a new mutation of the administration protocols: add the audit action it is "
        "recorded as, and a path that makes it to the walk below")


def test_every_administrative_change_is_audited_on_the_path_that_makes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    walk = Walk()

    @asynccontextmanager
    async def recording_open_store(location: Any) -> AsyncIterator[Any]:
        async with open_store(location) as store:
            yield RecordingStore(store, walk)

    monkeypatch.setattr(relay.cli, "open_store", recording_open_store)
    runner = CliRunner()

    def cli(*arguments: str, actions: list[str]) -> dict[str, Any]:
        """Run ``admin --json ARGUMENTS`` as the operator CLI; its JSON answer."""
        path = "admin " + " ".join(arguments)
        result = runner.invoke(relay.cli.app, ["admin", "--data-dir", str(tmp_path), "--json",
                                               *arguments])
        if result.exit_code != 0:
            walk.problems.append(f"{path}: exit {result.exit_code}: {result.output.strip()}")
        walk.check(path, actor="cli", actions=actions)
        try:
            answer: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            return {}
        return answer

    cli("org", "create", ORG, "--seats", "5", actions=["organisation.create", "licence.terms"])
    cli("org", "create", "globex", "--seats", "1", "--offer", "annual_commitment",
        "--start", "2026-01-01", actions=["organisation.create", "licence.terms"])
    cli("user", "add", PHONES[0], "--org", ORG, actions=["user.declare"])
    cli("user", "delete", PHONES[0], "--org", ORG, actions=["user.delete"])
    operator = cli("operator", "create", "--email", "op@example.net",
                   actions=["account.create"])
    cli("org", "admin-add", "--org", ORG, "--email", "admin@acme.example",
        actions=["account.create"])
    admin = cli("account", "reset-password", "--email", "admin@acme.example",
                actions=["account.password_reset"])
    token = cli("token", "create", "--org", ORG, actions=["token.create"])
    cli("token", "revoke", str(token.get("token_id", 0)), "--org", ORG,
        actions=["token.revoke"])

    trio.run(_walk_the_site, tmp_path / "relay.db", walk,
             operator.get("one_time_password", ""), admin.get("one_time_password", ""))

    unwalked = _mutations() - set(NOT_ADMINISTRATIVE_CHANGES) - walk.performed
    walk.problems.extend(f"{method}: no path of the walk made it" for method in sorted(unwalked))
    assert not walk.problems, "\n".join(walk.problems)


async def _walk_the_site(database: Path, walk: Walk, operator_password: str,
                         admin_password: str) -> None:
    async with open_sqlite_store(database) as store:
        service = AdminService(RecordingStore(store, walk), NoConnections(),  # type: ignore[arg-type]
                               now_ms=lambda: time.time_ns() // 1_000_000)
        token = new_api_token()
        await store.create_api_token(organisation=ORG, token_hash=secret_hash(token), now=0)
        transport = httpx.ASGITransport(app=admin_app(service),  # type: ignore[arg-type]
                                        client=("192.0.2.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://admin.test",
                                     headers={"authorization": f"Bearer {token}"}) as api, \
                httpx.AsyncClient(transport=transport,
                                  base_url="https://admin.test") as operator:
            created = await store.find_api_token(secret_hash(token))
            as_token = f"token:{created.token_id}" if created is not None else "token:?"
            operator_csrf = ""  # once the operator has logged in

            async def call(method: str, path: str, actions: list[str], *,
                           client: httpx.AsyncClient = api, actor: str = as_token,
                           **request: Any) -> None:
                headers = {} if client is api else {"x-csrf-token": operator_csrf}
                answer = await client.request(method, f"/api/v1/orgs/{ORG}{path}",
                                              headers=headers, **request)
                if answer.status_code >= 400:
                    walk.problems.append(f"{method} {path}: {answer.status_code} {answer.text}")
                walk.check(f"{method} {path}", actor=actor, actions=actions)

            def quoted(phone: str) -> str:
                return urllib.parse.quote(phone, safe="")

            await call("POST", "/users", ["user.declare"], json={"phone": PHONES[1]})
            await call("POST", "/users.csv", ["user.declare"], content=f"phone\n{PHONES[2]}\n")
            await call("POST", f"/users/{quoted(PHONES[2])}/replace",
                       ["user.delete", "user.declare"], json={"phone": PHONES[3]})
            await call("DELETE", f"/users/{quoted(PHONES[3])}", ["user.delete"])
            user = await store.find_user_by_phone(PHONES[1])
            device_id = await _register(store, user) if user is not None else 0  # type: ignore[arg-type]
            await call("DELETE", f"/users/{quoted(PHONES[1])}/devices/{device_id}",
                       ["device.revoke"])
            await call("POST", f"/users/{quoted(PHONES[1])}/erase", ["user.erase"])
            await call("POST", "/licence/reductions", ["licence.reduce"], json={"seats": 2})

            # The console: the administrator's one-time password, changed on first login.
            async with httpx.AsyncClient(transport=transport,
                                         base_url="https://admin.test") as browser:
                page = await _log_in(browser, "admin@acme.example", admin_password)
                walk.calls.clear()  # the login: session bookkeeping
                answer = await browser.post("/account/password", data={
                    "csrf_token": _csrf_of(page), "current": admin_password,
                    "new": NEW_PASSWORD})
                if answer.status_code != 200:
                    walk.problems.append(f"POST /account/password: {answer.status_code}")
                walk.check("POST /account/password", actor="account:admin@acme.example",
                           actions=["account.password"])

            # The operator's actions, with its session (its one-time password changed first).
            page = await _log_in(operator, "op@example.net", operator_password)
            operator_csrf = _csrf_of(page)
            await operator.post("/account/password", data={
                "csrf_token": operator_csrf, "current": operator_password, "new": NEW_PASSWORD})
            walk.calls.clear()
            as_operator = {"client": operator, "actor": "account:op@example.net"}
            await call("POST", "/licence/additions", ["licence.add"], json={"seats": 1},
                       **as_operator)
            await call("POST", "/policy", ["policy.cross_organisation"],
                       json={"cross_organisation": False}, **as_operator)
            for state in ("suspended", "active", "terminated"):
                await call("POST", "/state", [f"organisation.{state}"], json={"state": state},
                           **as_operator)


async def _log_in(client: httpx.AsyncClient, email: str, password: str) -> str:
    """Log in through the console's form; the page it lands on."""
    form = await client.get("/login")
    answer = await client.post("/login", data={"csrf_token": _csrf_of(form.text),
                                               "email": email, "password": password},
                               follow_redirects=True)
    return answer.text


def _csrf_of(page: str) -> str:
    if 'name="csrf_token" value="' not in page:
        return ""
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]

