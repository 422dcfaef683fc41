"""Calls, end to end: the signalling between devices and the media keys (docs/CALLS.md).

The relay gives a call its media session (`RelayClient.open_call` / `join_call`) and forwards
opaque datagrams; everything else travels as end-to-end encrypted call messages
(`client.message_content.CallSignal`), sent urgent to every device of each user involved:

    caller                               callee (every device rings)
    open_call -> offer (caller's key) -> ring; ringing ->
                                         answer on one device: join_call, answer (its key)
              <- answer                  and "handled" to its own other devices (stop ringing)
    "handled" (by that device) -> the callee's other devices stop ringing too
    media: SFrame(each participant's own key), forwarded by the relay
    hangup -> and leave                  the relay ends the session (CALL_ENDED)

Each participant draws its own random SFrame base key and KID (`crypto.sframe`) and sends it
only inside end-to-end encrypted offer/answer/join messages, so the relay never holds a media
key. When a participant leaves a group call, every remaining participant draws a new key and
sends it ("rekey") to the others only: the one who left cannot read later media.

An offer is rung only while younger than CALL_SIGNAL_TTL_MS by both the relay's acceptance
time and the caller's clock: a device that was offline longer never rings for it.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from client.call_media import CallElsewhereError, CallEndedError, CallHandle
from client.message_content import CallSignal
from client.messenger import Messenger, ReceivedCallSignal
from crypto.device import DeviceAddress
from crypto.sframe import (
    CipherSuite,
    SFrameError,
    SFrameReceiver,
    SFrameSender,
    UnknownKeyIdError,
    new_base_key,
)
from wire.call_frames import CALL_SIGNAL_TTL_MS

__all__ = ["CALL_SUITE", "MAX_PENDING_CALLS", "RING_TIMEOUT_MS", "SIGNAL_BUFFER", "Call",
           "CallManager", "IncomingCall"]

CALL_SUITE = CipherSuite.AES_128_GCM_SHA256_128
"""The SFrame cipher suite of every call (RFC 9605's AES_128_GCM_SHA256_128)."""
MAX_PENDING_CALLS = 16
"""Calls whose keys are kept before this device joins them (a join can arrive before the
offer): the oldest are forgotten first."""
SIGNAL_BUFFER = 256
"""Call messages waiting for the manager; more are dropped (a flood, never a real call)."""
RING_TIMEOUT_MS = CALL_SIGNAL_TTL_MS
"""A call rings at most this long after its offer was sent (by the older of the caller's
send time and the relay's acceptance time), then stops as "missed": a caller that vanished
without hanging up does not leave a phone ringing. Its offer would no longer be rung by then."""


@dataclass(eq=False, kw_only=True)
class IncomingCall:
    """An offer this device rings for."""

    call_id: bytes  #: the relay's call id
    caller_phone: str  #: who calls (confirmed by the relay's directory)
    caller: DeviceAddress  #: the calling device
    members: tuple[str, ...]  #: the other invited numbers of a group call
    offered_at_ms: int  #: the caller's clock when it sent the offer
    stopped: trio.Event = field(default_factory=trio.Event)  #: set when it stops ringing
    stop_reason: str = ""  #: "answered elsewhere", "hung up", "answered", "declined", "missed"


@dataclass(eq=False)
class Call:
    """A call this device takes part in: its media session and media keys."""

    session: CallHandle
    sender: SFrameSender
    receiver: SFrameReceiver
    opener: bool  #: this device opened the call
    caller: DeviceAddress | None = None  #: the device that opened it (None: this one)
    phones: dict[str, str] = field(default_factory=dict)  #: user id -> number, to signal
    peers: dict[DeviceAddress, int] = field(default_factory=dict)  #: joined device -> its KID
    answered: trio.Event = field(default_factory=trio.Event)  #: a callee answered
    ringing: trio.Event = field(default_factory=trio.Event)  #: a callee's device rings
    busy: trio.Event = field(default_factory=trio.Event)  #: a callee is in another call
    ended: trio.Event = field(default_factory=trio.Event)  #: the call is over here
    hung_up_by_peer: bool = False  #: the other side ended it (nothing more to tell them)
    peers_changed: trio.Event = field(default_factory=trio.Event)  #: replaced at each change
    rekeys: int = 0  #: new sending keys drawn after someone left
    undecryptable: int = 0  #: media datagrams refused by SFrame's checks (forged, replayed)
    unknown_key: int = 0
    """Media datagrams under a KID this device holds no key for, refused: the sender's key
    has not arrived yet (it travels as a message, the media as datagrams, and in a group call
    a newcomer's media can come first) or was replaced by a rekey; a forger's, too."""

    @property
    def call_id(self) -> bytes:
        return self.session.call_id

    def end(self) -> None:
        """Mark the call over here (whoever waits on it wakes)."""
        self.ended.set()
        self.peers_updated()

    def peers_updated(self) -> None:
        """Wake whoever waits on ``peers_changed`` (the peers or the call changed)."""
        self.peers_changed.set()
        self.peers_changed = trio.Event()

    async def wait_for_peers(self, count: int) -> None:
        """Return once ``count`` other devices sent their keys (answered or joined)."""
        while len(self.peers) < count and not self.ended.is_set():
            await self.peers_changed.wait()

    def send_media(self, plaintext: bytes) -> None:
        """Encrypt with this device's current key and send (never blocks; may be dropped)."""
        self.session.send(self.sender.encrypt(plaintext, metadata=self.call_id))

    async def receive_media(self) -> tuple[int, bytes]:
        """The next media plaintext and its sender's KID; refused datagrams are counted and
        skipped.

        Raises:
            CallEndedError: the relay ended the call (or this device left it).
        """
        while True:
            try:
                payload = await self.session.receive()
            except CallEndedError:
                self.end()
                raise
            try:
                return self.receiver.decrypt(payload, metadata=self.call_id)
            except UnknownKeyIdError:
                self.unknown_key += 1
            except SFrameError:
                self.undecryptable += 1


def _new_sender() -> tuple[SFrameSender, int, bytes]:
    key_id = secrets.randbelow(2**32)
    base_key = new_base_key(CALL_SUITE)
    return SFrameSender(CALL_SUITE, key_id, base_key), key_id, base_key


def _now_ms() -> int:
    return int(time.time() * 1000)


class CallManager:
    """One device's calls: place, ring, answer, hang up, and the key exchange behind them.

    Run `run` in a nursery while something reads the messenger's deliveries
    (`Messenger.messages`): the messenger hands call messages over as they arrive.
    """

    def __init__(self, messenger: Messenger, *, clock_ms: Callable[[], int] = _now_ms) -> None:
        self.messenger = messenger
        self.clock_ms = clock_ms
        self.calls: dict[bytes, Call] = {}
        self.ringing: dict[bytes, IncomingCall] = {}
        self.expired_offers = 0  #: offers never rung because they were too old
        self.signals_handled = 0  #: call messages handled so far
        self._handled = trio.Event()
        self._keys: OrderedDict[bytes, dict[DeviceAddress, tuple[int, bytes]]] = OrderedDict()
        self._signals_in, self._signals_out = trio.open_memory_channel[ReceivedCallSignal](
            SIGNAL_BUFFER)
        self._incoming_in, self.incoming = trio.open_memory_channel[IncomingCall](
            MAX_PENDING_CALLS)
        self._timers: trio.Nursery | None = None
        messenger.on_call_signal = self._hand_over

    def _hand_over(self, received: ReceivedCallSignal) -> None:
        with contextlib.suppress(trio.WouldBlock):  # a flood; a real call never fills it
            self._signals_in.send_nowait(received)

    async def run(self) -> None:
        """Handle call messages, and stop ringing calls after RING_TIMEOUT_MS, until
        cancelled."""
        async with trio.open_nursery() as timers:
            self._timers = timers
            try:
                async for received in self._signals_out:
                    await self._handle(received)
            finally:
                self._timers = None
                timers.cancel_scope.cancel()

    async def _ring_until(self, incoming: IncomingCall, seconds: float) -> None:
        """Stop ``incoming`` ringing as "missed" after ``seconds``, unless it stopped before."""
        with trio.move_on_after(seconds):
            await incoming.stopped.wait()
            return
        if self.ringing.get(incoming.call_id) is incoming:
            self._stop_ringing(incoming.call_id, "missed")

    async def wait_handled(self, count: int) -> None:
        """Return once ``count`` call messages were handled in all."""
        while self.signals_handled < count:
            await self._handled.wait()

    async def handle_waiting(self) -> int:
        """Handle the call messages already received, without waiting for more (for a
        device that reads its queue once and leaves); returns how many."""
        handled = 0
        while True:
            try:
                received = self._signals_out.receive_nowait()
            except trio.WouldBlock:
                return handled
            await self._handle(received)
            handled += 1

    def _signal(self, kind: str, call_id: bytes, *, key_id: int | None = None,
                key: bytes | None = None, members: tuple[str, ...] = (),
                by_device: int | None = None) -> CallSignal:
        return CallSignal(kind=kind, call_id=call_id, sender_phone=self.messenger.phone,
                          sent_at_ms=self.clock_ms(), key_id=key_id, key=key, members=members,
                          by_device=by_device)

    # -- placing and answering ----------------------------------------------------------

    async def place_call(self, phones: list[str]) -> Call:
        """Open a media session with the users of ``phones`` and ring all their devices."""
        contacts = [await self.messenger.contact(phone) for phone in phones]
        session = await self.messenger.client.open_call([c.user_id for c in contacts])
        sender, key_id, base_key = _new_sender()
        call = Call(session=session, sender=sender, receiver=SFrameReceiver(CALL_SUITE),
                    opener=True, phones={c.user_id: c.phone for c in contacts})
        self.calls[call.call_id] = call
        self._adopt_pending(call)
        for phone in phones:
            await self.messenger.send_call_signal(phone, self._signal(
                "offer", call.call_id, key_id=key_id, key=base_key,
                members=tuple(other for other in phones if other != phone)))
        return call

    async def answer(self, incoming: IncomingCall) -> Call:
        """Join the call, send this device's key to every participant, and tell this
        account's other devices to stop ringing."""
        session = await self._join(incoming.call_id)
        sender, key_id, base_key = _new_sender()
        phones = {incoming.caller.user_id: incoming.caller_phone}
        for phone in incoming.members:
            if phone != self.messenger.phone:
                phones[(await self.messenger.contact(phone)).user_id] = phone
        call = Call(session=session, sender=sender, receiver=SFrameReceiver(CALL_SUITE),
                    opener=False, phones=phones, caller=incoming.caller)
        self.calls[call.call_id] = call
        self._stop_ringing(incoming.call_id, "answered")
        self._adopt_pending(call)
        call.answered.set()
        await self.messenger.send_call_signal(incoming.caller_phone, self._signal(
            "answer", call.call_id, key_id=key_id, key=base_key))
        for phone in incoming.members:
            if phone != self.messenger.phone:
                await self.messenger.send_call_signal(phone, self._signal(
                    "join", call.call_id, key_id=key_id, key=base_key))
        await self.messenger.send_call_signal(self.messenger.phone, self._signal(
            "handled", call.call_id, by_device=self.messenger.device_id))
        return call

    async def _join(self, call_id: bytes) -> CallHandle:
        """Join the call's media session, following CALL_ELSEWHERE once: the messenger moves
        this device's connection to the cluster node that holds the call, and joins there."""
        try:
            return await self.messenger.client.join_call(call_id)
        except CallElsewhereError as elsewhere:
            try:
                await self.messenger.move_to(elsewhere.address)
            except ValueError:
                raise elsewhere from None  # not HOST:PORT: nowhere this device can go
        return await self.messenger.client.join_call(call_id)

    async def decline(self, incoming: IncomingCall) -> None:
        """Refuse a ringing call: the caller hears "hangup", this account's devices stop."""
        self._stop_ringing(incoming.call_id, "declined")
        await self.messenger.send_call_signal(incoming.caller_phone,
                                              self._signal("hangup", incoming.call_id))
        await self.messenger.send_call_signal(self.messenger.phone, self._signal(
            "handled", incoming.call_id, by_device=self.messenger.device_id))

    async def hang_up(self, call: Call) -> None:
        """Leave the call: tell every participant (in a 1:1 call, or a caller nobody answered
        yet, this ends the call for the callees' devices), then leave the media session."""
        kind = "leave" if len(call.phones) > 1 and call.answered.is_set() else "hangup"
        told = call.hung_up_by_peer
        call.end()
        self.calls.pop(call.call_id, None)
        with trio.CancelScope(shield=True):
            if not told:
                for phone in call.phones.values():
                    await self.messenger.send_call_signal(phone,
                                                          self._signal(kind, call.call_id))
            await call.session.leave()

    # -- receiving call messages --------------------------------------------------------

    async def _handle(self, received: ReceivedCallSignal) -> None:
        try:
            await self._handle_one(received)
        finally:
            self.signals_handled += 1
            self._handled.set()
            self._handled = trio.Event()

    async def _handle_one(self, received: ReceivedCallSignal) -> None:
        signal, sender = received.signal, received.sender
        call = self.calls.get(signal.call_id)
        if signal.key_id is not None and signal.key is not None:
            self._remember_key(signal.call_id, sender, signal.key_id, signal.key)
        match signal.kind:
            case "offer":
                await self._offer(received)
            case "ringing" if call is not None:
                call.ringing.set()
            case "busy" if call is not None:
                call.busy.set()
            case "answer" | "join" | "rekey" if call is not None:
                self._adopt_pending(call)
                call.answered.set()
                if signal.kind == "answer" and call.opener:
                    await self.messenger.send_call_signal(signal.sender_phone, self._signal(
                        "handled", call.call_id, by_device=sender.device_id))
            case "handled" if signal.by_device != self.messenger.device_id:
                if self._may_stop_ringing(signal.call_id, sender, own_device_too=True):
                    self._stop_ringing(signal.call_id, "answered elsewhere")
            case "hangup" | "leave":
                if self._may_stop_ringing(signal.call_id, sender, own_device_too=False):
                    self._stop_ringing(signal.call_id, "hung up")
                if call is None:
                    return
                if signal.kind == "hangup" and (len(call.phones) == 1 or sender == call.caller):
                    call.hung_up_by_peer = True
                    call.end()  # the media loop sees it and leaves the session
                else:
                    await self._departed(call, sender)
            case _:
                pass  # about a call this device is not in, or its own message

    async def _offer(self, received: ReceivedCallSignal) -> None:
        signal, now = received.signal, self.clock_ms()
        age = max(now - received.accepted_at, now - signal.sent_at_ms)
        if age > CALL_SIGNAL_TTL_MS:
            self.expired_offers += 1  # never rung: the caller gave up long ago
            return
        if signal.call_id in self.calls or signal.call_id in self.ringing:
            return
        if self.calls:
            await self.messenger.send_call_signal(signal.sender_phone,
                                                  self._signal("busy", signal.call_id))
            return
        incoming = IncomingCall(call_id=signal.call_id, caller_phone=signal.sender_phone,
                                caller=received.sender, members=signal.members,
                                offered_at_ms=signal.sent_at_ms)
        if len(self.ringing) >= MAX_PENDING_CALLS:
            return
        self.ringing[signal.call_id] = incoming
        try:
            self._incoming_in.send_nowait(incoming)
        except trio.WouldBlock:
            del self.ringing[signal.call_id]
            return
        if self._timers is not None:
            self._timers.start_soon(self._ring_until, incoming,
                                    max(0, RING_TIMEOUT_MS - age) / 1000)
        await self.messenger.send_call_signal(signal.sender_phone,
                                              self._signal("ringing", signal.call_id))

    def _may_stop_ringing(self, call_id: bytes, sender: DeviceAddress, *,
                          own_device_too: bool) -> bool:
        """Only the caller (or, for "handled", another device of this account) stops a
        ringing call: another invitee of a group call cannot."""
        incoming = self.ringing.get(call_id)
        return incoming is not None and (sender == incoming.caller or (
            own_device_too and sender.user_id == self.messenger.user_id))

    def _stop_ringing(self, call_id: bytes, reason: str) -> None:
        incoming = self.ringing.pop(call_id, None)
        if incoming is not None:
            incoming.stop_reason = reason
            incoming.stopped.set()

    def _remember_key(self, call_id: bytes, sender: DeviceAddress, key_id: int,
                      key: bytes) -> None:
        keys = self._keys.setdefault(call_id, {})
        self._keys.move_to_end(call_id)
        keys[sender] = (key_id, key)
        while len(self._keys) > MAX_PENDING_CALLS:
            self._keys.popitem(last=False)

    def _adopt_pending(self, call: Call) -> None:
        """Take the keys received for this call: each participant's latest replaces its
        previous one (a rekey), so an old key stops opening media."""
        for address, (key_id, key) in self._keys.get(call.call_id, {}).items():
            if address == DeviceAddress(user_id=self.messenger.user_id,
                                        device_id=self.messenger.device_id):
                continue
            previous = call.peers.get(address)
            if previous is not None and previous != key_id:
                call.receiver.remove_key(previous)
            call.receiver.add_key(key_id, key)
            call.peers[address] = key_id
        call.peers_updated()

    async def _departed(self, call: Call, address: DeviceAddress) -> None:
        """A participant left a group call: drop its key, then draw a new sending key and
        send it to the participants still in the call only."""
        key_id = call.peers.pop(address, None)
        self._keys.get(call.call_id, {}).pop(address, None)
        if key_id is None:
            return  # never joined (an invitee declining): nobody to re-key against
        call.receiver.remove_key(key_id)
        call.peers_updated()
        if not call.peers:
            call.end()
            return
        sender, new_key_id, base_key = _new_sender()
        remaining = {peer.user_id for peer in call.peers}
        for user_id in remaining:
            phone = call.phones.get(user_id)
            if phone is not None:
                await self.messenger.send_call_signal(phone, self._signal(
                    "rekey", call.call_id, key_id=new_key_id, key=base_key))
        call.sender = sender  # only once the others hold the new key
        call.rekeys += 1
