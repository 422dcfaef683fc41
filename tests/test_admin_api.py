"""The admin API over real HTTPS on loopback: every endpoint, authorisation between
organisations, CSRF, the login rate limit, bad input, licence reductions and the audit log."""

from __future__ import annotations

import datetime
import urllib.parse

import httpx
import pytest
import trio

from enrolment.web.auth import PASSWORD_GUESSES_ALLOWED
from storage.base import OrganisationState
from tests.admin_support import (
    ACME_PHONES,
    GLOBEX_PHONE,
    PASSWORD,
    AdminSite,
    csrf_of,
    log_in,
)
from tests.admin_support import admin_site as admin_site  # noqa: PLC0414 (fixture)

NEW_PHONE = "+33622222222"
TIMEOUT_S = 30


def _quoted(phone: str) -> str:
    return urllib.parse.quote(phone, safe="")


# Every endpoint, as (method, path under /api/v1/orgs/{org}, JSON body or None). The phone
# paths name a user of the organisation the path names.
def _endpoints(phone: str) -> list[tuple[str, str, object]]:
    user = f"/users/{_quoted(phone)}"
    return [
        ("GET", "/users", None),
        ("POST", "/users", {"phone": NEW_PHONE}),
        ("GET", "/users.csv", None),
        ("POST", "/users.csv", None),
        ("GET", user, None),
        ("DELETE", user, None),
        ("DELETE", user + "/devices/1", None),
        ("POST", user + "/replace", {"phone": NEW_PHONE}),
        ("GET", user + "/personal-data", None),
        ("POST", user + "/erase", None),
        ("GET", "/licence", None),
        ("POST", "/licence/reductions", {"seats": 4}),
        ("POST", "/licence/additions", {"seats": 1}),
        ("GET", "/audit", None),
        ("POST", "/state", {"state": "suspended"}),
        ("POST", "/policy", {"cross_organisation": False}),
    ]


async def _call(client: httpx.AsyncClient, method: str, path: str,
                body: object) -> httpx.Response:
    url = "/api/v1/orgs" + path
    if path.endswith("/users.csv") and method == "POST":
        return await client.post(url, content=f"phone\n{NEW_PHONE}\n")
    if body is None:
        return await client.request(method, url)
    return await client.request(method, url, json=body)


async def _snapshot(site: AdminSite, organisation: str) -> tuple[object, ...]:
    found = await site.store.get_organisation(organisation)
    assert found is not None
    return (found, await site.store.list_users(organisation),
            await site.store.get_licence(organisation),
            await site.store.list_seat_reductions(organisation),
            await site.store.list_audit(organisation_id=found.organisation_id, limit=500),
            await site.store.cross_organisation_allowed(found.organisation_id))


async def test_a_token_of_one_organisation_can_never_touch_another(admin_site: AdminSite) -> None:
    site = admin_site
    before = await _snapshot(site, "acme")
    with trio.fail_after(TIMEOUT_S):
        async with site.client(token=site.tokens["globex"]) as globex:
            for method, path, body in _endpoints(ACME_PHONES[0]):
                answer = await _call(globex, method, "/acme" + path, body)
                assert answer.status_code == 403, (method, path, answer.text)
                assert answer.json()["error"] == "forbidden"
                # An organisation that does not exist looks the same: names cannot be probed.
                answer = await _call(globex, method, "/no-such-org" + path, body)
                assert answer.status_code == 403, (method, path)
    assert await _snapshot(site, "acme") == before


async def test_a_session_of_one_organisation_can_never_touch_another(admin_site: AdminSite) -> None:
    site = admin_site
    before = await _snapshot(site, "acme")
    with trio.fail_after(TIMEOUT_S):
        async with site.client() as browser:
            assert (await log_in(site, browser, "admin@globex.example")).status_code == 303
            csrf = csrf_of((await browser.get("/account")).text)
            browser.headers["x-csrf-token"] = csrf
            for method, path, body in _endpoints(ACME_PHONES[0]):
                answer = await _call(browser, method, "/acme" + path, body)
                assert answer.status_code == 403, (method, path, answer.text)
            for page in ("/orgs/acme", "/orgs/acme/users", "/orgs/acme/licence",
                         "/orgs/acme/audit", f"/orgs/acme/users/{_quoted(ACME_PHONES[0])}"):
                assert (await browser.get(page)).status_code == 403, page
            for form in (f"/orgs/acme/users/{_quoted(ACME_PHONES[0])}/delete",
                         "/orgs/acme/users", "/orgs/acme/licence", "/orgs/acme/state"):
                answer = await browser.post(form, data={"csrf_token": csrf,
                                                        "phone": NEW_PHONE, "seats": "1",
                                                        "state": "suspended"})
                assert answer.status_code == 403, form
    assert await _snapshot(site, "acme") == before


