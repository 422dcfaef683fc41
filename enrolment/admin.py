"""Organisations and declared users, checked, straight on the store: what provisioning
(tests, benchmarks) uses, and the checks ``enrolment.web.service.AdminService`` applies.

These write no audit entry. The operator CLI goes through ``AdminService`` (as its
``CLI_CALLER``), which calls them and audits every change as the admin API's are.

Store errors (``AlreadyExists``, ``NotFound``, ``SeatLimitReached``) propagate
unchanged: the CLI, at the edge, turns them into messages.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from enrolment.errors import InvalidRequest
from enrolment.numbers import parse_phone
from storage.base import AdminStore, Organisation, User

__all__ = [
    "MAX_ORGANISATION_NAME_CHARS",
    "MAX_SEATS",
    "check_organisation",
    "create_organisation",
    "declare_user",
    "delete_user",
    "list_users",
    "new_user_id",
]

MAX_ORGANISATION_NAME_CHARS = 64
"""Names are typed by operators and appear in logs and URLs: short and plain."""

MAX_SEATS = 1_000_000
"""Largest licence we sell; anything above is a typo."""

_ORGANISATION_NAME = re.compile(rf"[a-z0-9-]{{1,{MAX_ORGANISATION_NAME_CHARS}}}")


USER_ID_BYTES = 16
"""Random bytes of a user id (hex on the wire): 128 bits, unguessable and never reused, so an
id says nothing about the number or the order of enrolment."""


def new_user_id() -> str:
    """A fresh opaque user id."""
    return secrets.token_hex(USER_ID_BYTES)


def check_organisation(name: str, seats: int) -> None:
    """Raises InvalidRequest unless ``name`` and ``seats`` may make an organisation."""
    if _ORGANISATION_NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"an organisation name is 1 to {MAX_ORGANISATION_NAME_CHARS} characters "
            "among lowercase letters, digits and '-'"
        )
    if not 1 <= seats <= MAX_SEATS:
        raise InvalidRequest(f"seats must be between 1 and {MAX_SEATS}")


async def create_organisation(store: AdminStore, name: str, seats: int, now: int) -> Organisation:
    """Create an active organisation.

    Raises:
        InvalidRequest: bad name, or seats outside 1..MAX_SEATS.
        AlreadyExists: the name is taken.
    """
    check_organisation(name, seats)
    return await store.create_organisation(name=name, seats=seats, now=now)


async def declare_user(
    store: AdminStore,
    organisation: str,
    phone_text: str,
    now: int,
    new_user_id: Callable[[], str] = new_user_id,
) -> User:
    """Declare a phone number in an organisation, taking one seat.

    Raises:
        InvalidPhoneNumber: the number is not valid.
        NotFound: no such organisation.
        AlreadyExists: the number is declared (in any organisation).
        SeatLimitReached: every seat is taken.
    """
    phone = parse_phone(phone_text)
    return await store.declare_user(
        organisation=organisation, phone=phone, user_id=new_user_id(), now=now
    )


async def delete_user(store: AdminStore, organisation: str, phone_text: str) -> User:
    """Delete a user with its devices and queued envelopes; returns it.

    The caller must then close the user's live connections.

    Raises:
        InvalidPhoneNumber: the number is not valid.
        NotFound: no such organisation or user.
    """
    phone = parse_phone(phone_text)
    return await store.delete_user(organisation=organisation, phone=phone)


async def list_users(store: AdminStore, organisation: str) -> list[User]:
    """Users of the organisation, ordered by phone. Raises NotFound."""
    return await store.list_users(organisation)
