"""The console in a real browser (Playwright driving Debian's Chromium, headless) against a
real relay: log in, add a user, see it become "enrolled" once a device enrols over QUIC,
delete it (confirmed) and see the device disconnected. Every page at both widths, with
axe-core, is in tests/test_console_pages.py. Screenshots of the main pages, at a phone's width
and a desktop's, go to test-artifacts/ (gitignored) for people to look at.

Chromium comes from the system (scripts/_venv.sh installs Debian's package when missing);
the test installs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from client.connection import ConnectionClosed, RelayClient
from tests.admin_support import PASSWORD, AdminSite
from tests.admin_support import admin_site as admin_site  # noqa: PLC0414 (fixture)
from tests.conftest import EnrolledDevice, enrol
from wire.frames import ErrorCode

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
PHONE = "+33622222222"
PHONE_NATIONAL = "06 22 22 22 22"
BROWSER_TIMEOUT_MS = 15_000
"""Bound on each browser step (a page load on a loaded CI machine), not a timing assertion."""
TIMEOUT_S = 120


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: run scripts/run-tests, which installs Debian's chromium"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class _LiveDevice:
    """A device connected to the relay in the test's trio loop, watched until it is closed."""

    def __init__(self) -> None:
        self.closed_with: int | None = None
        self.closed = trio.Event()

    async def run(self, site: AdminSite, device: EnrolledDevice, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with site.relay.connect() as client:
            await client.authenticate(device.user_id, device.device_id, device.key)
            await client.lookup([device.phone])
            task_status.started()
            await self._until_closed(client)

    async def _until_closed(self, client: RelayClient) -> None:
        try:
            async for _ in client.deliveries():
                pass
        except ConnectionClosed as closed:
            self.closed_with = closed.code
        self.closed.set()


def _drive_browser(site: AdminSite, token: trio.lowlevel.TrioToken,
                   enrol_device: Any, device_closed: Any) -> None:
    """The browser session; runs in a worker thread (Playwright's sync API blocks)."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            # The relay's development certificate is self-signed.
            context = browser.new_context(ignore_https_errors=True,
                                          viewport={"width": 390, "height": 844})
            context.set_default_timeout(BROWSER_TIMEOUT_MS)
            page = context.new_page()
            base = site.base_url

            page.goto(base + "/login")
            page.screenshot(path=str(ARTIFACTS / "login-phone.png"), full_page=True)
            page.get_by_label("Email").fill("admin@acme.example")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            expect(page.locator("#seats")).to_have_text("3 / 5")
            page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)

            page.get_by_role("link", name="Users").click()
            page.get_by_label("Phone number").fill("+33 6 22 22 22 22")
            page.get_by_role("button", name="Add", exact=True).click()
            row = page.locator(f'tr[data-phone="{PHONE}"]')
            expect(row.locator(".status")).to_have_text("declared")

            trio.from_thread.run(enrol_device, trio_token=token)
            page.reload()
            expect(row.locator(".status")).to_have_text("enrolled")
            page.set_viewport_size({"width": 1280, "height": 800})
            page.screenshot(path=str(ARTIFACTS / "users-desktop.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(ARTIFACTS / "users-phone.png"), full_page=True)

            row.get_by_role("link", name=PHONE_NATIONAL, exact=True).click()
            expect(page.get_by_role("heading", name="Devices")).to_be_visible()
            expect(page.locator("#devices td", has_text="Device 1")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "user-phone.png"), full_page=True)
            for name, path in (("licence", "/licence"), ("audit", "/audit")):
                page.goto(base + "/orgs/acme" + path)
                page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
            page.goto(base + "/account")
            page.screenshot(path=str(ARTIFACTS / "account-phone.png"), full_page=True)

            page.goto(base + "/orgs/acme/users")
            row.get_by_role("link", name=f"Delete {PHONE_NATIONAL}").click()
            page.get_by_role("button", name=f"Delete {PHONE_NATIONAL}").click()  # confirmed
            expect(page.get_by_role("status")).to_contain_text(f"{PHONE_NATIONAL} deleted")
            expect(page.locator(f'tr[data-phone="{PHONE}"]')).to_have_count(0)
            assert trio.from_thread.run(device_closed, trio_token=token) \
                == ErrorCode.DEVICE_REVOKED
            page.goto(base + "/orgs/acme/audit")
            expect(page.locator("td", has_text="user.delete")).to_have_count(1)
        finally:
            browser.close()


async def test_console_in_chromium(admin_site: AdminSite, nursery: trio.Nursery) -> None:
    _require_chromium()
    site = admin_site
    live = _LiveDevice()

    async def enrol_device() -> None:
        device = await enrol(site.relay, PHONE)
        await nursery.start(live.run, site, device)

    async def device_closed() -> int | None:
        with trio.fail_after(TIMEOUT_S):
            await live.closed.wait()
        return live.closed_with

    with trio.fail_after(TIMEOUT_S):
        await trio.to_thread.run_sync(_drive_browser, site, trio.lowlevel.current_trio_token(),
                                      enrol_device, device_closed)
    assert sorted(path.name for path in ARTIFACTS.glob("*.png")) >= [
        "account-phone.png", "audit-phone.png", "dashboard-phone.png", "licence-phone.png",
        "login-phone.png", "user-phone.png", "users-desktop.png", "users-phone.png"]
