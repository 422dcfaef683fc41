"""The forward ceiling (``cryptopass-bench transport --forward``): its server answers the
reference client as the relay would, refusals included, and a short run through the command
line delivers everything with ``live``'s fields (real QUIC on loopback; no timing assertions)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from bench.forward_server import ForwardServer, run_forward_server
from client.connection import RelayClient, RelayError, connect_relay
from enrolment.admin import USER_ID_BYTES
from tests.bench_support import run_bench
from wire.frames import Deliver, ErrorCode, QueueEmpty

RATIOS = ("server_cpu_us_per_message", "server_datagrams_per_message", "messages_per_second",
          "latency_p50", "latency_p99")
"""What ``--compare`` divides, relay over ceiling (as the echo ceiling's ``--compare``)."""

WAIT_SECONDS = 10


async def _authenticated(client: RelayClient) -> str:
    """Authenticate as a made-up device (the forward server checks nothing); its user id."""
    user_id = secrets.token_hex(USER_ID_BYTES)
    await client.authenticate(user_id, 1, SigningKey.generate())
    return user_id


async def _next_delivery(deliveries: AsyncIterator[Deliver | QueueEmpty]) -> Deliver | QueueEmpty:
    with trio.fail_after(WAIT_SECONDS):
        return await anext(deliveries)


async def test_the_forward_server_refuses_unknown_recipients_and_keeps_forwarding(
        tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server: ForwardServer = await nursery.start(run_forward_server, tmp_path)
        async with connect_relay("127.0.0.1", server.port, ca=server.cert,
                                 server_name="localhost") as sender, \
                connect_relay("127.0.0.1", server.port, ca=server.cert,
                              server_name="localhost") as recipient:
            with trio.fail_after(WAIT_SECONDS):
                await _authenticated(sender)
                recipient_id = await _authenticated(recipient)
            deliveries = recipient.deliveries()
            assert isinstance(await _next_delivery(deliveries), QueueEmpty)

            with pytest.raises(RelayError) as unknown, trio.fail_after(WAIT_SECONDS):
                await sender.send(secrets.token_hex(USER_ID_BYTES), {1: b"lost"},
                                  client_message_id=1)
            assert unknown.value.code is ErrorCode.UNKNOWN_RECIPIENT
            with pytest.raises(RelayError) as mismatched, trio.fail_after(WAIT_SECONDS):
                await sender.send(recipient_id, {2: b"wrong device"}, client_message_id=2)
            assert mismatched.value.code is ErrorCode.MISMATCHED_DEVICES
            assert mismatched.value.error.missing_devices == (1,)
            assert mismatched.value.error.extra_devices == (2,)

            # The refusals cost the server nothing: the next send is forwarded on the same stream.
            with trio.fail_after(WAIT_SECONDS):
                duplicate = await sender.send(recipient_id, {1: b"hello"}, client_message_id=3)
            assert duplicate is False
            delivery = await _next_delivery(deliveries)
            assert isinstance(delivery, Deliver)
            assert (delivery.ciphertext, delivery.client_message_id) == (b"hello", 3)
            assert delivery.sender_user_id == sender.user_id
            assert delivery.sender_device_id == 1
            recipient.acknowledge(delivery.envelope_id)
            with trio.fail_after(WAIT_SECONDS):
                await recipient.settle()  # answered (ACKED) once the server took the ACK
        nursery.cancel_scope.cancel()


async def test_transport_forward_smoke_delivers_every_paced_message() -> None:
    result = await run_bench("transport", "--forward", "--devices", "4", "--messages", "5",
                             "--rate", "200", "--timeout", "60")
    assert result["scenario"] == "forward"
    assert result["delivered"] == result["expected"] == result["sent"] == 20
    assert result["errors"] == 0
    assert result["duplicates"] == 0
    assert result["target_rate"] == 200
    assert isinstance(result["server_cpu_us_per_message"], float)  # the forward server's own
    assert "relay" not in result  # --compare is asked for, not implied


async def test_transport_forward_compare_has_live_fields_and_the_ratios() -> None:
    result = await run_bench("transport", "--forward", "--compare", "--devices", "4",
                             "--messages", "5", "--timeout", "60")
    relay = result["relay"]
    assert isinstance(relay, dict)
    assert relay["scenario"] == "live"
    assert result["delivered"] == relay["delivered"] == 20
    assert result["errors"] == relay["errors"] == 0
    assert set(result) - {"relay", "relay_over_ceiling", "date"} == set(relay)
    ratios = result["relay_over_ceiling"]
    assert isinstance(ratios, dict)
    assert set(ratios) == set(RATIOS)
    assert ratios["messages_per_second"] is not None
