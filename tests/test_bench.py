"""cryptopass-bench: statistics, the send plan, and a short smoke run of every scenario
(real relay subprocess, real QUIC; no timing assertions)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import cast

import pytest
import trio

from bench.live import make_plan
from bench.stats import latency_summary, percentile, rate
from client.connection import RelayClient
from client.messenger import Messenger
from client.profile import Profile
from crypto.device import DeviceAddress, DeviceCrypto
from crypto.primitives import SystemRandom, ed25519_keypair_from_private
from tests.bench_support import BENCH, run_bench

COMMON_FIELDS = ("errors", "error_samples", "server_peak_rss_mib")
MESSAGE_FIELDS = ("messages_per_second", "server_cpu_us_per_message")
"""What every scenario that moves messages reports; the others must not pretend to."""


def test_percentiles_and_rates() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert latency_summary([3.0, 1.0, 2.0]) == {"p50": 2.0, "p95": 3.0, "p99": 3.0}
    assert latency_summary([]) is None
    assert rate(500, 2.0) == 250.0
    assert rate(5, 0.0) == 0.0
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_plan_never_sends_to_self_and_is_reproducible() -> None:
    plan = make_plan(5, 200, seed=7)
    assert plan == make_plan(5, 200, seed=7)
    assert plan != make_plan(5, 200, seed=8)
    for sender, recipients in enumerate(plan):
        assert len(recipients) == 200
        assert sender not in recipients
        assert set(recipients) == set(range(5)) - {sender}  # every other device is used
    received = Counter(recipient for recipients in plan for recipient in recipients)
    assert sum(received.values()) == 1000
    with pytest.raises(ValueError, match="at least 2"):
        make_plan(1, 10, seed=1)


def test_a_bench_messenger_keeps_its_state_in_memory(tmp_path: Path) -> None:
    profile = Profile(tmp_path)
    profile.data.relay, profile.data.phone = "127.0.0.1:1", "+33610000000"
    profile.data.user_id, profile.data.device_id = "user", 1
    device = DeviceCrypto.create(ed25519_keypair_from_private(bytes(32)), SystemRandom(),
                                 address=DeviceAddress(user_id="user", device_id=1), now_ms=0)
    client = cast(RelayClient, None)  # saving never touches the connection
    Messenger(client, profile, device, {}, persist_state=False).save()
    assert profile.device_state() is None
    Messenger(client, profile, device, {}).save()  # the CLI's default is unchanged
    assert profile.device_state() is not None


async def bench(*args: str) -> dict[str, object]:
    # The bench's own --timeout makes a stuck run end with errors (and its output).
    moves_messages = args[0] not in ("enrol", "connections")
    timeout = ("--timeout", "60") if moves_messages else ()
    result = await run_bench(*args, *timeout)
    for name in COMMON_FIELDS:
        assert name in result, name
    for name in MESSAGE_FIELDS:
        assert (name in result) is moves_messages, name
    assert result["errors"] == 0
    return result


async def test_live_smoke() -> None:
    result = await bench("live", "--devices", "4", "--messages", "5")
    assert result["delivered"] == result["expected"] == 20
    assert result["duplicates"] == 0
    assert result["encrypted"] is False
    assert isinstance(result["server_cpu_us_per_message"], float)


async def test_live_smoke_with_two_processes_and_a_rate() -> None:
    result = await bench("live", "--devices", "4", "--messages", "5", "--processes", "2",
                         "--rate", "200", "--spawn-relay")
    assert result["delivered"] == 20
    assert isinstance(result["server_cpu_us_per_message"], float)  # the spawned relay's


async def test_live_encrypted_smoke_delivers_and_decrypts_everything() -> None:
    # Two worker processes: prekeys are published and sessions set up across processes.
    result = await bench("live", "--devices", "4", "--messages", "5", "--encrypted",
                         "--processes", "2", "--size", "100")
    assert result["encrypted"] is True
    assert result["delivered"] == result["expected"] == result["sent"] == 20
    assert result["duplicates"] == 0
    assert isinstance(result["latency_ms"], dict)


async def test_live_encrypted_refuses_a_size_without_room_for_the_stamp() -> None:
    completed = await trio.run_process([BENCH, "live", "--encrypted", "--size", "16"],
                                       capture_stdout=True, capture_stderr=True, check=False)
    assert completed.returncode != 0
    assert b"--size" in completed.stderr


async def test_offline_smoke() -> None:
    result = await bench("offline", "--messages", "30")
    assert result["accepted"] == result["drained"] == 30
    assert "latency_ms" not in result  # nothing is timed per message while it waits


async def test_offline_encrypted_smoke_drains_and_decrypts_everything() -> None:
    result = await bench("offline", "--messages", "30", "--encrypted")
    assert result["encrypted"] is True
    assert result["accepted"] == result["drained"] == 30


async def test_enrol_smoke() -> None:
    result = await bench("enrol", "--devices", "3")
    assert result["enrolled"] == 3
    assert isinstance(result["enrolments_per_second"], float)
    assert isinstance(result["server_cpu_us_per_enrolment"], float)
    assert "latency_ms" not in result


async def test_connections_smoke() -> None:
    result = await bench("connections", "--devices", "5")
    assert result["connected"] == 5
    assert "server_kib_per_connection" in result
    assert isinstance(result["connections_per_second"], float)
    assert "latency_ms" not in result


async def test_transport_smoke_compares_with_the_relay() -> None:
    result = await bench("transport", "--devices", "2", "--messages", "5")
    assert result["echoed"] == 10
    relay = result["relay"]
    assert isinstance(relay, dict) and relay["delivered"] == 10
    ratios = result["relay_over_ceiling"]
    assert isinstance(ratios, dict) and "server_cpu_us_per_message" in ratios