async def test_every_endpoint_needs_credentials(admin_site: AdminSite) -> None:
    site = admin_site
    revoked = (await site.store.list_api_tokens("acme"))[0]
    token = site.tokens["acme"]
    await site.store.revoke_api_token(organisation="acme", token_id=revoked.token_id, now=0)
    before = await _snapshot(site, "acme")
    with trio.fail_after(TIMEOUT_S):
        for credentials in (None, token, "cpr_not-a-token"):
            async with site.client(token=credentials) as client:
                for method, path, body in _endpoints(ACME_PHONES[0]):
                    answer = await _call(client, method, "/acme" + path, body)
                    assert answer.status_code == 401, (credentials, method, path)
                    assert answer.json()["error"] == "unauthenticated"
        async with site.client() as client:
            answer = await client.get("/api/v1/orgs/acme/users",
                                      headers={"authorization": "Basic eDp5"})
            assert answer.status_code == 401
    assert await _snapshot(site, "acme") == before


async def test_users_are_declared_listed_replaced_and_deleted(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client(token=site.tokens["acme"]) as acme:
        listed = (await acme.get("/api/v1/orgs/acme/users")).json()["users"]
        assert [user["phone"] for user in listed] == sorted(ACME_PHONES)
        assert listed[0]["status"] == "declared"
        assert listed[0]["phone_national"] == "06 11 11 11 11"
        answer = await acme.post("/api/v1/orgs/acme/users", json={"phone": "+33 6 22 22 22 22"})
        assert answer.status_code == 201
        assert answer.json() == {"phone": NEW_PHONE, "status": "declared"}
        assert (await acme.post("/api/v1/orgs/acme/users",
                                json={"phone": NEW_PHONE})).json()["error"] == "already_exists"
        taken = await acme.post("/api/v1/orgs/acme/users", json={"phone": GLOBEX_PHONE})
        assert taken.status_code == 409
        found = await acme.get(f"/api/v1/orgs/acme/users/{_quoted(NEW_PHONE)}")
        assert found.json()["devices"] == []
        reads = (await acme.get("/api/v1/orgs/acme/audit",
                                params={"action": "user.read"})).json()["entries"]
        assert [(entry["subject"], entry["actor"][:6]) for entry in reads] == [
            (NEW_PHONE, "token:")]
        searched = await acme.get("/api/v1/orgs/acme/users", params={"q": "22 22"})
        assert [user["phone"] for user in searched.json()["users"]] == [NEW_PHONE]
        replaced = await acme.post(f"/api/v1/orgs/acme/users/{_quoted(NEW_PHONE)}/replace",
                                   json={"phone": "+33633333333"})
        assert replaced.json() == {"phone": "+33633333333", "status": "declared"}
        deleted = await acme.delete(f"/api/v1/orgs/acme/users/{_quoted('+33633333333')}")
        assert deleted.json() == {"deleted": "+33633333333"}
        gone = await acme.delete(f"/api/v1/orgs/acme/users/{_quoted('+33633333333')}")
        assert (gone.status_code, gone.json()["error"]) == (404, "not_found")
        # The other organisation's user is not found through this one.
        other = await acme.get(f"/api/v1/orgs/acme/users/{_quoted(GLOBEX_PHONE)}")
        assert other.status_code == 404
    assert await site.store.find_user_by_phone(GLOBEX_PHONE) is not None


async def test_the_seat_limit_is_a_clear_conflict(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client(token=site.tokens["acme"]) as acme:
        for phone in ("+33622222222", "+33633333333"):
            assert (await acme.post("/api/v1/orgs/acme/users",
                                    json={"phone": phone})).status_code == 201
        full = await acme.post("/api/v1/orgs/acme/users", json={"phone": "+33644444444"})
        assert full.status_code == 409
        assert full.json()["error"] == "seat_limit"
        assert "all 5 seats" in full.json()["message"]
    assert await site.store.find_user_by_phone("+33644444444") is None


@pytest.mark.parametrize(("body", "code"), [
    (b"not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b"{}", "invalid_request"),
    (b'{"phone": 33612345678}', "invalid_request"),
    (b'{"phone": "0612345678"}', "invalid_phone"),
    (b'{"phone": "+1"}', "invalid_phone"),
    (b'{"phone": "' + b"9" * 20_000 + b'"}', "too_large"),
])
async def test_bad_input_is_refused_and_changes_nothing(admin_site: AdminSite, body: bytes,
                                                        code: str) -> None:
    site = admin_site
    before = await _snapshot(site, "acme")
    async with site.client(token=site.tokens["acme"]) as acme:
        answer = await acme.post("/api/v1/orgs/acme/users", content=body,
                                 headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["error"] == code
    assert answer.json()["message"]
    assert await _snapshot(site, "acme") == before


async def test_bad_counts_and_filters_are_refused(admin_site: AdminSite) -> None:
    site = admin_site
    before = await _snapshot(site, "acme")
    async with site.client(token=site.tokens["acme"]) as acme:
        for seats in ("4", 4.5, True, -1, 5, 6):
            answer = await acme.post("/api/v1/orgs/acme/licence/reductions",
                                     json={"seats": seats})
            assert answer.status_code == 422, seats
        for query in ({"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"before": "-1"},
                      {"action": "a" * 65}, {"subject": "+1"}):
            assert (await acme.get("/api/v1/orgs/acme/audit",
                                   params=query)).status_code == 422, query
    assert await _snapshot(site, "acme") == before


async def test_licence_reductions_follow_the_contract_dates(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client(token=site.tokens["acme"]) as acme:
        licence = (await acme.get("/api/v1/orgs/acme/licence")).json()
        assert licence == {"seats": 5, "declared": 3, "offer": "monthly",
                           "period_start": "1970-01-01", "pending_reductions": []}
        refused = await acme.post("/api/v1/orgs/acme/licence/reductions", json={"seats": 1})
        assert refused.status_code == 409
        assert refused.json() == {
            "error": "reduction_below_declared",
            "message": "3 users are declared: delete 2 of them before reducing the licence "
                       "to 1 seats"}
        # Requested on 18 January: 1 February is only 14 days away.
        answer = await acme.post("/api/v1/orgs/acme/licence/reductions", json={"seats": 3})
        assert answer.status_code == 201
        assert answer.json()["seats"] == 3
        assert answer.json()["effective_on"] == "2026-03-01"
        pending = (await acme.get("/api/v1/orgs/acme/licence")).json()
        assert pending["seats"] == 5
        assert [(found["seats"], found["effective_on"])
                for found in pending["pending_reductions"]] == [(3, "2026-03-01")]
        # Additions are the operator's.
        assert (await acme.post("/api/v1/orgs/acme/licence/additions",
                                json={"seats": 2})).status_code == 403


async def test_operators_add_seats_and_run_the_lifecycle(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client() as operator:
        assert (await log_in(site, operator, "operator@example.net")).status_code == 303
        operator.headers["x-csrf-token"] = csrf_of((await operator.get("/account")).text)
        added = await operator.post("/api/v1/orgs/acme/licence/additions", json={"seats": 2})
        assert added.json() == {"seats": 7}
        missing = await operator.get("/api/v1/orgs/no-such-org/users")
        assert missing.status_code == 404
        assert (await operator.post("/api/v1/orgs/acme/state",
                                    json={"state": "paused"})).status_code == 422
        assert (await operator.post("/api/v1/orgs/acme/state",
                                    json={"state": "suspended"})).status_code == 200
        async with site.client(token=site.tokens["acme"]) as acme:
            refused = await acme.post("/api/v1/orgs/acme/users", json={"phone": NEW_PHONE})
            assert refused.status_code == 409
            assert refused.json()["error"] == "organisation_suspended"
            assert (await acme.post("/api/v1/orgs/acme/state",
                                    json={"state": "active"})).status_code == 403
        assert len(await site.store.list_users("acme")) == 3  # data kept while suspended
        assert (await operator.post("/api/v1/orgs/acme/state",
                                    json={"state": "active"})).status_code == 200
        assert (await operator.post("/api/v1/orgs/acme/policy",
                                    json={"cross_organisation": False})).status_code == 200
        assert (await operator.post("/api/v1/orgs/acme/state",
                                    json={"state": "terminated"})).status_code == 200
    terminated = await site.store.get_organisation("acme")
    assert terminated is not None
    assert terminated.state is OrganisationState.TERMINATED
    assert await site.store.list_users("acme") == []
    assert not await site.store.cross_organisation_allowed(terminated.organisation_id)


async def test_personal_data_export_is_audited_and_erasure_pseudonymises(
        admin_site: AdminSite) -> None:
    site = admin_site
    phone = ACME_PHONES[0]
    async with site.client(token=site.tokens["acme"]) as acme:
        assert (await acme.post("/api/v1/orgs/acme/users",
                                json={"phone": NEW_PHONE})).status_code == 201
        exported = (await acme.get(
            f"/api/v1/orgs/acme/users/{_quoted(NEW_PHONE)}/personal-data")).json()
        assert exported["user"]["phone"] == NEW_PHONE
        assert [entry["action"] for entry in exported["audit"]] == ["personal_data.read",
                                                                     "user.declare"]
        assert exported["audit"][0]["actor"].startswith("token:")
        assert exported["audit"][0]["address"] == "127.0.0.1"
        erased = (await acme.post(f"/api/v1/orgs/acme/users/{_quoted(NEW_PHONE)}/erase")).json()
        pseudonym = erased["pseudonym"]
        assert pseudonym.startswith("erased-")
        audit = (await acme.get("/api/v1/orgs/acme/audit")).json()["entries"]
        assert [entry["action"] for entry in audit] == ["user.erase", "personal_data.read",
                                                        "user.declare"]
        assert {entry["subject"] for entry in audit} == {pseudonym}
        assert NEW_PHONE not in (await acme.get("/api/v1/orgs/acme/audit")).text
        filtered = (await acme.get("/api/v1/orgs/acme/audit",
                                   params={"action": "user.declare"})).json()["entries"]
        assert [entry["action"] for entry in filtered] == ["user.declare"]
        paged = (await acme.get("/api/v1/orgs/acme/audit",
                                params={"limit": "1", "before": str(audit[0]["id"])})).json()
        assert [entry["action"] for entry in paged["entries"]] == ["personal_data.read"]
        assert (await acme.get(
            f"/api/v1/orgs/acme/users/{_quoted(phone)}/personal-data")).status_code == 200


async def test_csv_import_and_export(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client(token=site.tokens["acme"]) as acme:
        answer = await acme.post("/api/v1/orgs/acme/users.csv",
                                 content=f"phone\n{NEW_PHONE}\nnot-a-number\n{ACME_PHONES[0]}\n")
        problems = answer.json()["problems"]
        assert len(problems) == 2
        assert problems[0].startswith("row 2:")
        exported = (await acme.get("/api/v1/orgs/acme/users.csv")).text.splitlines()
        assert exported[0] == "phone,status,declared_on,enrolled_on,devices"
        assert sorted(line.split(",")[0] for line in exported[1:]) == sorted(
            [*ACME_PHONES, NEW_PHONE])


async def test_a_cookie_without_its_csrf_token_changes_nothing(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client() as browser:
        await log_in(site, browser, "admin@acme.example")
        csrf = csrf_of((await browser.get("/orgs/acme/users")).text)
        before = await _snapshot(site, "acme")
        for token in (None, "forged"):
            headers = {} if token is None else {"x-csrf-token": token}
            answer = await browser.post("/api/v1/orgs/acme/users", json={"phone": NEW_PHONE},
                                        headers=headers)
            assert (answer.status_code, answer.json()["error"]) == (403, "csrf")
            answer = await browser.post("/orgs/acme/users",
                                        data={"phone": NEW_PHONE, "csrf_token": token or ""})
            assert answer.status_code == 403
        assert await _snapshot(site, "acme") == before
        answer = await browser.post("/orgs/acme/users", data={"phone": NEW_PHONE,
                                                              "csrf_token": csrf})
        assert answer.status_code == 303
        answer = await browser.post("/api/v1/orgs/acme/users", json={"phone": "+33633333333"},
                                    headers={"x-csrf-token": csrf})
        assert answer.status_code == 201


async def test_login_forms_need_their_cookie(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client() as browser:
        form = await browser.get("/login")
        token = csrf_of(form.text)
        browser.cookies.clear()
        answer = await browser.post("/login", data={"csrf_token": token,
                                                    "email": "admin@acme.example",
                                                    "password": PASSWORD})
        assert answer.status_code == 403
        assert "__Host-cryptopass_session" not in browser.cookies


async def test_logins_are_rate_limited(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client() as browser:
        for _ in range(PASSWORD_GUESSES_ALLOWED):
            answer = await log_in(site, browser, "admin@acme.example", "wrong password!")
            assert answer.status_code == 401
            assert "wrong email or password" in answer.text
        answer = await log_in(site, browser, "admin@acme.example")
        assert answer.status_code == 429
        assert "__Host-cryptopass_session" not in browser.cookies
        # Another account from the same address is refused too (the address is counted).
        assert (await log_in(site, browser, "admin@globex.example")).status_code == 429


async def test_session_cookies_are_secure_and_logout_ends_them(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client() as browser:
        answer = await log_in(site, browser, "admin@acme.example")
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        for attribute in ("__Host-cryptopass_session=", "Secure", "HttpOnly",
                          "SameSite=strict", "Path=/"):
            assert attribute.lower() in cookie.lower(), attribute
        page = await browser.get("/orgs/acme")
        assert page.status_code == 200
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert "3 / 5" in page.text
        await browser.post("/logout", data={"csrf_token": csrf_of(page.text)})
        assert (await browser.get("/orgs/acme")).status_code == 303
        assert (await browser.get("/api/v1/orgs/acme/users")).status_code == 401


async def test_password_change_ends_other_sessions(admin_site: AdminSite) -> None:
    site = admin_site
    async with site.client() as first, site.client() as second:
        await log_in(site, first, "admin@acme.example")
        await log_in(site, second, "admin@acme.example")
        csrf = csrf_of((await first.get("/account")).text)
        short = await first.post("/account/password", data={
            "csrf_token": csrf, "current": PASSWORD, "new": "short"})
        assert short.status_code == 422
        wrong = await first.post("/account/password", data={
            "csrf_token": csrf, "current": "not it", "new": "a new long passphrase"})
        assert wrong.status_code == 403
        changed = await first.post("/account/password", data={
            "csrf_token": csrf, "current": PASSWORD, "new": "a new long passphrase"})
        assert changed.status_code == 200
        assert (await first.get("/orgs/acme")).status_code == 200
        assert (await second.get("/orgs/acme")).status_code == 303
    async with site.client() as third:
        assert (await log_in(site, third, "admin@acme.example")).status_code == 401
        assert (await log_in(site, third, "admin@acme.example",
                             "a new long passphrase")).status_code == 303


async def test_a_due_reduction_limits_declarations_from_its_first_day(
        admin_site: AdminSite) -> None:
    site = admin_site
    # Recorded earlier, due on 1 January; the relay's clock says 18 January.
    await site.store.request_seat_reduction(organisation="acme", seats=3,
                                            effective_on=datetime.date(2026, 1, 1), now=0)
    async with site.client(token=site.tokens["acme"]) as acme:
        full = await acme.post("/api/v1/orgs/acme/users", json={"phone": NEW_PHONE})
        assert (full.status_code, full.json()["error"]) == (409, "seat_limit")
        licence = (await acme.get("/api/v1/orgs/acme/licence")).json()
        assert (licence["seats"], licence["pending_reductions"]) == (3, [])
