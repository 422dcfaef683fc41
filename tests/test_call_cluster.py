"""A call between devices held by two relay nodes of one PostgreSQL cluster (docs/CLUSTER.md
"Calls"): the call stays on the node that opened it; a device of the other node asking to join
is sent there (CALL_ELSEWHERE), connects, joins, and the media flows both ways.

Real relay processes on a fresh schema each; real QUIC clients. Nothing sleeps: every wait is
on an answer, a datagram or a push, each bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import trio

from bench.enrol_devices import OutboxCodes
from bench.spawn import BIN, SpawnedRelay, spawn_relay
from client.account_setup import verify_enrolment
from client.call_media import CallElsewhereError, CallHandle
from client.calls import Call, CallManager
from client.connection import ConnectionClosed, RelayError, connect_relay
from client.message_content import TextMessage
from client.messenger import Messenger
from client.profile import Profile
from storage.postgres_calls import find_call, forget_call, publish_call
from storage.store_url import open_store, parse_store_url
from tests.postgres_schemas import conninfo, fresh_schema, store_url
from tests.relay_processes import connect, declare, enrol
from tests.test_cli_calls import Answering
from transport.addresses import parse_host_port
from wire.call_frames import CALL_ID_SIZE
from wire.frames import ErrorCode

WAIT_S = 30
"""Bound on anything that could hang, not a timing assertion."""
RESEND_S = 0.5
"""A datagram may be lost (UDP): sent again after this long without an answer."""

PHONE_A, PHONE_B, PHONE_C = "+33612345678", "+33698765432", "+33611111111"


@dataclass
class Cluster:
    url: str
    nodes: list[SpawnedRelay]


@pytest.fixture
def schema() -> Iterator[str]:
    with fresh_schema() as name:
        yield name


@pytest.fixture
def cluster_url(schema: str) -> str:
    return store_url(schema)


@pytest.fixture
async def cluster(cluster_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B, PHONE_C), organisation="acme")
    async with spawn_relay(tmp_path / "node-1", store=cluster_url,
                           node_name=f"node-1-{uuid.uuid4().hex[:6]}") as first, \
            spawn_relay(tmp_path / "node-2", store=cluster_url,
                        node_name=f"node-2-{uuid.uuid4().hex[:6]}") as second:
        yield Cluster(url=cluster_url, nodes=[first, second])


@pytest.fixture
async def one_certificate_cluster(cluster_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two nodes serving one certificate, which a profile trusts (``--ca``) as a cluster's
    clients do: a device moved from one node to the other checks the same name and key."""
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B), organisation="acme")
    async with spawn_relay(tmp_path / "node-1", store=cluster_url,
                           node_name=f"node-1-{uuid.uuid4().hex[:6]}") as first:
        tls = tmp_path / "node-2" / "tls"
        tls.mkdir(parents=True)
        for name in ("cert.pem", "key.pem"):
            shutil.copy2(first.cert.parent / name, tls / name)
        async with spawn_relay(tmp_path / "node-2", store=cluster_url,
                               node_name=f"node-2-{uuid.uuid4().hex[:6]}") as second:
            yield Cluster(url=cluster_url, nodes=[first, second])


async def exchange(sender: CallHandle, receiver: CallHandle, payload: bytes) -> None:
    """``payload`` from ``sender`` reaches ``receiver`` (sent again if a datagram is lost)."""
    with trio.fail_after(WAIT_S):
        while True:
            sender.send(payload)
            with trio.move_on_after(RESEND_S):
                while await receiver.receive() != payload:
                    pass
                return


async def test_a_call_across_two_nodes_is_joined_on_the_node_that_holds_it(
        cluster: Cluster) -> None:
    first, second = cluster.nodes
    device_a, device_b = await enrol(first, PHONE_A), await enrol(second, PHONE_B)
    device_c = await enrol(second, PHONE_C)
    async with connect(first) as a:
        await a.authenticate(device_a.user_id, device_a.device_id, device_a.key)
        caller = await a.open_call([device_b.user_id])
        async with connect(second) as b_first:
            await b_first.authenticate(device_b.user_id, device_b.device_id, device_b.key)
            with pytest.raises(CallElsewhereError) as elsewhere:
                await b_first.join_call(caller.call_id)
            assert elsewhere.value.call_id == caller.call_id
            host, port = parse_host_port(elsewhere.value.address)
            assert port == first.port
            # A device that was not invited learns nothing from the other node either.
            async with connect(second) as c:
                await c.authenticate(device_c.user_id, device_c.device_id, device_c.key)
                for call_id in (caller.call_id, bytes(CALL_ID_SIZE)):
                    with pytest.raises(RelayError) as refused:
                        await c.join_call(call_id)
                    assert refused.value.code is ErrorCode.CALL_UNKNOWN
            async with connect_relay(host, port, ca=first.cert, server_name="localhost") as b:
                await b.authenticate(device_b.user_id, device_b.device_id, device_b.key)
                # The device's new connection took over from its old one on the other node.
                with pytest.raises(ConnectionClosed), trio.fail_after(WAIT_S):
                    async for _ in b_first.deliveries():
                        pass
                callee = await b.join_call(caller.call_id)
                assert callee.participants == 2
                await exchange(caller, callee, b"media from node 1's device")
                await exchange(callee, caller, b"media back")
                await callee.leave()
                with trio.fail_after(WAIT_S):
                    await caller.ended.wait()
                assert caller.end_reason == "alone"


