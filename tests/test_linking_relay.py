"""Accounts, device lists and link channels, end to end over real QUIC on loopback.

PROTOCOL.md "Accounts, device lists and linking": a second SMS enrolment of a number revokes
its first device (which is told why, live and when it comes back); an account's devices change
only by a list its account key signed, never by an older one; link channels carry opaque
messages both ways, wake a waiting fetch at once, and refuse everything about a channel one
cannot use with one code.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from client.connection import ConnectionClosed, RelayClient, RelayError
from crypto.device_list import decode_device_list, sign_device_list
from enrolment.service import REENROLMENT_REVOKE_REASON
from relay.device_lists import REMOVED_REVOKE_REASON
from relay.limits import (
    DEVICE_LIST_PUBLISHES_PER_HOUR,
    LINK_OPENS_PER_ADDRESS,
    MAX_WAITING_LINK_FETCHES,
)
from relay.linking import LINK_RECHECK_S, ChannelDoorbells, LinkChannelService, address_key
from relay.server import RunningRelay, serve
from relay.settings import RelaySettings
from tests.conftest import (
    EnrolledDevice,
    RelayUnderTest,
    SmsInbox,
    enrol,
    link_device,
    new_account,
)
from tests.postgres_schemas import fresh_schema, store_url
from tests.relay_processes import declare as declare_in_store
from wire.account_frames import LinkPost
from wire.frames import ErrorCode
from wire.limits import (
    LINK_CHANNEL_ID_SIZE,
    LINK_CHANNEL_TTL_MS,
    LINK_FETCH_WAIT_MS,
    MAX_LINK_PAYLOAD_SIZE,
    MAX_LINK_POSTS_PER_SIDE,
)

ALICE, BOB = "+33612345678", "+33698765432"
TIMEOUT_S = 10
"""Bound on anything that could hang; not a timing assertion."""
LONG_S = 3600.0
"""A wait no test reaches: what ends it is the event under test."""


# --- helpers ----------------------------------------------------------------------------------
@asynccontextmanager
async def authenticated(relay: RelayUnderTest, device: EnrolledDevice) -> AsyncIterator[
        RelayClient]:
    async with relay.connect() as client:
        with trio.fail_after(TIMEOUT_S):
            await client.authenticate(device.user_id, device.device_id, device.key)
        yield client


async def closed_by_relay(client: RelayClient) -> ConnectionClosed:
    """Wait for the relay to close the connection: how (code and reason)."""
    with pytest.raises(ConnectionClosed) as closed:
        with trio.fail_after(TIMEOUT_S):
            async for _ in client.deliveries():
                pass
    return closed.value


async def refused(request: Awaitable[Any]) -> RelayError:
    with pytest.raises(RelayError) as refusal:
        with trio.fail_after(TIMEOUT_S):
            await request
    return refusal.value


async def refused_authentication(relay: RelayUnderTest, user_id: str, device_id: int,
                                 key: SigningKey) -> RelayError:
    async with relay.connect() as client:
        return await refused(client.authenticate(user_id, device_id, key))


async def publish_without(relay: RelayUnderTest, approver: EnrolledDevice,
                          removed: EnrolledDevice) -> tuple[int, ...]:
    """The approver publishes its account's next list without ``removed``'s key."""
    async with authenticated(relay, approver) as client:
        current = await client.list_devices()
        assert current.signed_list is not None
        listed = decode_device_list(current.signed_list, account_key=approver.account.public_key)
        published = await client.publish_device_list(listed.with_devices(
            approver.account, listed.devices - {removed.identity_key}).encoded)
    assert published.added == ()
    return published.revoked


class ObservedStore:
    """The relay's store, reporting each LINK_FETCH read that found nothing (the fetch is then
    waiting: it took its doorbell before reading)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.empty_reads = 0
        self.read_empty = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def take_link_messages(self, **arguments: Any) -> list[bytes] | None:
        messages: list[bytes] | None = await self._store.take_link_messages(**arguments)
        if messages == []:
            self.empty_reads += 1
            self.read_empty.set()
            self.read_empty = trio.Event()
        return messages

    async def waiting(self, count: int) -> None:
        with trio.fail_after(TIMEOUT_S):
            while self.empty_reads < count:
                await self.read_empty.wait()


