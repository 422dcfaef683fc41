"""The wake-up scheduler: devices that are not connected learn that something waits for them.

When an envelope is committed for a device that no node holds, the device is *noted* (a
dictionary entry, in the committer's turn: nothing else on the send path). One task, in the
relay's nursery, then:

1. forgets the wake-ups of devices that connected since (connecting restarts coalescing);
2. schedules wake-ups for the noted devices still away, in one store write for all of them
   (``WakeupQueue.schedule_wakeups``): a device with a target gets one due now, unless one is
   pending, or was pushed less than ``WAKEUP_INTERVAL_S`` ago and no envelope is urgent
   (coalesced);
3. claims the due wake-ups (on PostgreSQL with ``FOR UPDATE SKIP LOCKED`` and a lease, so that
   one node sends each) and sends each in a task of its own, at most
   ``MAX_CONCURRENT_PUSHES`` at once, through the provider its target names;
4. sleeps until something is noted, a send ends, or the next wake-up falls due (on a store
   several nodes share, at most ``CLUSTER_POLL_S``: another node's retries are due there too).

The common case costs nothing: on a store that serves one node, the relay keeps the set of its
devices that have a target and notes no other; on a shared store, one statement per batch
finds the few that have one. A push carries nothing but what the provider sends as its opaque
wake marker; logs carry no token, endpoint or user.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog
import trio

from relay.metrics import RelayMetrics
from relay.push_providers import PushOutcome, PushProvider, PushResult, PushTarget
from storage.base import Envelope, EnvelopeQueue
from storage.interfaces.push import PushTargetStore, WakeupQueue
from storage.push_records import ClaimedWakeup, WakeupResult

__all__ = [
    "CLAIM_LEASE_S",
    "CLUSTER_POLL_S",
    "MAX_CONCURRENT_PUSHES",
    "MAX_PUSH_ATTEMPTS",
    "MAX_RETRY_AFTER_S",
    "RETRY_BACKOFF_CAP_S",
    "RETRY_BACKOFF_FIRST_S",
    "URGENT_INTERVAL_S",
    "URGENT_MEMORY_S",
    "WAKEUP_INTERVAL_S",
    "WakeupScheduler",
    "WakeupStore",
    "lease_for",
    "retry_delay_s",
]

log = structlog.get_logger("relay.wakeups")

DeviceKey = tuple[str, int]

WAKEUP_INTERVAL_S = 30.0
"""At most one push per device in this many seconds until it connects: a phone woken once
fetches everything; more pushes would only drain its battery and the provider's quota."""

URGENT_INTERVAL_S = 5.0
"""An urgent envelope (a call offer) pushes at once even within WAKEUP_INTERVAL_S, but at most
one urgent push per device in this many seconds: a ringing call is announced at once, a sender
repeating urgent SENDs cannot make the relay flood a phone."""

URGENT_MEMORY_S = 60.0
"""How long an urgent envelope committed for a connected device keeps its urgency for a
wake-up when that connection ends: as long as a call offer is worth ringing (the calls'
signal TTL). A connection closing while a call offer reaches it makes the push urgent."""

MAX_CONCURRENT_PUSHES = 16
"""Pushes in flight at once per node: each holds a connection to a push service for at most
the providers' timeout, so a slow service cannot pile up tasks."""

CLAIM_LEASE_S = 120.0
"""How long a claimed wake-up is this node's alone, at least: far longer than a provider's
request (at most twice ``push_timeout_s``, 10 s by default; ``lease_for`` stretches it for a
longer setting), so another node sends it again only if this one died meanwhile."""

RETRY_BACKOFF_FIRST_S = 5.0
"""The wait after a first RETRY (5xx, 429, network failure); doubled at each further one."""

RETRY_BACKOFF_CAP_S = 15 * 60.0
"""The longest wait between two attempts of one wake-up."""

MAX_RETRY_AFTER_S = 60 * 60.0
"""A push service's ``Retry-After`` is honoured up to an hour: a hostile or broken one must
not park a wake-up for days."""

MAX_PUSH_ATTEMPTS = 8
"""Attempts of one wake-up before it is given up (counted as failed): about ten minutes of
back-off, longer when the service asks for it. The next envelope after the interval tries
again."""

CLUSTER_POLL_S = 2.0
"""On a store several nodes share, how often a node looks for wake-ups due that it did not
schedule itself (another node's retry whose node died): no faster than every second. A look
is a read; it claims (a write) only when one is due."""

STORE_FAILURE_PAUSE_S = 1.0
"""The pause after a failed store call before the scheduler tries again."""


