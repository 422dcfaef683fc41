"""Wake-up pushes: each device's push target, and the durable queue of wake-ups.

A wake-up row names only its recipient device. Targets are deleted with their device (and so
with its user and organisation): a foreign key cascades, whichever path deletes the device.
Wake-ups are deleted with their target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from storage.push_records import StoredPushTarget, WakeupClaims, WakeupResult, WakeupsScheduled

__all__ = ["PushTargetStore", "WakeupQueue"]


class PushTargetStore(Protocol):
    """Each device's push target (at most one)."""

    async def set_push_target(self, *, user_id: str, device_id: int, target: StoredPushTarget,
                              now: int) -> bool:
        """Store the device's target, replacing any earlier one (a pending wake-up stays and
        goes to the new target). Returns False, storing nothing, if the device does not exist.
        """
        ...

    async def clear_push_target(self, *, user_id: str, device_id: int) -> None:
        """Delete the device's target and any wake-up of the device."""
        ...

    async def get_push_target(self, *, user_id: str, device_id: int) -> StoredPushTarget | None:
        """The device's target, or None."""
        ...

    async def devices_with_targets(self, devices: Iterable[tuple[str, int]],
                                   ) -> set[tuple[str, int]]:
        """Those of ``devices`` (user id, device id) that have a target: a read."""
        ...

    async def push_target_devices(self) -> list[tuple[str, int]]:
        """Every device that has a target, as (user id, device id)."""
        ...


class WakeupQueue(Protocol):
    """Wake-ups pending or pushed, one row per device at most.

    A claim is exclusive across every node sharing the store (PostgreSQL: ``FOR UPDATE SKIP
    LOCKED``, then a lease): each wake-up is sent by one node, again only if that node did not
    finish it before its lease ended.
    """

    async def schedule_wakeups(self, devices: Iterable[tuple[str, int, bool]], *, now: int,
                               interval_ms: int, urgent_interval_ms: int = 0,
                               committed_at: Mapping[tuple[str, int], int] | None = None,
                               ) -> WakeupsScheduled:
        """Envelopes were committed for these (user id, device id, urgent) devices, which are
        connected to no node this relay knows of: make a wake-up due now for each that has a
        target, unless one is already pending, or one was pushed less than ``interval_ms``
        ago (then the device counts as coalesced). An urgent envelope makes it due at once
        even then, unless the last push was urgent too and less than ``urgent_interval_ms``
        ago. ``committed_at`` gives, by device, when its first envelope was committed (the
        delay metric; ``now`` for a device it does not name). On a store
        shared by several nodes, devices held by another node (presence) are left out.
        """
        ...

    async def clear_wakeup(self, *, user_id: str, device_id: int) -> None:
        """The device connected: forget its wake-up, pending or pushed (coalescing restarts)."""
        ...

    async def claim_wakeups(self, *, now: int, limit: int, lease_ms: int,
                            claim_token: bytes) -> WakeupClaims:
        """Take up to ``limit`` wake-ups due at ``now``, earliest first, for ``lease_ms``;
        none is taken by another claim before the lease ends or ``finish_wakeup``."""
        ...

    async def finish_wakeup(self, *, user_id: str, device_id: int, claim_token: bytes,
                            result: WakeupResult, now: int, retry_at: int | None = None,
                            target: StoredPushTarget | None = None,
                            sent_urgent: bool = False) -> bool:
        """Record how a claimed wake-up ended (``retry_at`` for RETRY; for GONE, ``target`` is
        the target it was sent to, deleted only if it is still the device's). PUSHED from a
        push that was not urgent (``sent_urgent``) leaves the wake-up pending and due at once
        if an urgent envelope made it urgent meanwhile. Returns False, changing nothing, if
        the claim is no longer this one's (the device connected, or the lease ended and
        another claim took it)."""
        ...

    async def next_wakeup_due(self) -> int | None:
        """When the earliest pending wake-up falls due (claimed ones at their lease's end), or
        None when none is pending: a read, for a node to look before it claims."""
        ...

    async def recover_wakeups(self, *, now: int) -> int:
        """After a restart: make a wake-up due for every device with a target, a non-empty
        queue, no wake-up and (on a shared store) no node holding it, so that an envelope
        whose wake-up was lost with the process is announced anyway. Returns how many."""
        ...
