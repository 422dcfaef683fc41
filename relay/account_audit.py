"""What an organisation's administrators see of their users' devices: audit entries.

The relay cannot read messages or keys, but it can tell an administrator that a number was
enrolled again (its earlier devices revoked: a new phone, or someone who got the SMS code), or
that a device was linked to or removed from an account. Each goes to the organisation's audit
log (docs/ADMIN_API.md, "Audit log"), with the user's number as subject, as the console's own
actions do; the relay's logs keep no phone number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from storage.base import AuditLog, Directory

__all__ = ["ENROLMENT_ACTOR", "AccountAuditStore", "audit_device_changes"]

ENROLMENT_ACTOR = "enrolment"
"""The actor of an SMS enrolment: whoever held the code, not a known account."""


class AccountAuditStore(Directory, AuditLog, Protocol):
    """The user's organisation and number, and the audit log."""


async def audit_device_changes(store: AccountAuditStore, *, user_id: str, device_id: int,
                               actor: str, changes: Sequence[tuple[str, int]], address: str,
                               now: int) -> None:
    """Append one entry per (action, device id) of ``changes`` for the user of ``device_id``
    (which must still exist: the enrolled or publishing device)."""
    if not changes:
        return
    principal = await store.load_principal(user_id, device_id)
    if principal is None:
        return  # the user was deleted meanwhile: nothing left to tell about
    for action, changed_device in changes:
        await store.append_audit(
            organisation_id=principal.organisation.organisation_id, actor=actor, action=action,
            subject=f"{principal.user.phone} device {changed_device}", address=address, now=now)