class WakeupStore(PushTargetStore, WakeupQueue, EnvelopeQueue, Protocol):
    """What the scheduler needs of the store: the targets, the wake-up queue, and the depth of
    a device's queue (a device that left with envelopes unread is woken)."""


def lease_for(push_timeout_s: float) -> float:
    """The claim lease for providers whose requests end within twice ``push_timeout_s``:
    CLAIM_LEASE_S, or four such requests if that is longer."""
    return max(CLAIM_LEASE_S, 8 * push_timeout_s)


def retry_delay_s(attempts: int, retry_after_s: float | None) -> float:
    """Seconds before the next attempt of a wake-up tried ``attempts`` times (at least 1):
    exponential back-off up to RETRY_BACKOFF_CAP_S, or the service's ``Retry-After`` (up to
    MAX_RETRY_AFTER_S) if that is longer."""
    delay = min(RETRY_BACKOFF_CAP_S, RETRY_BACKOFF_FIRST_S * 2.0 ** min(attempts - 1, 30))
    if retry_after_s is not None and math.isfinite(retry_after_s):
        delay = max(delay, min(max(retry_after_s, 0.0), MAX_RETRY_AFTER_S))
    return delay


class WakeupScheduler:
    """One per relay; ``run`` in the relay's nursery (see the module docstring).

    Args:
        store: the targets and the wake-up queue.
        providers: the configured providers by name.
        metrics: where pushes are counted.
        now_ms: the wall clock, in milliseconds since the epoch.
        is_connected: whether a device has a live session on this node.
        shared_store: several nodes share the store (PostgreSQL): this node cannot know every
            device's target, nor every wake-up that falls due.
    """

    def __init__(self, *, store: WakeupStore, providers: Mapping[str, PushProvider],
                 metrics: RelayMetrics, now_ms: Callable[[], int],
                 is_connected: Callable[[DeviceKey], bool], shared_store: bool,
                 interval_s: float = WAKEUP_INTERVAL_S,
                 urgent_interval_s: float = URGENT_INTERVAL_S,
                 max_concurrent: int = MAX_CONCURRENT_PUSHES,
                 lease_s: float = CLAIM_LEASE_S) -> None:
        self._store = store
        self._providers = dict(providers)
        self._metrics = metrics
        self._now_ms = now_ms
        self._is_connected = is_connected
        self._shared = shared_store
        self._interval_ms = int(interval_s * 1000)
        self._urgent_interval_ms = int(urgent_interval_s * 1000)
        self._max_concurrent = max_concurrent
        self._lease_ms = int(lease_s * 1000)
        self._targets: set[DeviceKey] | None = None if shared_store else set()
        """The devices with a target (one node's store: all of them, loaded by ``run``); None
        when the store is shared and only it knows."""
        self._noted: dict[DeviceKey, bool] = {}
        """Devices with new envelopes since the last schedule -> whether one was urgent."""
        self._first_committed: dict[DeviceKey, int] = {}
        """Noted devices -> when their earliest noted envelope was committed (ms)."""
        self._connected: set[DeviceKey] = set()
        """Devices that connected since the last pass: their wake-ups are forgotten."""
        self._left: set[DeviceKey] = set()
        """Devices whose connection ended since the last pass: woken if envelopes wait."""
        self._urgent_while_connected: dict[DeviceKey, int] = {}
        """Connected devices (with a target, on one node's store) that were sent an urgent
        envelope -> when (ms): if the connection ends before they read it, the wake-up is
        urgent (within URGENT_MEMORY_S). Bounded by the connected devices: an entry goes when
        its device connects anew or its connection ends."""
        self._in_flight = 0
        self._work = trio.Event()
        self._pass_done = trio.Event()
        self._passes_started = 0
        self._passes_done = 0
        self._settled_pass = False
        """The last pass left nothing due now."""
        self._due_at: int | None = None
        """When the earliest pending wake-up falls due (ms), as far as this node knows."""

    @property
    def in_flight(self) -> int:
        """Pushes being sent now."""
        return self._in_flight

    async def settled(self) -> None:
        """Wait until everything noted so far is scheduled (or coalesced), every wake-up due
        now is sent and recorded, and no push is in flight: what a test or a benchmark waits
        for instead of sleeping."""
        while True:
            wanted = self._passes_started + 1  # a pass that starts after this point
            self._work.set()
            while self._passes_done < wanted:
                await self._pass_done.wait()
            if not self._noted and not self._connected and not self._left \
                    and self._in_flight == 0 \
                    and self._settled_pass:
                return

    # -- called in the relay's turn (never blocks) -------------------------------------------

    def note_committed(self, envelopes: Iterable[Envelope], *, urgent: bool) -> None:
        """Envelopes were just committed: note their devices that may need waking."""
        targets = self._targets
        if targets is not None and not targets:
            return  # no device of this node's store has a target
        noted = False
        for envelope in envelopes:
            key = (envelope.recipient_user_id, envelope.recipient_device_id)
            if targets is not None and key not in targets:
                continue
            if self._is_connected(key):
                if urgent:  # delivered live, unless the connection is already ending
                    self._urgent_while_connected[key] = envelope.accepted_at
                continue
            self._noted[key] = self._noted.get(key, False) or urgent
            self._first_committed.setdefault(key, envelope.accepted_at)
            noted = True
        if noted:
            self._work.set()

    def device_connected(self, device: DeviceKey) -> None:
        """The device authenticated here: no wake-up for it, and coalescing starts anew."""
        self._noted.pop(device, None)
        self._first_committed.pop(device, None)
        self._urgent_while_connected.pop(device, None)
        if self._targets is None or device in self._targets:
            self._connected.add(device)
            self._work.set()

    def device_disconnected(self, device: DeviceKey) -> None:
        """The device's connection here ended: if envelopes still wait for it (committed while
        the relay still thought it connected, or delivered and never acknowledged), it is
        away with something to read, and is woken."""
        if self._targets is None or device in self._targets:
            self._left.add(device)
            self._work.set()

    def target_set(self, device: DeviceKey) -> None:
        """The device registered a target (through this node)."""
        if self._targets is not None:
            self._targets.add(device)

    def target_cleared(self, device: DeviceKey) -> None:
        """The device's target is gone."""
        if self._targets is not None:
            self._targets.discard(device)

    # -- the task --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load what the scheduler keeps in memory, recover wake-ups a stop may have lost,
        then schedule, claim and send until cancelled."""
        if self._targets is not None:
            self._targets.update(await self._store.push_target_devices())
        recovered = await self._store.recover_wakeups(now=self._now_ms())
        if recovered:
            log.info("push_wakeups_recovered", count=recovered)
        self._due_at = self._now_ms()  # what an earlier run left pending may be due
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                self._work = trio.Event()
                self._passes_started += 1
                try:
                    await self._pass(nursery)
                except Exception as error:  # the store is unreachable: try again shortly
                    log.error("push_wakeups_failed", error=type(error).__name__)
                    self._end_pass(settled=False)
                    await trio.sleep(STORE_FAILURE_PAUSE_S)
                    continue
                self._end_pass(settled=self._due_at is None or self._due_at > self._now_ms())
                # With every push slot taken, only a send that ends (it sets the event) can
                # let the next claim go: wait for it, not for the due time.
                full = self._in_flight >= self._max_concurrent
                await self._wait(None if full else self._due_at)

    def _end_pass(self, *, settled: bool) -> None:
        self._settled_pass = settled
        self._passes_done += 1
        self._pass_done.set()
        self._pass_done = trio.Event()

    def _due_by(self, when: int) -> None:
        """Something falls due at ``when`` (ms): claim no later."""
        if self._due_at is None or when < self._due_at:
            self._due_at = when

    async def _pass(self, nursery: trio.Nursery) -> None:
        connected, self._connected = self._connected, set()
        noted, self._noted = self._noted, {}
        first_committed, self._first_committed = self._first_committed, {}
        left, self._left = self._left, set()
        try:
            for user_id, device_id in sorted(connected):
                await self._store.clear_wakeup(user_id=user_id, device_id=device_id)
                connected.discard((user_id, device_id))
            for user_id, device_id in sorted(left):
                urgent_at = self._urgent_while_connected.pop((user_id, device_id), None)
                urgent = (urgent_at is not None
                          and self._now_ms() - urgent_at <= URGENT_MEMORY_S * 1000)
                if (user_id, device_id) in noted:
                    noted[user_id, device_id] = noted[user_id, device_id] or urgent
                elif (not self._is_connected((user_id, device_id))
                        and await self._store.queue_depth(user_id=user_id, device_id=device_id)):
                    noted[user_id, device_id] = urgent
                left.discard((user_id, device_id))
            away = [(user_id, device_id, urgent)
                    for (user_id, device_id), urgent in noted.items()
                    if not self._is_connected((user_id, device_id))]
            if away and self._targets is None:
                # A shared store: most recipients have no target, and the writer, which
                # commits every send, need not hear of them (a read leaves them out).
                with_targets = await self._store.devices_with_targets(
                    (user_id, device_id) for user_id, device_id, _ in away)
                away = [device for device in away if device[:2] in with_targets]
            if away:
                now = self._now_ms()
                done = await self._store.schedule_wakeups(
                    away, now=now, interval_ms=self._interval_ms,
                    urgent_interval_ms=self._urgent_interval_ms, committed_at=first_committed)
                noted = {}
                for provider, count in done.scheduled.items():
                    self._metrics.pushes["scheduled", provider] += count
                for provider, count in done.coalesced.items():
                    self._metrics.pushes["coalesced", provider] += count
                if done.scheduled:
                    self._due_by(now)
        except BaseException:  # kept for the next pass: nothing noted is lost to a failure
            self._connected |= connected
            self._left |= left
            for key, urgent in noted.items():
                self._noted[key] = self._noted.get(key, False) or urgent
                if key in first_committed:
                    self._first_committed[key] = min(
                        first_committed[key], self._first_committed.get(key, first_committed[key]))
            raise
        free = self._max_concurrent - self._in_flight
        now = self._now_ms()
        if free <= 0:
            return
        if self._shared and (self._due_at is None or self._due_at > now):
            # Other nodes schedule and retry too: look (a read) before claiming (a write).
            self._due_at = await self._store.next_wakeup_due()
        # A store serving this node alone holds no wake-up due that this node did not make
        # due (then ``_due_at`` says when): no claim, no write, otherwise.
        if self._due_at is None or self._due_at > now:
            return
        claim_token = secrets.token_bytes(16)
        claims = await self._store.claim_wakeups(now=now, limit=free, lease_ms=self._lease_ms,
                                                 claim_token=claim_token)
        self._due_at = claims.next_due_at
        for claimed in claims.claimed:
            self._in_flight += 1
            nursery.start_soon(self._send, claimed, claim_token)

    async def _wait(self, next_due_at: int | None) -> None:
        delay = math.inf if next_due_at is None else max(0, next_due_at - self._now_ms()) / 1000
        if self._shared:
            delay = min(delay, CLUSTER_POLL_S)
        with trio.move_on_after(delay):
            await self._work.wait()

    async def _send(self, claimed: ClaimedWakeup, claim_token: bytes) -> None:
        device = (claimed.user_id, claimed.device_id)
        stored = claimed.target
        provider_name = stored.provider
        try:
            if self._is_connected(device):  # connected meanwhile: nothing to wake
                await self._store.clear_wakeup(user_id=claimed.user_id,
                                               device_id=claimed.device_id)
                return
            outcome = await self._push(claimed)
            now = self._now_ms()
            result, retry_at = WakeupResult.PUSHED, None
            if outcome.result is PushResult.SENT:
                self._metrics.pushes["sent", provider_name] += 1
                self._metrics.push_delay.observe(max(0, now - claimed.committed_at) / 1000)
            elif outcome.result is PushResult.GONE:
                result = WakeupResult.GONE
                self._metrics.pushes["removed", provider_name] += 1
                self.target_cleared(device)
            elif outcome.result is PushResult.RETRY and claimed.attempts + 1 < MAX_PUSH_ATTEMPTS:
                result = WakeupResult.RETRY
                retry_at = now + int(1000 * retry_delay_s(claimed.attempts + 1,
                                                          outcome.retry_after_s))
                self._metrics.pushes["retried", provider_name] += 1
            else:  # FAILED, or RETRY too often: given up until the interval has passed
                self._metrics.pushes["failed", provider_name] += 1
                log.info("push_failed", provider=provider_name, result=outcome.result.value,
                         detail=outcome.detail[:200], attempts=claimed.attempts + 1)
            await self._store.finish_wakeup(
                user_id=claimed.user_id, device_id=claimed.device_id, claim_token=claim_token,
                result=result, now=now, retry_at=retry_at, target=stored,
                sent_urgent=claimed.urgent)
            # A retry, or an urgent envelope that arrived while this push was in flight
            # (the wake-up is then due again at once), falls due no later than this.
            self._due_by(now if retry_at is None else retry_at)
        except Exception as error:  # the store failed: the lease ends, another claim retries
            log.error("push_wakeup_not_recorded", provider=provider_name,
                      error=type(error).__name__)
        finally:
            self._in_flight -= 1
            self._work.set()

    async def _push(self, claimed: ClaimedWakeup) -> PushOutcome:
        stored = claimed.target
        provider = self._providers.get(stored.provider)
        if provider is None:
            return PushOutcome(result=PushResult.FAILED,
                               detail="the provider is not configured on this node")
        target = PushTarget(provider=stored.provider, token=stored.token, p256dh=stored.p256dh,
                            auth=stored.auth)
        try:
            return await provider.send(target, urgent=claimed.urgent)
        except Exception as error:  # the interface says it never raises; one did: retry later
            log.error("push_provider_raised", provider=stored.provider,
                      error=type(error).__name__)
            return PushOutcome(result=PushResult.RETRY, detail="the provider raised")
