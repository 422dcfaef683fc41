"""A relay serving the admin site over HTTPS on loopback, on a fixed clock, and helpers to
call it as an operator, an organisation administrator, a token holder or a browser."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from enrolment.web.auth import hash_password, new_api_token, secret_hash
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from storage.admin_records import AccountRole
from storage.base import Store
from tests.conftest import RelayUnderTest, SmsInbox, declare

FIXED_NOW = int(datetime.datetime(2026, 1, 18, 12, 0, tzinfo=datetime.UTC).timestamp() * 1000)
"""The relay's clock in these tests: 18 January 2026, 14 days before 1 February, so a
monthly reduction requested now applies on 1 March."""
PASSWORD = "correct horse battery staple"
ACME_PHONES = ("+33612345678", "+33698765432", "+33611111111")
GLOBEX_PHONE = "+447911123456"


@dataclass
class AdminSite:
    """The relay under test and credentials for two organisations and an operator."""

    relay: RelayUnderTest
    base_url: str
    tokens: dict[str, str]
    """Organisation name -> a valid API token of that organisation."""

    @property
    def store(self) -> Store:
        return self.relay.running.context.store

    def client(self, *, token: str | None = None) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(self.relay.running.cert_path))
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.AsyncClient(base_url=self.base_url, verify=context, headers=headers,
                                 timeout=10)


async def log_in(site: AdminSite, client: httpx.AsyncClient, email: str,
                 password: str = PASSWORD) -> httpx.Response:
    """Log ``client`` in through the console's form; returns the login answer."""
    form = await client.get("/login")
    token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    return await client.post("/login", data={"csrf_token": token, "email": email,
                                             "password": password})


def csrf_of(page: str) -> str:
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


async def make_accounts(store: Store) -> dict[str, str]:
    """Operator, one administrator per organisation; returns organisation -> API token."""
    password_hash = hash_password(PASSWORD)
    await store.create_account(email="operator@example.net", role=AccountRole.OPERATOR,
                               organisation=None, password_is_one_time=False,
                               password_hash=password_hash, now=FIXED_NOW)
    tokens = {}
    for name in ("acme", "globex"):
        await store.create_account(email=f"admin@{name}.example",
                                   role=AccountRole.ORGANISATION_ADMIN, organisation=name,
                                   password_is_one_time=False,
                                   password_hash=password_hash, now=FIXED_NOW)
        token = new_api_token()
        await store.create_api_token(organisation=name, token_hash=secret_hash(token),
                                     now=FIXED_NOW)
        tokens[name] = token
    return tokens


@pytest.fixture
async def admin_site(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[AdminSite]:
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                             admin_listen="127.0.0.1:0")
    settings.data_dir.mkdir(parents=True)
    await declare(settings.data_dir, "acme", *ACME_PHONES, seats=5)
    await declare(settings.data_dir, "globex", GLOBEX_PHONE, seats=5)
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, on_sms_sent=sms, now_ms=lambda: FIXED_NOW))
    address = running.context.admin_address
    assert address is not None
    tokens = await make_accounts(running.context.store)
    yield AdminSite(relay=RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms),
                    base_url=f"https://{address[0]}:{address[1]}", tokens=tokens)
    running.stop()
