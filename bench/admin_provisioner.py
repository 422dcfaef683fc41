"""Provisioning through the admin API and real enrolments: an operator's load test.

The bench has no access to the relay's files: it declares its users in the API
token's organisation (docs/ADMIN_API.md), enrols one device per user over QUIC with
the code the relay sends to the bench's SMS webhook, and deletes those users when
the run ends, so that repeated runs do not use up the organisation's seats.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import trio

from bench.enrol_devices import CodeSource, enrol_phones
from bench.provision import BenchDevice
from bench.provisioners import fresh_phones

__all__ = ["ADMIN_CONCURRENCY", "ENROL_CONCURRENCY", "AdminApiProvisioner",
           "ProvisioningError", "open_admin_provisioner"]

ADMIN_CONCURRENCY = 8
"""Admin API requests in flight: each is one store transaction on the relay, and the
bench should not look like an attack on its admin site."""

ENROL_CONCURRENCY = 8
"""Enrolments in flight while provisioning (each holds one QUIC connection)."""

ADMIN_TIMEOUT_SECONDS = 30.0
"""Per admin API request."""


class ProvisioningError(Exception):
    """The bench could not get its devices onto the relay; the message says why."""


class AdminApiProvisioner:
    """``Provisioner`` over ``/api/v1/orgs/{org}`` and enrolment over QUIC."""

    def __init__(self, client: httpx.AsyncClient, organisation: str, *, host: str, port: int,
                 ca: Path | None, codes: CodeSource) -> None:
        self.client = client
        self.organisation = organisation
        self.host, self.port, self.ca = host, port, ca
        self.codes = codes
        self.declared: list[str] = []
        """Numbers this run declared (deleted again by ``delete_declared``)."""

    def _users_path(self) -> str:
        return f"/api/v1/orgs/{quote(self.organisation, safe='')}/users"

    async def _check_seats(self, count: int) -> None:
        response = await self.client.get(
            f"/api/v1/orgs/{quote(self.organisation, safe='')}/licence")
        _raise_for(response, "reading the licence")
        licence = response.json()
        free = int(licence["seats"]) - int(licence["declared"])
        if free < count:
            raise ProvisioningError(
                f"organisation {self.organisation!r} has {free} free seats and the bench "
                f"needs {count}: add seats or run fewer devices")

    async def declare(self, phones: Sequence[str]) -> None:
        await self._check_seats(len(phones))
        limiter = trio.CapacityLimiter(ADMIN_CONCURRENCY)

        async def declare_one(phone: str) -> None:
            async with limiter:
                response = await self.client.post(self._users_path(), json={"phone": phone})
                _raise_for(response, "declaring a bench user")
                self.declared.append(phone)

        async with trio.open_nursery() as nursery:
            for phone in phones:
                nursery.start_soon(declare_one, phone)

    async def provision(self, count: int) -> list[BenchDevice]:
        phones = fresh_phones(count)
        await self.declare(phones)
        outcome = await enrol_phones(self.host, self.port, self.ca, phones, self.codes,
                                     concurrency=ENROL_CONCURRENCY)
        if outcome.errors:
            raise ProvisioningError(
                f"{len(outcome.errors)} of {count} enrolments failed, e.g. "
                f"{outcome.errors[0]} (is the relay's sms_http_url this bench's "
                "--sms-listen, with its --sms-token?)")
        return outcome.devices

    async def delete_declared(self) -> None:
        """Delete the users this run declared (their devices and queues go with them)."""
        limiter = trio.CapacityLimiter(ADMIN_CONCURRENCY)

        async def delete_one(phone: str) -> None:
            async with limiter:
                response = await self.client.delete(
                    f"{self._users_path()}/{quote(phone, safe='')}")
                if response.status_code != 404:
                    _raise_for(response, "deleting a bench user")

        async with trio.open_nursery() as nursery:
            for phone in self.declared:
                nursery.start_soon(delete_one, phone)
        self.declared.clear()


def _raise_for(response: httpx.Response, doing: str) -> None:
    if response.is_success:
        return
    try:
        reason = str(response.json().get("message", ""))
    except ValueError:
        reason = ""
    raise ProvisioningError(f"admin API refused {doing}: HTTP {response.status_code} "
                            f"{reason}".rstrip())


@asynccontextmanager
async def open_admin_provisioner(admin_url: str, token: str, organisation: str, *,
                                 ca: Path | None, host: str, port: int,
                                 codes: CodeSource) -> AsyncIterator[AdminApiProvisioner]:
    """The provisioner for ``admin_url`` (verified against ``ca`` when given); the users
    it declared are deleted on exit, even after a failed run."""
    verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(ca))
                                     if ca is not None else True)
    async with httpx.AsyncClient(base_url=admin_url.rstrip("/"), verify=verify,
                                 headers={"Authorization": f"Bearer {token}"},
                                 timeout=ADMIN_TIMEOUT_SECONDS) as client:
        provisioner = AdminApiProvisioner(client, organisation, host=host, port=port, ca=ca,
                                          codes=codes)
        try:
            yield provisioner
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(ADMIN_TIMEOUT_SECONDS):
                await provisioner.delete_declared()
