"""``Directory`` (who exists) and ``OrganisationPolicy`` (who may reach whom): reads only.

The directory answers whatever exists, whatever its state: a suspended organisation, a
declared user without a device. Refusing service to an inactive organisation or a user who
is not enrolled is the caller's rule (the relay's session and prekey service check
``Principal``'s states; a send is checked in its own transaction).
"""

from __future__ import annotations

from typing import Protocol

from storage.records import Device, Organisation, Principal, User

__all__ = ["Directory", "OrganisationPolicy"]


class Directory(Protocol):
    """Organisations, users and devices, read. Safe to call concurrently."""

    async def get_organisation(self, name: str) -> Organisation | None:
        """The organisation of that name, whatever its state, or None."""
        ...

    async def find_user_by_phone(self, phone: str) -> User | None:
        """The user declared with this E.164 number, in any organisation, or None.

        A number is declared in one organisation at most, so the answer is unique; callers
        that act for one organisation must check ``User.organisation_id`` themselves.
        """
        ...

    async def list_devices(self, user_id: str) -> list[Device]:
        """Current devices of the user, by device id (revoked ones are gone; [] if none)."""
        ...

    async def load_principal(self, user_id: str, device_id: int) -> Principal | None:
        """The current device with its user and organisation, read in one snapshot, or None
        if any of them is gone (a revoked device is refused from then on)."""
        ...


class OrganisationPolicy(Protocol):
    """Each organisation's cross-organisation policy, read (operators set it through
    ``AdminStore.set_cross_organisation_allowed``)."""

    async def cross_organisation_allowed(self, organisation_id: int) -> bool:
        """Whether its users may communicate with other organisations' users.

        True by default (what the product promises); False once an operator refuses it.
        Both organisations must allow it for their users to reach each other.
        """
        ...
