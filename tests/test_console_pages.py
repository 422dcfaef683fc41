"""Every console page in a real browser (Playwright driving Debian's Chromium, headless),
as an organisation administrator and as an operator, at a phone's width (390 px) and a
desktop's (1280 px):

- nothing is wider than the viewport: not the page, not a table, not a control;
- axe-core (from npm, installed by scripts/run-tests into tests/browser/node_modules),
  injected into the page, finds no violation of serious or critical impact;
- a screenshot of each goes to test-artifacts/console-pages/ (gitignored);

then, at the phone's width, each destructive action (delete, revoke, erase, terminate): its
one-click POST does nothing, and the action is done from its confirmation page, whose
notice says so on the next page.

One browser for the module's test, one context per role. Chromium comes from the system, as
for tests/test_admin_browser.py.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import trio

from storage.base import OrganisationState
from tests.admin_support import ACME_PHONES, PASSWORD, AdminSite
from tests.admin_support import admin_site as admin_site  # noqa: PLC0414 (fixture)
from tests.conftest import enrol
from tests.test_admin_browser import BROWSER_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_S

AXE = Path(__file__).resolve().parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console-pages"
WIDTHS = {"phone": (390, 844), "desktop": (1280, 800)}
BLOCKING_IMPACTS = frozenset({"serious", "critical"})

_MEASURE = """() => {
  const view = window.innerWidth;
  const box = (element) => {
    const rect = element.getBoundingClientRect();
    return {what: element.outerHTML.slice(0, 80), left: rect.left, right: rect.right,
            width: rect.width, scroll: element.scrollWidth, client: element.clientWidth};
  };
  const controls = [...document.querySelectorAll(
      'main a, main button, main input:not([type=hidden]), main select, main textarea')];
  return {view, page: document.documentElement.scrollWidth,
          tables: [...document.querySelectorAll('table')].map(box),
          controls: controls.map(box)};
}"""


def _require_tools() -> None:
    missing = [f"{CHROMIUM} (Debian's chromium)" for _ in [0] if not CHROMIUM.exists()]
    if not AXE.exists():
        missing.append(f"{AXE} (npm ci in tests/browser)")
    if not missing:
        return
    reason = f"missing {', '.join(missing)}: run scripts/run-tests, which installs them"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)  # only outside CI, on a machine where run-tests has not installed them


def _quoted(phone: str) -> str:
    return urllib.parse.quote(phone, safe="")


def _check(page: Any, name: str) -> None:
    """The page fits its viewport, passes axe-core, and is photographed."""
    width = page.viewport_size["width"]
    label = f"{name} at {width} px"
    sizes = page.evaluate(_MEASURE)
    assert sizes["view"] == width, label
    assert sizes["page"] <= width, f"{label}: the page is {sizes['page']} px wide"
    for table in sizes["tables"]:
        assert table["left"] >= 0 and table["right"] <= width + 0.5, (label, table)
        assert table["scroll"] <= table["client"], (label, "table scrolls sideways", table)
    for control in sizes["controls"]:  # every action in reach, none cut off
        assert control["width"] > 0, (label, "hidden", control)
        assert control["left"] >= 0 and control["right"] <= width + 0.5, (label, control)
    page.evaluate(AXE.read_text(encoding="utf-8"))  # by DevTools: the page's CSP stays on
    results = page.evaluate("async () => await axe.run(document, "
                            "{resultTypes: ['violations']})")
    blocking = [(violation["id"], violation["impact"], [node["html"][:120]
                                                        for node in violation["nodes"][:3]])
                for violation in results["violations"]
                if violation["impact"] in BLOCKING_IMPACTS]
    assert not blocking, (label, blocking)
    page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)


def _visit_all(page: Any, base: str, paths: dict[str, str]) -> list[str]:
    """Every page of ``paths`` at both widths; returns the names checked."""
    for size in WIDTHS.values():
        page.set_viewport_size({"width": size[0], "height": size[1]})
        for name, path in paths.items():
            page.goto(base + path)
            _check(page, name)
    return list(paths)


def _log_in(browser: Any, base: str, email: str) -> Any:
    context = browser.new_context(ignore_https_errors=True,
                                  viewport={"width": 390, "height": 844})
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    page = context.new_page()
    page.goto(base + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: not url.endswith("/login"))
    return page


def _confirmations(page: Any, operator: Any, base: str, device_id: int) -> None:
    """At the phone's width: each destructive action asks first, then acts."""
    from playwright.sync_api import expect

    csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    first, second, third = (_quoted(phone) for phone in ACME_PHONES)
    users = base + "/orgs/acme/users"
    # One-click POSTs (the actions' forms without the confirmation): only the question.
    for path in (f"/orgs/acme/users/{first}/delete", f"/orgs/acme/users/{third}/erase",
                 f"/orgs/acme/users/{second}/devices/{device_id}/revoke"):
        answer = page.request.post(base + path, form={"csrf_token": str(csrf)})
        assert answer.ok and 'name="confirm" value="yes"' in answer.text(), path
    page.goto(users)
    expect(page.locator("#users tbody tr")).to_have_count(3)

    page.get_by_role("link", name="Delete 06 12 34 56 78").click()
    expect(page.get_by_role("heading", name="Delete 06 12 34 56 78?")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("#users tbody tr")).to_have_count(3)
    page.get_by_role("link", name="Delete 06 12 34 56 78").click()
    page.get_by_role("button", name="Delete 06 12 34 56 78").click()
    expect(page.get_by_role("status")).to_contain_text("06 12 34 56 78 deleted")
    expect(page.locator("#users tbody tr")).to_have_count(2)

    page.goto(f"{users}/{second}")
    page.get_by_role("link", name=f"Revoke device {device_id}").click()
    page.get_by_role("button", name=f"Revoke device {device_id}").click()
    expect(page.get_by_role("status")).to_contain_text(f"device {device_id} of 06 98 76 54 32 "
                                                       "revoked")
    expect(page.get_by_text("No device yet.")).to_be_visible()

    page.goto(f"{users}/{third}")
    page.get_by_role("link", name="Erase this user").click()
    page.get_by_role("button", name="Erase 06 11 11 11 11").click()
    expect(page.get_by_role("status")).to_contain_text("06 11 11 11 11 erased")
    expect(page.locator("#users tbody tr")).to_have_count(1)

    operator.set_viewport_size({"width": 390, "height": 844})
    operator.goto(base + "/orgs/globex")
    operator.get_by_label("New state").select_option("terminated")
    operator.get_by_role("button", name="Change state").click()
    expect(operator.get_by_role("heading", name="Terminate globex?")).to_be_visible()
    _check(operator, "operator-terminate-asked")
    expect(operator.locator("#state")).to_have_count(0)
    operator.get_by_role("button", name="Terminate globex").click()
    expect(operator.get_by_role("status")).to_contain_text("globex is terminated")
    expect(operator.locator("#state")).to_have_text(OrganisationState.TERMINATED.value)