class ObservedDoorbells(ChannelDoorbells):
    """Doorbells that say when the last waiting fetch stopped listening."""

    def __init__(self) -> None:
        super().__init__()
        self.idle = trio.Event()

    @contextmanager
    def listening(self, side: tuple[bytes, bool]) -> Iterator[Callable[[], trio.Event]]:
        try:
            with super().listening(side) as doorbell:
                yield doorbell
        finally:
            if not self.listened:
                self.idle.set()


def install_links(relay: RelayUnderTest, *, fetch_wait_s: float = LONG_S,
                  recheck_s: float = LONG_S, max_open: int = 10_000,
                  now_ms: Callable[[], int] | None = None) -> tuple[LinkChannelService,
                                                                   ObservedStore]:
    """Replace the relay's link-channel service by one with these waits (sessions read it at
    each request), over an observed store."""
    context = relay.running.context
    store = ObservedStore(context.store)
    service = LinkChannelService(store, now_ms=now_ms or context.now_ms,  # type: ignore[arg-type]
                                 metrics=context.metrics, fetch_wait_s=fetch_wait_s,
                                 recheck_s=recheck_s, max_open=max_open)
    context.linking = service
    return service, store


# --- re-enrolment -----------------------------------------------------------------------------
async def test_enrolling_a_number_again_revokes_its_first_device_and_tells_it_why(
        relay: RelayUnderTest) -> None:
    first = await enrol(relay, ALICE)
    async with authenticated(relay, first) as first_client:
        second = await enrol(relay, ALICE)
        closed = await closed_by_relay(first_client)
    assert (closed.code, closed.reason) == (ErrorCode.DEVICE_REVOKED, REENROLMENT_REVOKE_REASON)
    assert second.user_id == first.user_id and second.device_id != first.device_id

    # Coming back later, the old phone proves it is that device, and learns what happened.
    back = await refused_authentication(relay, first.user_id, first.device_id, first.key)
    assert (back.code, back.reason) == (ErrorCode.DEVICE_REVOKED, REENROLMENT_REVOKE_REASON)
    # Without its key nothing is learned: as for a device that never existed.
    impostor = await refused_authentication(relay, first.user_id, first.device_id,
                                            SigningKey.generate())
    unknown = await refused_authentication(relay, first.user_id, 99, first.key)
    assert impostor.code is unknown.code is ErrorCode.AUTHENTICATION_FAILED
    assert impostor.reason == unknown.reason

    async with authenticated(relay, second) as client:
        listed = await client.list_devices()
    assert [device.device_id for device in listed.devices] == [second.device_id]
    assert listed.account_key == second.account.public_key
    assert listed.signed_list is not None
    assert decode_device_list(listed.signed_list, account_key=second.account.public_key
                              ).devices == {second.identity_key}
    assert relay.running.context.metrics.revoked_devices == 1


async def test_a_second_enrolment_with_the_same_account_key_is_refused(
        relay: RelayUnderTest) -> None:
    first = await enrol(relay, ALICE)
    already = len(relay.sms.messages)
    async with relay.connect() as client:
        await client.enrol_start(ALICE)
        with trio.fail_after(TIMEOUT_S):
            while len(relay.sms.messages) == already:
                await relay.sms.arrived.wait()
        code = await relay.sms.code_for(ALICE)
        refusal = await refused(client.enrol_verify(
            ALICE, code, SigningKey.generate().verify_key.encode(), first.account))
    assert refusal.code is ErrorCode.INVALID_REQUEST
    async with authenticated(relay, first):
        pass  # still enrolled


