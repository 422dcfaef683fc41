"""Whether a user of one organisation may reach a user of another (LOOKUP, bundle fetches).

Each organisation's policy (``OrganisationPolicy.cross_organisation_allowed``, allowed by
default, as the product promises) is set by operators in the admin console. Inside one
organisation users always reach each other; across two, both must allow it. Sends are checked
in the store's send transaction (``NewSend.sender_organisation_id``) rather than here, so that
the send path stays one synchronous submission that keeps the sender's order.
"""

from __future__ import annotations

from storage.base import OrganisationPolicy

__all__ = ["may_reach"]


async def may_reach(store: OrganisationPolicy, *, from_organisation_id: int | None,
                    to_organisation_id: int) -> bool:
    """``from_organisation_id`` None (not known: the requester is gone) reaches nothing."""
    if from_organisation_id is None:
        return False
    if from_organisation_id == to_organisation_id:
        return True
    return (await store.cross_organisation_allowed(from_organisation_id)
            and await store.cross_organisation_allowed(to_organisation_id))
