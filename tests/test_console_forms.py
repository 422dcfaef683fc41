"""The console's forms over real HTTPS on loopback: confirmations before destructive actions,
signed notices after every change, rejected input kept, the operator's forms, the audit
filter, the navigation on refusal pages, and JSON errors for unknown API paths.

The layout, accessibility and the same confirmations in a real browser are in
tests/test_console_pages.py.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from storage.admin_records import LicenceOffer
from storage.base import OrganisationState
from tests.admin_support import ACME_PHONES, GLOBEX_PHONE, AdminSite, csrf_of, log_in
from tests.admin_support import admin_site as admin_site  # noqa: PLC0414 (fixture)
from tests.conftest import enrol

TIMEOUT_S = 60
NEW_PHONE = "+33622222222"


def _quoted(phone: str) -> str:
    return urllib.parse.quote(phone, safe="")


def _notice(page: str) -> str | None:
    found = re.search(r'<p class="notice" role="status">(.*?)</p>', page, re.S)
    return None if found is None else html.unescape(found.group(1))


@asynccontextmanager
async def _logged_in(site: AdminSite, email: str
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with site.client() as client:
        assert (await log_in(site, client, email)).status_code == 303
        yield client, csrf_of((await client.get("/account")).text)


async def _phones(site: AdminSite, organisation: str) -> list[str]:
    return [user.phone for user in await site.store.list_users(organisation)]


async def test_destructive_actions_act_only_once_confirmed(admin_site: AdminSite) -> None:
    site = admin_site
    with trio.fail_after(TIMEOUT_S):
        device = await enrol(site.relay, ACME_PHONES[1])
        async with _logged_in(site, "admin@acme.example") as (browser, csrf), \
                _logged_in(site, "operator@example.net") as (operator, operator_csrf):
            delete = f"/orgs/acme/users/{_quoted(ACME_PHONES[0])}/delete"
            erase = f"/orgs/acme/users/{_quoted(ACME_PHONES[2])}/erase"
            revoke = f"/orgs/acme/users/{_quoted(ACME_PHONES[1])}/devices/{device.device_id}/revoke"
            for path in (delete, erase, revoke):
                # One click (the action's form without its confirmation): the page that
                # asks, and nothing done.
                answer = await browser.post(path, data={"csrf_token": csrf},
                                            follow_redirects=True)
                assert answer.status_code == 200, path
                assert 'name="confirm" value="yes"' in answer.text
                for wrong in ("no", "", "YES"):
                    await browser.post(path, data={"csrf_token": csrf, "confirm": wrong})
            assert await _phones(site, "acme") == sorted(ACME_PHONES)
            assert len(await site.store.list_devices(device.user_id)) == 1
            asked = await browser.get(delete)
            assert "Delete 06 12 34 56 78?" in asked.text
            assert "disconnected" in asked.text
            # Confirmed: done, and the next page says so.
            for path, notice in ((delete, "06 12 34 56 78 deleted"),
                                 (revoke, f"device {device.device_id} of 06 98 76 54 32 "
                                          "revoked"),
                                 (erase, "06 11 11 11 11 erased")):
                answer = await browser.post(path, data={"csrf_token": csrf, "confirm": "yes"})
                assert answer.status_code == 303
                shown = await browser.get(answer.headers["location"])
                assert (_notice(shown.text) or "").startswith(notice), shown.text
            assert await _phones(site, "acme") == [ACME_PHONES[1]]
            assert await site.store.list_devices(device.user_id) == []
            # Termination, an operator's: the state form alone asks first.
            answer = await operator.post("/orgs/globex/state", data={
                "csrf_token": operator_csrf, "state": "terminated"})
            assert answer.status_code == 200 and "Terminate globex?" in answer.text
            assert await _phones(site, "globex") == [GLOBEX_PHONE]
            assert (await operator.get("/orgs/globex/terminate")).status_code == 200
            assert (await browser.get("/orgs/acme/terminate")).status_code == 403
            answer = await operator.post("/orgs/globex/state", data={
                "csrf_token": operator_csrf, "state": "terminated", "confirm": "yes"})
            assert answer.status_code == 303
            organisation = await site.store.get_organisation("globex")
            assert organisation is not None
            assert organisation.state is OrganisationState.TERMINATED
            assert await _phones(site, "globex") == []
            # Suspending asks nothing (resuming undoes it).
            answer = await operator.post("/orgs/acme/state", data={
                "csrf_token": operator_csrf, "state": "suspended"})
            assert answer.status_code == 303
            assert "acme is suspended" in (_notice(
                (await operator.get(answer.headers["location"])).text) or "")


async def test_notices_follow_every_change_and_cannot_be_forged(admin_site: AdminSite) -> None:
    site = admin_site
    with trio.fail_after(TIMEOUT_S):
        async with _logged_in(site, "admin@acme.example") as (browser, csrf), \
                _logged_in(site, "admin@acme.example") as (other, _):
            answer = await browser.post("/orgs/acme/users", data={"csrf_token": csrf,
                                                                  "phone": NEW_PHONE})
            assert answer.status_code == 303
            location = answer.headers["location"]
            page = (await browser.get(location)).text
            assert _notice(page) == "06 22 22 22 22 added: they may enrol now"
            # The same link in another session, or altered, shows no notice.
            assert _notice((await other.get(location)).text) is None
            forged = location.replace("added", "%3Cscript%3Ealert(1)%3C%2Fscript%3E")
            assert _notice((await browser.get(forged)).text) is None
            assert "<script>" not in (await browser.get(forged)).text
            plain = "/orgs/acme/users?" + urllib.parse.urlencode({"notice": "hello", "sig": ""})
            assert _notice((await browser.get(plain)).text) is None
            answer = await browser.post("/orgs/acme/licence", data={
                "csrf_token": csrf, "change": "reduce", "seats": "4"})
            shown = (await browser.get(answer.headers["location"])).text
            assert _notice(shown) == "reduction to 4 seats requested: it applies on 2026-03-01"


async def test_rejected_input_stays_in_its_form(admin_site: AdminSite) -> None:
    site = admin_site
    with trio.fail_after(TIMEOUT_S):
        async with _logged_in(site, "admin@acme.example") as (browser, csrf):
            answer = await browser.post("/orgs/acme/users", data={"csrf_token": csrf,
                                                                  "phone": "+33 6 <12>"})
            assert answer.status_code == 422
            assert 'value="+33 6 &lt;12&gt;"' in answer.text
            assert '<p class="error" role="alert">' in answer.text
            answer = await browser.post("/orgs/acme/licence", data={
                "csrf_token": csrf, "change": "reduce", "seats": "4x"})
            assert answer.status_code == 422
            assert re.search(r'id="seats"[^>]*value="4x"', answer.text)
            answer = await browser.post("/orgs/acme/licence", data={
                "csrf_token": csrf, "change": "reduce", "seats": "2"})  # below the 3 declared
            assert answer.status_code == 409
            assert re.search(r'id="seats"[^>]*value="2"', answer.text)
            answer = await browser.post(f"/orgs/acme/users/{_quoted(ACME_PHONES[0])}/replace",
                                        data={"csrf_token": csrf, "phone": ACME_PHONES[1]})
            assert answer.status_code == 409
            assert f'value="{ACME_PHONES[1]}"' in answer.text
            answer = await browser.post("/login", data={"csrf_token": "", "email": "x@y.z"})
            assert answer.status_code == 403
    assert await _phones(site, "acme") == sorted(ACME_PHONES)


async def test_operators_add_seats_set_the_policy_and_the_terms(admin_site: AdminSite) -> None:
    site = admin_site
    with trio.fail_after(TIMEOUT_S):
        async with _logged_in(site, "operator@example.net") as (operator, csrf), \
                _logged_in(site, "admin@acme.example") as (admin, admin_csrf):
            dashboard = (await operator.get("/orgs/acme")).text
            assert 'action="/orgs/acme/policy"' in dashboard
            assert 'action="/orgs/acme/policy"' not in (await admin.get("/orgs/acme")).text
            assert 'value="add"' not in (await admin.get("/orgs/acme/licence")).text
            for path, form in (("/orgs/acme/licence", {"change": "add", "seats": "3"}),
                               ("/orgs/acme/licence", {"change": "terms", "offer": "monthly",
                                                       "contract_start": "2026-01-01"}),
                               ("/orgs/acme/policy", {"cross_organisation": "refused"})):
                answer = await admin.post(path, data={"csrf_token": admin_csrf, **form})
                assert answer.status_code == 403, path
                assert 'aria-label="Main"' in answer.text  # the refusal keeps the navigation
            answer = await operator.post("/orgs/acme/licence", data={
                "csrf_token": csrf, "change": "add", "seats": "3"})
            assert "8 seats now" in (_notice(
                (await operator.get(answer.headers["location"])).text) or "")
            answer = await operator.post("/orgs/acme/licence", data={
                "csrf_token": csrf, "change": "terms", "offer": "annual_commitment",
                "contract_start": "2025-06-01"})
            assert answer.status_code == 303
            answer = await operator.post("/orgs/acme/licence", data={
                "csrf_token": csrf, "change": "terms", "offer": "monthly",
                "contract_start": "2062-06-01"})
            assert answer.status_code == 422
            assert 'value="2062-06-01"' in answer.text
            assert re.search(r'<option value="monthly" selected>', answer.text)
            answer = await operator.post("/orgs/acme/policy", data={
                "csrf_token": csrf, "cross_organisation": "refused"})
            assert answer.status_code == 303
            refused = (await operator.get("/orgs/acme")).text
            assert re.search(r'value="refused" checked', refused)
        licence = await site.store.get_licence("acme")
        assert (licence.seats, licence.offer, licence.period_start.isoformat()) == (
            8, LicenceOffer.ANNUAL_COMMITMENT, "2025-06-01")
        acme = await site.store.get_organisation("acme")
        assert acme is not None
        assert not await site.store.cross_organisation_allowed(acme.organisation_id)
        actions = [entry.action for entry in await site.store.list_audit(
            organisation_id=acme.organisation_id, limit=10)]
        assert actions[:3] == ["policy.cross_organisation", "licence.terms", "licence.add"]


async def test_audit_filter_dashboard_and_times(admin_site: AdminSite) -> None:
    site = admin_site
    with trio.fail_after(TIMEOUT_S):
        await enrol(site.relay, ACME_PHONES[0])
        async with _logged_in(site, "admin@acme.example") as (browser, csrf):
            await browser.post("/orgs/acme/users", data={"csrf_token": csrf,
                                                         "phone": NEW_PHONE})
            page = (await browser.get("/orgs/acme/audit?action=user.declare")).text
            assert '<select id="action" name="action">' in page
            assert '<option value="user.declare" selected>' in page
            assert page.count('data-label="What"') == 1
            # 18 January 2026, 12:00 UTC, in the relay's zone with its name.
            assert re.search(r'<time datetime="2026-01-18T12:00:00Z">18 Jan 2026, \d\d:00 \w+',
                             page)
            dashboard = (await browser.get("/orgs/acme")).text
            assert '<span id="seats">4 / 5</span>' in dashboard
            assert '<span id="enrolled">1 of 4</span>' in dashboard
            assert 'aria-label="4 of 5 seats used"' in dashboard
            assert 'width="80.0"' in dashboard and 'width="25.0"' in dashboard
            assert "User added" in dashboard  # the latest entries


async def test_every_page_has_the_navigation_and_the_api_answers_json(
        admin_site: AdminSite) -> None:
    site = admin_site
    with trio.fail_after(TIMEOUT_S):
        async with _logged_in(site, "admin@acme.example") as (browser, csrf):
            for path, status in (("/account", 200), ("/orgs/globex", 403),
                                 ("/orgs/acme/nothing-here", 404), ("/no/such/page", 404)):
                answer = await browser.get(path)
                assert answer.status_code == status, path
                assert 'href="/orgs/acme/users"' in answer.text, path
            browser.headers["x-csrf-token"] = csrf
            for method, path, status in (
                    ("GET", "/api/v1/nothing", 404), ("GET", "/api/", 404),
                    ("POST", "/api/v1/orgs/acme/users/x/y/z", 404),
                    ("PUT", "/api/v1/orgs/acme/users", 405)):
                answer = await browser.request(method, path)
                assert answer.status_code == status, path
                assert answer.headers["content-type"] == "application/json"
                assert set(answer.json()) == {"error", "message"}
        async with site.client() as anonymous:
            assert (await anonymous.get("/api/v1/nothing")).json()["error"] == "not_found"
            assert (await anonymous.get("/orgs/acme")).headers["location"] == "/login"
