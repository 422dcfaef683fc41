"""Deleting a user, suspending and terminating its organisation through the admin API close
that user's live QUIC connection at once (a real relay on loopback), and the relay then
refuses the device."""

from __future__ import annotations

import urllib.parse

import pytest
import trio
from nacl.signing import SigningKey

from client.connection import ConnectionClosed, RelayClient, RelayError
from tests.admin_support import ACME_PHONES, AdminSite, csrf_of, log_in
from tests.admin_support import admin_site as admin_site  # noqa: PLC0414 (fixture)
from tests.conftest import EnrolledDevice, enrol, link_device, new_account
from wire.frames import ErrorCode

TIMEOUT_S = 10


async def _closed_with(client: RelayClient) -> int:
    """Wait for the relay to close the connection; its application error code."""
    with pytest.raises(ConnectionClosed) as closed:
        with trio.fail_after(TIMEOUT_S):
            async for _ in client.deliveries():
                pass
    return closed.value.code


async def _operator(site: AdminSite, method: str, path: str, body: object) -> int:
    async with site.client() as operator:
        await log_in(site, operator, "operator@example.net")
        csrf = csrf_of((await operator.get("/account")).text)
        answer = await operator.request(method, "/api/v1/orgs/acme" + path, json=body,
                                        headers={"x-csrf-token": csrf})
        return answer.status_code


async def _connected(device: EnrolledDevice, client: RelayClient) -> None:
    await client.authenticate(device.user_id, device.device_id, device.key)
    await client.lookup([device.phone])  # the session is fully up


async def test_deleting_a_user_closes_its_connection_at_once(admin_site: AdminSite) -> None:
    site = admin_site
    device = await enrol(site.relay, ACME_PHONES[0])
    bystander = await enrol(site.relay, ACME_PHONES[1])
    async with site.relay.connect() as client, site.relay.connect() as other:
        await _connected(device, client)
        await _connected(bystander, other)
        async with site.client(token=site.tokens["acme"]) as acme:
            listed = (await acme.get("/api/v1/orgs/acme/users")).json()["users"]
            assert {user["phone"]: user["status"] for user in listed}[device.phone] == "enrolled"
            answer = await acme.delete(
                f"/api/v1/orgs/acme/users/{urllib.parse.quote(device.phone, safe='')}")
            assert answer.status_code == 200
        assert await _closed_with(client) == ErrorCode.DEVICE_REVOKED
        await other.lookup([bystander.phone])  # another user of the organisation stays
    async with site.relay.connect() as client:
        with pytest.raises(RelayError) as refused:
            await client.authenticate(device.user_id, device.device_id, device.key)
        assert refused.value.code is ErrorCode.AUTHENTICATION_FAILED


async def test_suspending_closes_connections_and_refuses_the_organisation(
        admin_site: AdminSite) -> None:
    site = admin_site
    device = await enrol(site.relay, ACME_PHONES[0])
    async with site.relay.connect() as client:
        await _connected(device, client)
        assert await _operator(site, "POST", "/state", {"state": "suspended"}) == 200
        assert await _closed_with(client) == ErrorCode.ORGANISATION_SUSPENDED
    async with site.relay.connect() as client:
        with pytest.raises(RelayError) as refused:
            await client.authenticate(device.user_id, device.device_id, device.key)
        assert refused.value.code is ErrorCode.ORGANISATION_SUSPENDED
    async with site.relay.connect() as client:
        # The code is sent as for any number (not revealing which are declared, nor whose
        # organisation is suspended); registering the device is what is refused.
        await client.enrol_start(ACME_PHONES[1])
        code = await site.relay.sms.code_for(ACME_PHONES[1])
        with pytest.raises(RelayError) as refused:
            await client.enrol_verify(ACME_PHONES[1], code,
                                     SigningKey.generate().verify_key.encode(), new_account())
        assert refused.value.code is ErrorCode.ORGANISATION_SUSPENDED
    assert await _operator(site, "POST", "/state", {"state": "active"}) == 200
    async with site.relay.connect() as client:
        await _connected(device, client)  # resumed: the device works again


async def test_terminating_closes_connections_and_removes_the_users(
        admin_site: AdminSite) -> None:
    site = admin_site
    device = await enrol(site.relay, ACME_PHONES[0])
    async with site.relay.connect() as client:
        await _connected(device, client)
        assert await _operator(site, "POST", "/state", {"state": "terminated"}) == 200
        assert await _closed_with(client) == ErrorCode.DEVICE_REVOKED
    assert await site.store.find_user_by_phone(device.phone) is None


async def test_revoking_one_device_closes_only_its_connection(admin_site: AdminSite) -> None:
    site = admin_site
    lost = await enrol(site.relay, ACME_PHONES[0])
    kept = await link_device(site.relay, lost)  # the same user's second device
    assert (lost.user_id, lost.device_id + 1) == (kept.user_id, kept.device_id)
    async with site.relay.connect() as lost_client, site.relay.connect() as kept_client:
        await _connected(lost, lost_client)
        await _connected(kept, kept_client)
        async with site.client(token=site.tokens["acme"]) as acme:
            phone = urllib.parse.quote(lost.phone, safe="")
            answer = await acme.delete(f"/api/v1/orgs/acme/users/{phone}/devices/{lost.device_id}")
            assert answer.json() == {"revoked_device_id": lost.device_id}
            again = await acme.delete(f"/api/v1/orgs/acme/users/{phone}/devices/{lost.device_id}")
            assert again.status_code == 404
            bad = await acme.delete(f"/api/v1/orgs/acme/users/{phone}/devices/first")
            assert bad.status_code == 422
        assert await _closed_with(lost_client) == ErrorCode.DEVICE_REVOKED
        assert [device.device_id for device in (await kept_client.list_devices()).devices] == [
            kept.device_id]