async def test_a_relay_of_several_worker_processes_refuses_calls_clearly(
        cluster_url: str, tmp_path: Path) -> None:
    await declare(cluster_url, tmp_path, (PHONE_A, PHONE_B), organisation="acme")
    async with spawn_relay(tmp_path / "relay", "--workers", "2", store=cluster_url,
                           node_name=f"workers-{uuid.uuid4().hex[:6]}") as relay:
        device_a, device_b = await enrol(relay, PHONE_A), await enrol(relay, PHONE_B)
        async with connect(relay) as a:
            await a.authenticate(device_a.user_id, device_a.device_id, device_a.key)
            with pytest.raises(RelayError) as refused:
                await a.open_call([device_b.user_id])
            assert refused.value.code is ErrorCode.CALLS_UNAVAILABLE
            assert "worker processes" in refused.value.reason
            with pytest.raises(RelayError) as refused:
                await a.join_call(bytes(CALL_ID_SIZE))
            assert refused.value.code is ErrorCode.CALLS_UNAVAILABLE


async def test_a_call_route_names_its_node_to_invited_users_only_until_it_ends(
        schema: str, cluster_url: str, tmp_path: Path) -> None:
    async with open_store(parse_store_url(cluster_url, data_dir=tmp_path)):
        pass  # opening the store migrates the schema
    call_id, other = bytes(range(CALL_ID_SIZE)), bytes(CALL_ID_SIZE)
    with psycopg.connect(conninfo(schema), autocommit=True) as connection:
        publish_call(connection, call_id=call_id, address="node-a:4433",
                     invited={"u-alice", "u-bob"}, expires_at=2_000, now=1_000)
        assert find_call(connection, call_id=call_id, user_id="u-bob", now=1_500) == "node-a:4433"
        assert find_call(connection, call_id=call_id, user_id="u-carol", now=1_500) is None
        assert find_call(connection, call_id=other, user_id="u-bob", now=1_500) is None
        assert find_call(connection, call_id=call_id, user_id="u-bob", now=2_000) is None
        forget_call(connection, call_id=call_id)
        assert find_call(connection, call_id=call_id, user_id="u-bob", now=1_500) is None
        # A later publish sweeps rows long expired.
        publish_call(connection, call_id=other, address="node-a:4433", invited={"u-bob"},
                     expires_at=9_000, now=1_000)
        publish_call(connection, call_id=call_id, address="node-b:4433", invited={"u-bob"},
                     expires_at=20_000, now=10_000)
        (count,) = connection.execute("SELECT count(*) FROM call_routes").fetchone() or (0,)
        assert count == 1


# -- the client library follows CALL_ELSEWHERE ---------------------------------------------


async def enrolled_on(node: SpawnedRelay, directory: Path, phone: str, ca: Path) -> Profile:
    """A new profile for ``phone`` whose relay is ``node``, trusting ``ca`` (every node's
    certificate, as a cluster's clients trust the cluster's)."""
    profile = Profile(directory)
    profile.signing_key(create=True)
    profile.data.relay, profile.data.ca, profile.data.phone = (
        f"127.0.0.1:{node.port}", str(ca), phone)
    profile.save()
    codes = OutboxCodes(node)
    codes.expect(phone)
    async with connect(node) as client:
        await client.enrol_start(phone)
    await verify_enrolment(profile, await codes.code_for(phone))
    return profile


