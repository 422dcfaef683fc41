"""The cross-organisation policy set in the admin API is enforced by the relay on directory
look-ups, bundle fetches, device lists and sends (real relay, real QUIC on loopback)."""

from __future__ import annotations

import pytest
import trio

from client.connection import RelayClient, RelayError
from tests.admin_support import ACME_PHONES, GLOBEX_PHONE, AdminSite, csrf_of, log_in
from tests.admin_support import admin_site as admin_site  # noqa: PLC0414 (fixture)
from tests.conftest import EnrolledDevice, enrol
from wire.frames import ErrorCode

TIMEOUT_S = 30


async def _set_policy(site: AdminSite, organisation: str, allowed: bool) -> None:
    async with site.client() as operator:
        await log_in(site, operator, "operator@example.net")
        csrf = csrf_of((await operator.get("/account")).text)
        answer = await operator.post(f"/api/v1/orgs/{organisation}/policy",
                                     json={"cross_organisation": allowed},
                                     headers={"x-csrf-token": csrf})
        assert answer.status_code == 200


async def _reaches(client: RelayClient, target: EnrolledDevice, message_id: int) -> bool:
    """Whether every path to ``target`` is open; asserts they agree."""
    found = await client.lookup([target.phone])
    outcomes = [bool(found)]
    for attempt in (lambda: client.fetch_bundle(target.user_id),
                    lambda: client.list_devices(target.user_id),
                    lambda: client.send(target.user_id, {target.device_id: b"sealed"},
                                        client_message_id=message_id)):
        try:
            await attempt()
            outcomes.append(True)
        except RelayError as refused:
            assert refused.code is ErrorCode.UNKNOWN_RECIPIENT
            outcomes.append(False)
    assert len(set(outcomes)) == 1, outcomes
    return outcomes[0]


async def test_the_cross_organisation_policy_is_enforced(admin_site: AdminSite) -> None:
    site = admin_site
    alice = await enrol(site.relay, ACME_PHONES[0])
    colleague = await enrol(site.relay, ACME_PHONES[1])
    stranger = await enrol(site.relay, GLOBEX_PHONE)
    with trio.fail_after(TIMEOUT_S):
        async with site.relay.connect() as client:
            await client.authenticate(stranger.user_id, stranger.device_id, stranger.key)
            assert await _reaches(client, alice, 1)  # allowed by default
            await _set_policy(site, "acme", False)
            assert not await _reaches(client, alice, 2)
            await _set_policy(site, "acme", True)
            await _set_policy(site, "globex", False)  # the requester's own side refuses
            assert not await _reaches(client, alice, 3)
        async with site.relay.connect() as client:
            await client.authenticate(alice.user_id, alice.device_id, alice.key)
            assert await _reaches(client, colleague, 4)  # inside acme, always
            assert not await _reaches(client, stranger, 5)
            await _set_policy(site, "globex", True)
            assert await _reaches(client, stranger, 6)


@pytest.mark.parametrize("allowed", [True, False])
async def test_only_operators_set_the_policy(admin_site: AdminSite, allowed: bool) -> None:
    async with admin_site.client(token=admin_site.tokens["acme"]) as acme:
        answer = await acme.post("/api/v1/orgs/acme/policy",
                                 json={"cross_organisation": allowed})
    assert answer.status_code == 403
    found = await admin_site.store.get_organisation("acme")
    assert found is not None
    assert await admin_site.store.cross_organisation_allowed(found.organisation_id)
