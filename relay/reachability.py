"""Whether a user of one organisation may reach a user of another (LOOKUP, bundle fetches,
calls).

Each organisation's policy (``OrganisationPolicy.cross_organisation_allowed``, allowed by
default, as the product promises) is set by operators in the admin console. Inside one
organisation users always reach each other; across two, both must allow it. Sends are checked
in the store's send transaction (``NewSend.sender_organisation_id``) rather than here, so that
the send path stays one synchronous submission that keeps the sender's order.
"""

from __future__ import annotations

from typing import Protocol

from storage.base import OrganisationPolicy, OrganisationState, UserState
from storage.interfaces.directory import Directory

__all__ = ["may_reach", "user_reachable"]


async def may_reach(store: OrganisationPolicy, *, from_organisation_id: int | None,
                    to_organisation_id: int) -> bool:
    """``from_organisation_id`` None (not known: the requester is gone) reaches nothing."""
    if from_organisation_id is None:
        return False
    if from_organisation_id == to_organisation_id:
        return True
    return (await store.cross_organisation_allowed(from_organisation_id)
            and await store.cross_organisation_allowed(to_organisation_id))


class _DirectoryAndPolicy(Directory, OrganisationPolicy, Protocol):
    """The directory and the organisations' policy, as one store offers both."""


async def user_reachable(store: _DirectoryAndPolicy, *, from_organisation_id: int | None,
                         user_id: str) -> bool:
    """Whether a device of ``from_organisation_id`` may reach ``user_id`` as LOOKUP and SEND
    see it: an enrolled user with a device, in an active organisation the policy lets the
    requester's reach (CALL_OPEN's grant)."""
    devices = await store.list_devices(user_id)
    if not devices:
        return False
    principal = await store.load_principal(user_id, devices[0].device_id)
    if (principal is None or principal.user.state is not UserState.ENROLLED
            or principal.organisation.state is not OrganisationState.ACTIVE):
        return False
    return await may_reach(store, from_organisation_id=from_organisation_id,
                           to_organisation_id=principal.organisation.organisation_id)
