"""How the bench gets its devices onto the relay under test: one small interface.

``open_target`` (bench/target.py) builds one provisioner from the command line and
every scenario asks it for devices, whatever the way:

* ``StoreProvisioner``: through the relay's store (``--data-dir``, ``--store`` or a
  relay the bench started), exactly as enrolment would leave the devices;
* ``AdminApiProvisioner`` (bench/admin_provisioner.py): through the admin API and
  real enrolments over QUIC, for a relay whose files the bench cannot reach.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Protocol

from bench.provision import BenchDevice, bench_phone, provision
from enrolment import admin
from storage.store_url import StoreLocation, open_store

__all__ = ["PHONE_INDEX_SPACE", "Provisioner", "StoreProvisioner", "fresh_phones",
           "new_organisation_name"]

PHONE_INDEX_SPACE = 10_000_000
"""Distinct bench numbers (``bench_phone`` has seven free digits)."""


class Provisioner(Protocol):
    """Declares bench users and hands out enrolled devices on the relay under test."""

    async def declare(self, phones: Sequence[str]) -> None:
        """Declare ``phones`` as users who may enrol (the ``enrol`` scenario enrols them)."""
        ...

    async def provision(self, count: int) -> list[BenchDevice]:
        """``count`` enrolled devices of fresh users, ready to authenticate."""
        ...


def fresh_phones(count: int) -> list[str]:
    """``count`` consecutive bench numbers from a random start.

    Numbers are unique per relay, and enrolment allows only a few codes per number
    a day: each run takes numbers after a random offset, not those of the last run.
    """
    if count > PHONE_INDEX_SPACE:
        raise ValueError(f"at most {PHONE_INDEX_SPACE} bench numbers")
    first = secrets.randbelow(PHONE_INDEX_SPACE - count + 1)
    return [bench_phone(index) for index in range(first, first + count)]


def new_organisation_name() -> str:
    return f"bench-{secrets.token_hex(4)}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class StoreProvisioner:
    """Writes users and devices straight into the relay's store (SQLite or PostgreSQL).

    Each call opens the store the way the relay does (``storage.store_url``) and puts
    its users in a new organisation with exactly enough seats.
    """

    def __init__(self, location: StoreLocation) -> None:
        self.location = location

    async def declare(self, phones: Sequence[str]) -> None:
        organisation = new_organisation_name()
        async with open_store(self.location) as store:
            await admin.create_organisation(store, organisation, len(phones), _now_ms())
            for phone in phones:
                await admin.declare_user(store, organisation, phone, _now_ms())

    async def provision(self, count: int) -> list[BenchDevice]:
        first_index = secrets.randbelow(PHONE_INDEX_SPACE - count + 1)
        async with open_store(self.location) as store:
            return await provision(store, organisation=new_organisation_name(), count=count,
                                   now=_now_ms(), first_index=first_index)