@asynccontextmanager
async def device(profile: Profile) -> AsyncIterator[tuple[CallManager,
                                                          trio.MemoryReceiveChannel[str]]]:
    """A device connected to its profile's node, reading its messages (texts go to the
    channel) with its call manager running."""
    texts_in, texts_out = trio.open_memory_channel[str](16)
    async with Messenger.connect(profile) as messenger, trio.open_nursery() as nursery:
        manager = CallManager(messenger)

        async def read() -> None:
            async with aclosing(messenger.messages()) as messages:
                async for message in messages:
                    if isinstance(message.content, TextMessage):
                        await texts_in.send(message.content.text)

        nursery.start_soon(manager.run)
        nursery.start_soon(read)
        yield manager, texts_out
        nursery.cancel_scope.cancel()


async def secure_exchange(sender: Call, receiver: Call, payload: bytes) -> None:
    """``payload`` SFrame-encrypted by ``sender`` reaches ``receiver`` (sent again if lost)."""
    with trio.fail_after(WAIT_S):
        while True:
            sender.send_media(payload)
            with trio.move_on_after(RESEND_S):
                while (await receiver.receive_media())[1] != payload:
                    pass
                return


async def test_a_callee_on_another_node_answers_through_the_call_manager_and_keeps_receiving(
        one_certificate_cluster: Cluster, tmp_path: Path) -> None:
    first, second = one_certificate_cluster.nodes
    ca = first.cert
    with trio.fail_after(WAIT_S):
        alice = await enrolled_on(first, tmp_path / "alice", PHONE_A, ca)
        bob = await enrolled_on(second, tmp_path / "bob", PHONE_B, ca)
        async with device(alice) as (caller, _), device(bob) as (callee, bob_texts):
            bob_node = callee.messenger.client
            call = await caller.place_call([PHONE_B])
            incoming = await callee.incoming.receive()
            bob_call = await callee.answer(incoming)  # CALL_ELSEWHERE, followed
            assert callee.messenger.client is not bob_node  # bob's device moved to node 1
            await call.wait_for_peers(1)
            assert bob_call.session.participants == 2
            await secure_exchange(call, bob_call, b"from alice, on node 1")
            await secure_exchange(bob_call, call, b"from bob, moved from node 2")

            # Messages keep reaching bob's device on its new connection.
            await caller.messenger.send_text(PHONE_B, "during the call")
            assert await bob_texts.receive() == "during the call"

            await caller.hang_up(call)
            await bob_call.ended.wait()
            await bob_call.session.ended.wait()  # the relay of node 1 ended the session
            assert bob_call.session.end_reason == "alone"
            await callee.hang_up(bob_call)
            await caller.messenger.send_text(PHONE_B, "after the call")
            assert await bob_texts.receive() == "after the call"


async def cryptopass(profile: Path, *args: str) -> str:
    """Run the ``cryptopass`` command for ``profile`` to completion; its standard output."""
    with trio.fail_after(WAIT_S * 4):
        result = await trio.run_process(
            [str(BIN / "cryptopass"), "--profile", str(profile), *args],
            capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_the_cli_answers_a_call_held_by_the_other_node_and_keeps_receiving(
        one_certificate_cluster: Cluster, tmp_path: Path) -> None:
    first, second = one_certificate_cluster.nodes
    with trio.fail_after(WAIT_S):
        alice = await enrolled_on(first, tmp_path / "alice", PHONE_A, first.cert)
        bob = await enrolled_on(second, tmp_path / "bob", PHONE_B, first.cert)
    bob_lines = Answering()
    async with trio.open_nursery() as nursery:
        follower = await trio.lowlevel.open_process(
            [str(BIN / "cryptopass"), "--profile", str(bob.directory), "receive", "--follow",
             "--accept-calls"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert follower.stdout is not None
        nursery.start_soon(bob_lines.read, follower.stdout)
        try:
            result = json.loads(await cryptopass(alice.directory, "call", PHONE_B,
                                                 "--seconds", "1"))
            assert result["peers"] == 1 and result["undecryptable"] == 0
            assert 0 < result["packets_received"] <= result["packets_sent"] == 50
            with trio.fail_after(WAIT_S):
                await bob_lines.wait_for(1, "ended")
            assert [line["call"] for line in bob_lines.lines] == ["answered", "ended"]
            # Bob's follower now reads from node 1, and still gets his messages.
            await cryptopass(alice.directory, "send", PHONE_B, "after the call")
            with trio.fail_after(WAIT_S):
                await bob_lines.wait_for_text("after the call")
        finally:
            follower.terminate()
            with trio.move_on_after(WAIT_S):
                await follower.wait()
            if follower.returncode is None:
                follower.kill()
        nursery.cancel_scope.cancel()
