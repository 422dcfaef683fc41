"""Routing committed envelopes to connected devices, in order, without loss.

Two pieces:

* ``CommitPipeline``: sends are submitted to the store synchronously, in the
  order their frames arrived, and their outcomes are consumed in that same
  order by one task, which answers the sender and offers the new envelopes to
  the recipients' pumps. No task per message, and offers reach each pump in
  envelope id order.
* ``DeliveryPump``: one per authenticated connection. It first drains the
  device's stored queue page by page (then says QUEUE_EMPTY), then forwards
  live envelopes straight from memory. The queue in the store stays the truth:
  an envelope leaves it only on acknowledgement, and whenever the pump cannot
  trust its memory (too many unacknowledged envelopes, a wake-up from
  elsewhere) it goes back to reading the store after its cursor.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
import trio

from storage.base import Envelope, EnvelopeQueue, PendingResult, SendOutcome
from storage.fanout_records import MultiSendOutcome
from wire.codec import encode_frame
from wire.frames import (
    Deliver,
    QueueEmpty,
)

__all__ = [
    "DELIVERY_PAGE_SIZE",
    "MAX_UNACKNOWLEDGED",
    "CommitPipeline",
    "DeliveryPump",
    "Presence",
]

log = structlog.get_logger("relay.delivery")

DELIVERY_PAGE_SIZE = 256
"""Envelopes read from the store per backlog page."""

MAX_UNACKNOWLEDGED = 1024
"""Envelopes pushed to one device and not yet acknowledged before the pump pauses:
bounds the memory a slow or silent device can pin in the relay."""

DeviceKey = tuple[str, int]
T = TypeVar("T")


class DeliveryPump:
    """Pushes one device's envelopes on its delivery stream, in envelope id order.

    A pump owns a task only while it reads the store (the backlog on
    connection, a wake-up, a pause ending); a caught-up pump pushes offered
    envelopes in the caller's turn and costs no task while the device idles.
    """

    def __init__(self, *, store: EnvelopeQueue, device: DeviceKey,
                 write: Callable[[bytes], None],
                 now_ms: Callable[[], int], nursery: trio.Nursery,
                 on_pushed: Callable[[list[Envelope], int], None] | None = None) -> None:
        self._store = store
        self._on_pushed = on_pushed
        self.device = device
        self._write = write
        self._now_ms = now_ms
        self._nursery = nursery
        self._cursor = 0  # highest envelope id pushed on this connection
        self._unacknowledged: set[int] = set()
        self._live: list[Envelope] = []
        self._from_store = True  # read the store, not memory, until caught up
        self._wakeups = 0  # counts wake(): one during a read means reading again
        self._queue_empty_sent = False
        self._reader: trio.CancelScope | None = None  # the reading task, while it runs
        self._closed = False
        self.delivered = 0

    def start(self) -> None:
        """Begin with the stored backlog (then QUEUE_EMPTY), then live envelopes."""
        self._read_when_needed()

    def close(self) -> None:
        """Stop for good (the connection closed)."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()

    @property
    def _paused(self) -> bool:
        return len(self._unacknowledged) >= MAX_UNACKNOWLEDGED

    def offer(self, envelopes: Iterable[Envelope]) -> None:
        """Envelopes just committed for this device, in envelope id order.

        Kept while the pump reads the store: they may have committed after the
        read began (duplicates are skipped by id when pushed). While paused,
        they are not kept (memory bound); the store read after the pause has them.
        """
        if self._closed:
            return
        if self._paused:
            self._from_store = True
            self._live.clear()
        elif self._from_store:
            self._live.extend(envelopes)
            self._read_when_needed()
        else:
            # Caught up and nothing waiting: push now, in the committer's turn.
            self._push(list(envelopes))

    def wake(self) -> None:
        """Something may have been queued that was not offered (another node, an expiry)."""
        self._from_store = True
        self._wakeups += 1
        self._read_when_needed()

    def acknowledged(self, envelope_ids: Iterable[int]) -> None:
        before = len(self._unacknowledged)
        self._unacknowledged.difference_update(envelope_ids)
        if before >= MAX_UNACKNOWLEDGED > len(self._unacknowledged):
            self._read_when_needed()  # the pause is over: read what it left in the store

    def _read_when_needed(self) -> None:
        if (self._from_store and self._reader is None and not self._closed
                and not self._paused):
            self._reader = trio.CancelScope()
            self._nursery.start_soon(self._read, self._reader)

    async def _read(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while self._from_store and not self._paused:
                    # Clear before reading: an offer made before this point was
                    # committed before the read begins, so the read returns it.
                    self._live.clear()
                    wakeups = self._wakeups
                    page = await self._store.fetch_queue(
                        user_id=self.device[0], device_id=self.device[1],
                        after_envelope_id=self._cursor, limit=DELIVERY_PAGE_SIZE,
                        now=self._now_ms())
                    self._push(page)
                    if len(page) < DELIVERY_PAGE_SIZE and wakeups == self._wakeups:
                        self._from_store = False
                        if not self._queue_empty_sent:
                            self._queue_empty_sent = True
                            self._write(encode_frame(QueueEmpty()))
                if not self._from_store and self._live:
                    live, self._live = self._live, []
                    live.sort(key=_envelope_id)
                    self._push(live)
        finally:
            self._reader = None

    def _push(self, envelopes: list[Envelope]) -> None:
        chunks, pushed = [], []
        now = self._now_ms()
        for envelope in envelopes:
            if envelope.envelope_id <= self._cursor:
                continue  # already pushed (read from the store and offered live)
            if envelope.expires_at <= now:
                continue  # never delivered late (an urgent call offer lives a minute); swept

            pushed.append(envelope)
            self._cursor = envelope.envelope_id
            self._unacknowledged.add(envelope.envelope_id)
            sealed = envelope.sender_device_id == 0  # stored with no sender (relay/sealed.py)
            chunks.append(encode_frame(Deliver(
                envelope_id=envelope.envelope_id,
                sender_user_id=None if sealed else envelope.sender_user_id,
                sender_device_id=None if sealed else envelope.sender_device_id,
                client_message_id=envelope.client_message_id,
                accepted_at=envelope.accepted_at, ciphertext=envelope.ciphertext,
                shared=envelope.shared)))
        if chunks:
            self.delivered += len(chunks)
            self._write(b"".join(chunks))
            if self._on_pushed is not None:
                self._on_pushed(pushed, self._now_ms())


def _envelope_id(envelope: Envelope) -> int:
    return envelope.envelope_id


class Presence:
    """Which devices are connected to this node, and their pumps."""

    def __init__(self) -> None:
        self._pumps: dict[DeviceKey, DeliveryPump] = {}

    def attach(self, pump: DeliveryPump) -> None:
        self._pumps[pump.device] = pump

    def detach(self, pump: DeliveryPump) -> None:
        if self._pumps.get(pump.device) is pump:
            del self._pumps[pump.device]

    def offer(self, envelopes: tuple[Envelope, ...]) -> None:
        """Hand freshly committed envelopes to the pumps of connected recipients."""
        by_device: dict[DeviceKey, list[Envelope]] = {}
        for envelope in envelopes:
            key = (envelope.recipient_user_id, envelope.recipient_device_id)
            if key in self._pumps:
                by_device.setdefault(key, []).append(envelope)
        for key, batch in by_device.items():
            self._pumps[key].offer(batch)

    def __len__(self) -> int:
        return len(self._pumps)


@dataclass(slots=True)
class _Submitted:
    pending: PendingResult[Any]
    answer: Callable[[Any], None]
    is_send: bool


class CommitPipeline:
    """Consumes write outcomes in submission order (see module docstring).

    Sends and acknowledgements go through it alike: each is submitted to the
    store synchronously and answered by this one task once committed, so
    neither costs a task of its own. Writes already committed are taken in one
    go, without yielding to the scheduler once per write.
    """

    def __init__(self, store: EnvelopeQueue, presence: Presence) -> None:
        # Only the sessions submit to ``store``; the pipeline awaits their pending results,
        # relying on the queue's rule that submission order is commit order.
        self._store = store
        self._presence = presence
        self._queue: deque[_Submitted] = deque()
        self._wakeup = trio.Event()

    def submit(self, pending: PendingResult[SendOutcome],
               answer: Callable[[SendOutcome | BaseException], None]) -> None:
        """Register a submitted send; ``answer`` is called (synchronously) once it commits,
        then its envelopes are offered to their recipients' pumps."""
        self._queue.append(_Submitted(pending, answer, True))
        self._wakeup.set()

    def submit_fan_out(self, pending: PendingResult[MultiSendOutcome],
                       answer: Callable[[MultiSendOutcome | BaseException], None]) -> None:
        """``submit`` for a multi-recipient send (relay/fanout.py)."""
        self._queue.append(_Submitted(pending, answer, True))
        self._wakeup.set()

    def submit_write(self, pending: PendingResult[T],
                     answer: Callable[[T | BaseException], None]) -> None:
        """Register any other submitted write; ``answer`` is called once it commits."""
        self._queue.append(_Submitted(pending, answer, False))
        self._wakeup.set()

    @property
    def pending(self) -> int:
        """Writes submitted and not yet answered (waiting for their commit)."""
        return len(self._queue)

    async def run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            if not queue[0].pending.done:
                with contextlib.suppress(Exception):  # its outcome is taken below
                    await queue[0].pending.wait()
            while queue and queue[0].pending.done:
                self._answer(queue.popleft())

    def _answer(self, submitted: _Submitted) -> None:
        try:
            outcome: Any = submitted.pending.result()
        except Exception as error:  # a failed commit is answered, never dropped
            log.error("commit_failed", error=type(error).__name__)
            outcome = error
        try:
            submitted.answer(outcome)
        except Exception:  # one connection's bug must not stop every other answer
            log.exception("commit_answer_failed")
        if (submitted.is_send and isinstance(outcome, SendOutcome | MultiSendOutcome)
                and outcome.envelopes):
            try:
                self._presence.offer(outcome.envelopes)
            except Exception:  # the envelopes are stored: a pump re-reads them later
                log.exception("commit_offer_failed")
