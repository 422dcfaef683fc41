"""``last_seen_on``: the day a device last authenticated, on an injected clock, through a real
relay (QUIC on loopback, SQLite file) and the admin API that shows it to administrators."""

from __future__ import annotations

import datetime
import ssl
import urllib.parse
from pathlib import Path

import httpx
import trio

from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from tests.admin_support import FIXED_NOW, make_accounts
from tests.conftest import EnrolledDevice, RelayUnderTest, SmsInbox, declare, enrol

PHONE = "+33633333333"
DAY_MS = 24 * 60 * 60 * 1000
TIMEOUT_S = 60


async def _authenticate(relay: RelayUnderTest, device: EnrolledDevice) -> None:
    async with relay.connect() as client:
        await client.authenticate(device.user_id, device.device_id, device.key)


async def test_last_seen_is_the_day_of_the_last_authentication(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    clock = [FIXED_NOW]
    settings = RelaySettings(data_dir=tmp_path / "relay", listen_port=0,
                             admin_listen="127.0.0.1:0")
    settings.data_dir.mkdir(parents=True)
    await declare(settings.data_dir, "acme", PHONE, seats=5)
    await declare(settings.data_dir, "globex", seats=5)
    sms = SmsInbox()
    running: RunningRelay = await nursery.start(lambda task_status: serve(
        settings, task_status=task_status, on_sms_sent=sms, now_ms=lambda: clock[0]))
    relay = RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms)
    tokens = await make_accounts(running.context.store)
    address = running.context.admin_address
    assert address is not None
    site = f"https://{address[0]}:{address[1]}"
    path = f"/api/v1/orgs/acme/users/{urllib.parse.quote(PHONE)}"

    async def shown() -> tuple[object, object]:
        context = ssl.create_default_context(cafile=str(running.cert_path))
        async with httpx.AsyncClient(base_url=site, verify=context, headers={
                "authorization": f"Bearer {tokens['acme']}"}) as client:
            user = (await client.get(path)).json()
        return user["last_seen_on"], user["devices"][0]["last_seen_on"]

    with trio.fail_after(TIMEOUT_S):
        device = await enrol(relay, PHONE)
        assert await shown() == (None, None)  # enrolled, never authenticated yet
        last_seen = running.context.last_seen
        await _authenticate(relay, device)
        day = datetime.date(2026, 1, 18).isoformat()
        assert await shown() == (day, day)
        writes = last_seen.writes
        for _ in range(3):  # later the same day: no store write at all
            await _authenticate(relay, device)
        assert last_seen.writes == writes
        assert await shown() == (day, day)

        clock[0] += 3 * DAY_MS  # three days later
        await _authenticate(relay, device)
        later = datetime.date(2026, 1, 21).isoformat()
        assert await shown() == (later, later)
        assert last_seen.writes == writes + 1
    running.stop()