def _drive_browser(base: str, device_id: int) -> list[str]:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    first = _quoted(ACME_PHONES[0])
    user = f"/orgs/acme/users/{first}"
    admin_pages = {
        "admin-dashboard": "/orgs/acme", "admin-users": "/orgs/acme/users",
        "admin-user": f"/orgs/acme/users/{_quoted(ACME_PHONES[1])}",
        "admin-delete": user + "/delete", "admin-erase": user + "/erase",
        "admin-revoke": f"/orgs/acme/users/{_quoted(ACME_PHONES[1])}/devices/"
                        f"{device_id}/revoke",
        "admin-licence": "/orgs/acme/licence", "admin-audit": "/orgs/acme/audit",
        "admin-audit-filtered": "/orgs/acme/audit?action=user.read",
        "admin-account": "/account", "admin-forbidden": "/orgs/globex",
        "admin-not-found": "/orgs/acme/nothing"}
    operator_pages = {
        "operator-organisations": "/", "operator-dashboard": "/orgs/acme",
        "operator-users": "/orgs/acme/users", "operator-user": user,
        "operator-licence": "/orgs/acme/licence", "operator-audit": "/orgs/acme/audit",
        "operator-terminate": "/orgs/globex/terminate", "operator-account": "/account"}
    checked = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            anonymous = browser.new_context(ignore_https_errors=True)
            login = anonymous.new_page()
            checked += _visit_all(login, base, {"login": "/login"})
            login.get_by_label("Email").fill("admin@acme.example")
            login.get_by_label("Password").fill("wrong password, twelve+")
            login.get_by_role("button", name="Log in").click()
            expect(login.get_by_role("alert")).to_contain_text("wrong email or password")
            expect(login.get_by_label("Email")).to_have_value("admin@acme.example")
            _check(login, "login-refused")
            anonymous.close()

            admin = _log_in(browser, base, "admin@acme.example")
            operator = _log_in(browser, base, "operator@example.net")
            checked += _visit_all(admin, base, admin_pages)
            checked += _visit_all(operator, base, operator_pages)
            for size in WIDTHS.values():  # a refused form, with what was typed
                admin.set_viewport_size({"width": size[0], "height": size[1]})
                admin.goto(base + "/orgs/acme/users")
                admin.get_by_label("Phone number").fill("+33 6 not a number")
                admin.get_by_role("button", name="Add", exact=True).click()
                expect(admin.get_by_role("alert")).to_be_visible()
                expect(admin.get_by_label("Phone number")).to_have_value("+33 6 not a number")
                _check(admin, "admin-users-refused")
                admin.goto(base + "/orgs/acme/licence")
                admin.get_by_label("New number of seats").fill("99x")
                admin.get_by_role("button", name="Request the reduction").click()
                expect(admin.get_by_role("alert")).to_be_visible()
                expect(admin.get_by_label("New number of seats")).to_have_value("99x")
                _check(admin, "admin-licence-refused")
            checked += ["login-refused", "admin-users-refused", "admin-licence-refused"]
            admin.set_viewport_size({"width": 390, "height": 844})
            _confirmations(admin, operator, base, device_id)
            checked.append("operator-terminate-asked")
        finally:
            browser.close()
    return checked


async def test_every_console_page_fits_a_phone_passes_axe_and_confirms(
        admin_site: AdminSite) -> None:
    _require_tools()
    site = admin_site
    with trio.fail_after(TIMEOUT_S):
        device = await enrol(site.relay, ACME_PHONES[1])
        async with site.relay.connect() as client:  # so that it has a last-seen day
            await client.authenticate(device.user_id, device.device_id, device.key)
        checked = await trio.to_thread.run_sync(_drive_browser, site.base_url,
                                                device.device_id)
    assert len(checked) == 1 + 12 + 8 + 4
    shots = {path.name for path in ARTIFACTS.glob("*.png")}
    for name in checked:
        assert {f"{name}-390.png", f"{name}-1280.png"} & shots, name