# --- publishing device lists --------------------------------------------------------------------
async def test_a_published_device_is_served_and_removing_it_revokes_it(
        relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    linked = await link_device(relay, alice)
    assert linked.device_id not in (alice.device_id, bob.device_id)

    async with authenticated(relay, bob) as sender, authenticated(relay, linked) as linked_client:
        listed = await sender.list_devices(alice.user_id)
        assert {(device.device_id, device.identity_key) for device in listed.devices} == {
            (alice.device_id, alice.identity_key), (linked.device_id, linked.identity_key)}
        assert listed.account_key == alice.account.public_key
        assert listed.signed_list is not None
        signed = decode_device_list(listed.signed_list, account_key=alice.account.public_key)
        assert (signed.version, signed.devices) == (2, {alice.identity_key, linked.identity_key})

        # A SEND must now cover exactly the two listed devices.
        missing = await refused(sender.send(alice.user_id, {alice.device_id: b"c"},
                                            client_message_id=1))
        assert missing.code is ErrorCode.MISMATCHED_DEVICES
        assert missing.error.missing_devices == (linked.device_id,)
        assert await sender.send(alice.user_id, {alice.device_id: b"c", linked.device_id: b"c"},
                                 client_message_id=2) is False

        revoked = await publish_without(relay, alice, linked)
        assert revoked == (linked.device_id,)
        closed = await closed_by_relay(linked_client)
        assert (closed.code, closed.reason) == (ErrorCode.DEVICE_REVOKED, REMOVED_REVOKE_REASON)

        extra = await refused(sender.send(
            alice.user_id, {alice.device_id: b"c", linked.device_id: b"c"}, client_message_id=3))
        assert extra.code is ErrorCode.MISMATCHED_DEVICES
        assert extra.error.extra_devices == (linked.device_id,)
        assert await sender.send(alice.user_id, {alice.device_id: b"c"},
                                 client_message_id=4) is False

    back = await refused_authentication(relay, linked.user_id, linked.device_id, linked.key)
    assert (back.code, back.reason) == (ErrorCode.DEVICE_REVOKED, REMOVED_REVOKE_REASON)
    assert relay.running.context.metrics.device_lists["published"] == 2


async def test_a_replayed_older_list_is_refused_and_changes_nothing(relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    extra = SigningKey.generate().verify_key.encode()
    with_extra = sign_device_list(alice.account, version=2,
                                  devices=[alice.identity_key, extra])
    without = sign_device_list(alice.account, version=3, devices=[alice.identity_key])
    fork = sign_device_list(alice.account, version=3, devices=[alice.identity_key, extra])
    async with authenticated(relay, alice) as client:
        added = await client.publish_device_list(with_extra.encoded)
        assert [device.identity_key for device in added.added] == [extra]
        removed = await client.publish_device_list(without.encoded)
        assert removed.revoked == (added.added[0].device_id,)
        for stale in (with_extra, fork, without):  # older, the same version forked, or again
            refusal = await refused(client.publish_device_list(stale.encoded))
            assert refusal.code is ErrorCode.STALE_DEVICE_LIST
        listed = await client.list_devices()
    assert [device.device_id for device in listed.devices] == [alice.device_id]
    assert listed.signed_list == without.encoded


async def test_a_list_the_account_key_did_not_sign_is_refused(relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    stranger = new_account()
    newcomer = SigningKey.generate().verify_key.encode()
    other_key = sign_device_list(stranger, version=2, devices=[alice.identity_key, newcomer])
    tampered = bytearray(sign_device_list(alice.account, version=2,
                                          devices=[alice.identity_key, newcomer]).encoded)
    tampered[-1] ^= 1
    drops_publisher = sign_device_list(alice.account, version=2, devices=[newcomer])
    async with authenticated(relay, alice) as client:
        for bad in (other_key.encoded, bytes(tampered), drops_publisher.encoded, b"garbage"):
            refusal = await refused(client.publish_device_list(bad))
            assert refusal.code is ErrorCode.INVALID_DEVICE_LIST, bad
        listed = await client.list_devices()
    assert [device.device_id for device in listed.devices] == [alice.device_id]
    assert listed.signed_list is not None
    assert decode_device_list(listed.signed_list).version == 1


async def test_publishing_is_rate_limited_per_device(relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    async with authenticated(relay, alice) as client:
        for _ in range(DEVICE_LIST_PUBLISHES_PER_HOUR):
            assert (await refused(client.publish_device_list(b"x"))).code is (
                ErrorCode.INVALID_DEVICE_LIST)
        limited = await refused(client.publish_device_list(b"x"))
    assert limited.code is ErrorCode.RATE_LIMITED


# --- link channels -----------------------------------------------------------------------------
async def test_a_link_channel_carries_messages_both_ways(relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    async with relay.connect() as new_device, authenticated(relay, alice) as approver:
        opened = await new_device.link_open()
        assert len(opened.channel_id) == LINK_CHANNEL_ID_SIZE
        assert opened.expires_at > relay.running.context.now_ms()
        # Until the approver posted, the channel is bound to no account: nothing to read.
        unbound = await refused(approver.link_fetch(opened.channel_id))
        assert unbound.code is ErrorCode.LINK_CHANNEL_UNKNOWN
        await approver.link_post(opened.channel_id, b"offer 1")
        await approver.link_post(opened.channel_id, b"offer 2")
        assert await new_device.link_fetch(opened.channel_id) == [b"offer 1", b"offer 2"]
        await new_device.link_post(opened.channel_id, b"answer")
        assert await approver.link_fetch(opened.channel_id) == [b"answer"]
        # A link code is shown before authentication; LINK_OPEN has no place after it.
        after = await refused(approver.link_open())
        assert after.code is ErrorCode.UNEXPECTED_FRAME
    assert relay.running.context.metrics.linking["open", "ok"] == 1
    assert relay.running.context.metrics.linking["post", "ok"] == 3


async def test_a_waiting_fetch_wakes_at_once_when_the_other_side_posts(
        relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    _, store = install_links(relay)  # neither the wait nor the re-read ends within the test
    fetched: list[list[bytes]] = []
    async with relay.connect() as new_device, authenticated(relay, alice) as approver:
        channel = (await new_device.link_open()).channel_id
        await approver.link_post(channel, b"offer")
        assert await new_device.link_fetch(channel) == [b"offer"]
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                async def approver_fetch() -> None:
                    fetched.append(await approver.link_fetch(channel))
                nursery.start_soon(approver_fetch)
                await store.waiting(1)
                await new_device.link_post(channel, b"answer")
    assert fetched == [[b"answer"]]


async def test_a_post_through_another_node_is_found_by_the_periodic_read(
        relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    _, store = install_links(relay, recheck_s=0.05)
    context = relay.running.context
    async with relay.connect() as new_device:
        channel = (await new_device.link_open()).channel_id
        fetched: list[list[bytes]] = []
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                async def fetch() -> None:
                    fetched.append(await new_device.link_fetch(channel))
                nursery.start_soon(fetch)
                await store.waiting(1)
                # Written by another node: no doorbell rings here.
                await context.store.post_link_message(
                    channel_id=channel, to_new_device=True, payload=b"from elsewhere",
                    approver_user_id=alice.user_id, now=context.now_ms(),
                    max_posts=MAX_LINK_POSTS_PER_SIDE)
    assert fetched == [[b"from elsewhere"]]


async def test_a_fetch_with_nothing_to_take_answers_empty_after_its_wait(
        relay: RelayUnderTest) -> None:
    install_links(relay, fetch_wait_s=0.1, recheck_s=0.05)
    async with relay.connect() as new_device:
        channel = (await new_device.link_open()).channel_id
        with trio.fail_after(TIMEOUT_S):
            assert await new_device.link_fetch(channel) == []
    assert relay.running.context.metrics.linking["fetch", "empty"] == 1


async def test_unknown_foreign_and_expired_channels_are_refused_alike(
        relay: RelayUnderTest) -> None:
    alice, bob = await enrol(relay, ALICE), await enrol(relay, BOB)
    clock = [relay.running.context.now_ms()]
    install_links(relay, now_ms=lambda: clock[0])
    reasons = set()
    async with relay.connect() as new_device, authenticated(relay, alice) as approver, \
            authenticated(relay, bob) as other:
        unknown = secrets.token_bytes(LINK_CHANNEL_ID_SIZE)
        channel = (await new_device.link_open()).channel_id
        await approver.link_post(channel, b"offer")  # binds the channel to alice's account
        await new_device.link_post(channel, b"answer")
        for attempt in (new_device.link_post(unknown, b"p"), new_device.link_fetch(unknown),
                        approver.link_post(unknown, b"p"), approver.link_fetch(unknown),
                        other.link_post(channel, b"p"), other.link_fetch(channel)):
            refusal = await refused(attempt)
            assert refusal.code is ErrorCode.LINK_CHANNEL_UNKNOWN
            reasons.add(refusal.reason)
        assert await approver.link_fetch(channel) == [b"answer"]  # bob took nothing

        clock[0] += LINK_CHANNEL_TTL_MS
        for attempt in (new_device.link_fetch(channel), approver.link_post(channel, b"late")):
            refusal = await refused(attempt)
            assert refusal.code is ErrorCode.LINK_CHANNEL_UNKNOWN
            reasons.add(refusal.reason)
    assert len(reasons) == 1


async def test_each_side_posts_a_bounded_number_of_bounded_messages(
        relay: RelayUnderTest) -> None:
    alice = await enrol(relay, ALICE)
    async with relay.connect() as new_device, authenticated(relay, alice) as approver:
        channel = (await new_device.link_open()).channel_id
        for client in (approver, new_device):
            for number in range(MAX_LINK_POSTS_PER_SIDE):
                await client.link_post(channel, b"m%d" % number)
            used_up = await refused(client.link_post(channel, b"one more"))
            assert used_up.code is ErrorCode.LINK_CHANNEL_UNKNOWN
        assert len(await new_device.link_fetch(channel)) == MAX_LINK_POSTS_PER_SIDE
        # Taking them gives no new posts: the bound is over the channel's life.
        assert (await refused(approver.link_post(channel, b"again"))).code is (
            ErrorCode.LINK_CHANNEL_UNKNOWN)

        oversized = object.__new__(LinkPost)  # what a careless client could send
        object.__setattr__(oversized, "channel_id", channel)
        object.__setattr__(oversized, "payload", b"p" * (MAX_LINK_PAYLOAD_SIZE + 1))
        too_large = await refused(new_device.request(oversized))
        assert too_large.code is ErrorCode.PAYLOAD_TOO_LARGE


async def test_a_connection_waits_on_few_fetches_and_closing_it_ends_them(
        relay: RelayUnderTest) -> None:
    service, store = install_links(relay)
    doorbells = service.doorbells = ObservedDoorbells()
    async with relay.connect() as opener:
        channel = (await opener.link_open()).channel_id
    async with trio.open_nursery() as nursery:
        async with relay.connect() as greedy:
            async def fetch() -> None:
                with contextlib.suppress(ConnectionClosed):
                    await greedy.link_fetch(channel)

            for _ in range(MAX_WAITING_LINK_FETCHES):
                nursery.start_soon(fetch)
            await store.waiting(MAX_WAITING_LINK_FETCHES)
            assert doorbells.listened == 1  # one side of one channel, two fetches on it
            limited = await refused(greedy.link_fetch(channel))
            assert limited.code is ErrorCode.RATE_LIMITED
        # The connection closed: the relay ends its waiting fetches with it.
        with trio.fail_after(TIMEOUT_S):
            await doorbells.idle.wait()
        nursery.cancel_scope.cancel()


async def test_link_open_is_limited_per_address(relay: RelayUnderTest) -> None:
    async with relay.connect() as client:
        for _ in range(LINK_OPENS_PER_ADDRESS):
            await client.link_open()
        limited = await refused(client.link_open())
    assert limited.code is ErrorCode.RATE_LIMITED


async def test_link_open_is_limited_by_the_channels_open(relay: RelayUnderTest) -> None:
    install_links(relay, max_open=1)
    async with relay.connect() as client:
        await client.link_open()
        full = await refused(client.link_open())
    assert full.code is ErrorCode.RATE_LIMITED
    assert relay.running.context.metrics.linking["open", "full"] == 1


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # another address of the same /64
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4 reaching a dual-stack socket
])
def test_link_opens_are_counted_per_ipv4_address_or_ipv6_64(host: str, key: str) -> None:
    assert address_key(host) == key


# --- two nodes of a cluster --------------------------------------------------------------------
@pytest.fixture
async def two_nodes(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[
        tuple[RelayUnderTest, RelayUnderTest]]:
    """Two in-process relays sharing one PostgreSQL schema: two nodes of a cluster."""
    with fresh_schema() as schema:
        url = store_url(schema)
        await declare_in_store(url, tmp_path, (ALICE, BOB), organisation="acme")
        nodes = []
        for name in ("one", "two"):
            sms = SmsInbox()
            settings = RelaySettings(data_dir=tmp_path / name, listen_port=0, store=url,
                                     node_name=f"node-{name}-{uuid.uuid4().hex}",
                                     enrolment_secret_file=tmp_path / "enrolment.secret")
            running: RunningRelay = await nursery.start(
                lambda task_status, settings=settings, sms=sms: serve(
                    settings, task_status=task_status, on_sms_sent=sms))
            nodes.append(RelayUnderTest(data_dir=settings.data_dir, running=running, sms=sms))
        try:
            yield nodes[0], nodes[1]
        finally:
            for node in nodes:
                node.running.stop()
            with trio.fail_after(TIMEOUT_S):
                for node in nodes:
                    await node.running.stopped.wait()


async def test_a_device_revoked_through_another_node_is_closed_with_the_reason(
        two_nodes: tuple[RelayUnderTest, RelayUnderTest]) -> None:
    one, two = two_nodes
    first = await enrol(one, ALICE)
    linked = await link_device(one, first)
    async with authenticated(two, linked) as linked_client:
        assert await publish_without(one, first, linked) == (linked.device_id,)
        removed = await closed_by_relay(linked_client)
    assert (removed.code, removed.reason) == (ErrorCode.DEVICE_REVOKED, REMOVED_REVOKE_REASON)
    async with authenticated(two, first) as first_client:
        await enrol(one, ALICE)
        replaced = await closed_by_relay(first_client)
    assert (replaced.code, replaced.reason) == (ErrorCode.DEVICE_REVOKED,
                                                REENROLMENT_REVOKE_REASON)


async def test_a_post_through_another_node_reaches_a_waiting_fetch(
        two_nodes: tuple[RelayUnderTest, RelayUnderTest]) -> None:
    one, two = two_nodes
    alice = await enrol(one, ALICE)
    _, store = install_links(two, fetch_wait_s=LINK_FETCH_WAIT_MS / 1000,
                             recheck_s=LINK_RECHECK_S)  # the protocol's: observed only
    fetched: list[list[bytes]] = []
    async with two.connect() as new_device, authenticated(one, alice) as approver:
        channel = (await new_device.link_open()).channel_id
        with trio.fail_after(TIMEOUT_S):  # node two re-reads the store every second
            async with trio.open_nursery() as nursery:
                async def fetch() -> None:
                    fetched.append(await new_device.link_fetch(channel))
                nursery.start_soon(fetch)
                await store.waiting(1)
                await approver.link_post(channel, b"offer")
    assert fetched == [[b"offer"]]
